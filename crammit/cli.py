"""The `crammit` command: parses flags into config objects and calls library functions."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from crammit.config import (
    MODEL_SIZES,
    RECIPES,
    Arch,
    Budget,
    Device,
    GlueRecipe,
    LaunchOptions,
    SequenceOrder,
    Tracker,
    Tracking,
    TrainConfig,
    recipe_config,
)
from crammit.errors import ConfigError, CrammitError, Interrupted
from crammit.study.spec import StudyUnit


class _OneLineErrors(TyperGroup):
    """Usage errors (a value not among an option's choices, a missing or unknown option) as
    one `error:` line naming the flag, exit code 2, as crammit's own errors are; not
    click's usage block."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as error:  # click's errors (typer vendors click)
            exit_code = getattr(error, "exit_code", 1)
            # Usage errors exit with code 2; with no arguments, a group's error is its help.
            if exit_code != 2 or type(error).__name__ == "NoArgsIsHelpError":
                error.show()
            else:
                message = " ".join(line.strip() for line in error.format_message().splitlines())
                typer.echo(f"error: {message.strip()}", err=True)
            sys.exit(exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _choices(name: str, values) -> type[Enum]:
    """An enum of the names a dict or list holds, for an option that takes one of them."""
    return Enum(name, {value: value for value in values}, type=str)


Size = _choices("Size", MODEL_SIZES)
Recipe = _choices("Recipe", RECIPES)

app = typer.Typer(
    help="Train a crammed BERT on a compute budget, and study how its loss scales with compute.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, cls=_OneLineErrors,
)


# Options several commands share, declared once.
# The one read of RAY_ADDRESS: the flag's value when it is not given.
AddressOption = Annotated[str | None, typer.Option(envvar="RAY_ADDRESS", help="Ray cluster address.")]
CacheDirOption = Annotated[Path | None, typer.Option(help="Where the embedded corpus is cached.")]
PreparedDataOption = Annotated[Path | None, typer.Option(
    help="A `crammit data prepare` directory (replaces --corpus).")]
MicroBatchOption = Annotated[int | None, typer.Option(help="Sequences per worker per pass (128).")]
DryRunOption = Annotated[bool, typer.Option(help="Print the plan and stop.")]
AllowOrderedDataOption = Annotated[bool, typer.Option(
    help="Run on a --data in prevalence order even where the budgets read much of it.")]
TrackerOption = Annotated[list[Tracker] | None, typer.Option(
    help="Also log to this experiment tracker (repeatable). MLflow's store is DIR/mlruns (SQLite) unless "
         "MLFLOW_TRACKING_URI is set; W&B follows WANDB_MODE (e.g. offline).")]
ArchOption = Annotated[Arch, typer.Option(help="Block design: crammed (the paper's) or bert (the original, "
                                               "Hugging Face's BertForMaskedLM).")]
RecipeOption = Annotated[Recipe, typer.Option(help="Training recipe: crammed (the paper's) or bert "
                                                   "(Devlin et al.).")]

data_app = typer.Typer(help="Prepare corpora on Ray Data and inspect prepared directories.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")


@app.callback()
def main() -> None:
    """crammit: train a crammed BERT on a compute budget and study how loss scales with it."""


def _interrupted(error: Interrupted, how_to_continue: str) -> typer.Exit:
    typer.echo(f"interrupted: {error}; {how_to_continue}", err=True)
    return typer.Exit(130)


def _fail(error: CrammitError) -> typer.Exit:
    # An error raised in a Ray task arrives wrapped in Ray's report of the task: the
    # original is its cause.
    cause = getattr(error, "cause", None)
    message = str(cause if isinstance(cause, CrammitError) else error).splitlines()[0]
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the user typed this parameter (rather than leaving its default)."""
    return name in ctx.params and getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"


def _flag(ctx: typer.Context, name: str) -> str:
    return next(param.opts[0] for param in ctx.command.params if param.name == name)


def _as_typed(value: object) -> str:
    if isinstance(value, Enum):
        return str(value.value)
    return f"{value:g}" if isinstance(value, float) else str(value)


@contextmanager
def _flags_for(ctx: typer.Context, **params: str) -> Iterator[None]:
    """Config objects check their fields and name them; the user typed flags. A ConfigError
    about a field whose value came from a flag on the command line is said of that flag
    and its value as typed (`--lr must be ..., got nan`, not `peak_lr must be ...`).
    `params` maps a field to the command's parameter where their names differ."""
    try:
        yield
    except ConfigError as error:
        param = params.get(error.field, error.field)
        if not _given(ctx, param):
            raise
        typed = _as_typed(ctx.params[param])
        raise CrammitError(f"{_flag(ctx, param)} {error.problem}, got {typed}") from None


@contextmanager
def _parsing(flag: str) -> Iterator[None]:
    """A value a flag's text names (a task, a size in a list) that is not known: say which flag."""
    try:
        yield
    except CrammitError as error:
        raise CrammitError(f"{flag}: {error}") from None


def _tracking(trackers: list[Tracker] | None) -> Tracking:
    """The trackers asked for, with the MLflow store and W&B mode this environment names,
    carried in the config because Ray workers elsewhere do not share the environment."""
    from crammit.track import check_installed

    tracking = Tracking(tuple(trackers or ()), os.environ.get("MLFLOW_TRACKING_URI", ""),
                        os.environ.get("WANDB_MODE", ""))
    check_installed(tracking)
    return tracking


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "crammit"


# What `train --resume` may change: how this launch runs the run, not what the run is.
RESUME_FLAGS = ("resume", "address", "cache_dir", "checkpoint_minutes", "max_failures", "profile_steps",
                "tracker")


def _refuse_settings_with_resume(ctx: typer.Context) -> None:
    """A resumed run keeps its config.json; a flag that would change the run is a mistake."""
    given = [name for name in ctx.params if name not in RESUME_FLAGS and _given(ctx, name)]
    if given:
        allowed = ", ".join(_flag(ctx, name) for name in RESUME_FLAGS[1:])
        raise CrammitError(f"--resume continues a run with its saved config; drop "
                           f"{', '.join(_flag(ctx, name) for name in given)} (only {allowed} may be given)")


def _launch_options(ctx: typer.Context, base: LaunchOptions, checkpoint_minutes: float, max_failures: int,
                    profile_steps: int, tracker: list[Tracker] | None) -> LaunchOptions:
    """A resumed run's saved launch options, with the launch flags the user typed."""
    changes = {}
    if _given(ctx, "checkpoint_minutes"):
        changes["checkpoint_every_s"] = checkpoint_minutes * 60
    if _given(ctx, "max_failures"):
        changes["max_failures"] = max_failures
    if _given(ctx, "profile_steps"):
        changes["profile_steps"] = profile_steps
    if _given(ctx, "tracker"):
        changes["tracking"] = _tracking(tracker)
    with _flags_for(ctx, checkpoint_every_s="checkpoint_minutes"):
        return dataclasses.replace(base, **changes)


def _refuse_flags_the_deepspeed_file_sets(ctx: typer.Context, overrides: dict) -> None:
    """--deepspeed-config wins key by key; a flag that sets the same thing would be ignored."""
    both = [flag for flag, (name, set_by_file) in {
        "--micro-batch": ("micro_batch", "train_micro_batch_size_per_gpu" in overrides),
        "--zero-stage": ("zero_stage", "stage" in overrides.get("zero_optimization", {})),
    }.items() if set_by_file and _given(ctx, name)]
    if both:
        raise CrammitError(f"--deepspeed-config sets what {' and '.join(both)} set; give each in one place")


BUDGET_PARAMS = ("hours", "tokens", "flops")


def _budget(hours: float | None, tokens: float | None, flops: float | None) -> Budget:
    given = [(value, make) for value, make in
             ((hours, Budget.hours), (tokens, Budget.tokens), (flops, Budget.flops)) if value is not None]
    if len(given) > 1:
        raise CrammitError("give one budget: --hours, --tokens or --flops")
    value, make = given[0] if given else (24.0, Budget.hours)
    return make(value)


@app.command()
def train(
    ctx: typer.Context,
    gpus: Annotated[int, typer.Option(min=0, help="GPU workers (one per GPU); 0 trains on CPUs.")] = 1,
    workers: Annotated[int | None, typer.Option(min=1, help="CPU workers when --gpus 0.")] = None,
    hours: Annotated[float | None, typer.Option(help="Wall-clock budget (default 24).")] = None,
    tokens: Annotated[float | None, typer.Option(help="Budget in training tokens instead.")] = None,
    flops: Annotated[float | None, typer.Option(help="Budget in training FLOPs instead.")] = None,
    size: Annotated[Size, typer.Option(help="Model size (micro is for CPU ladders).")] = Size.crammed,
    arch: ArchOption = Arch.CRAMMED,
    recipe: RecipeOption = Recipe.crammed,
    corpus: Annotated[str, typer.Option(help="Prepared into the run directory: any `data prepare --corpus`.")]
    = "embedded",
    data: PreparedDataOption = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/<time>-<size>).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this directory.")] = None,
    address: AddressOption = None,
    deepspeed_config: Annotated[Path | None, typer.Option(
        help="DeepSpeed JSON merged over the built one, key by key. It may set the micro-batch and ZeRO "
             "stage instead of --micro-batch / --zero-stage; giving both is refused.")]
    = None,
    zero_stage: Annotated[int, typer.Option(help="DeepSpeed ZeRO stage (0, 1 or 2).")] = 0,
    batch_size: Annotated[int | None, typer.Option(
        help="Sequences per step after the ramp (the recipe's: crammed 8192, bert 256).")] = None,
    micro_batch: MicroBatchOption = None,
    lr: Annotated[float | None, typer.Option(
        help="Peak learning rate (the recipe's: crammed 1e-3, bert 1e-4).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for initialisation, shuffling and masking.")] = 0,
    compile: Annotated[bool | None, typer.Option(help="torch.compile the encoder (default: on GPUs).")]
    = None,
    deterministic: Annotated[bool, typer.Option(help="Deterministic kernels (for exact resumes).")] = False,
    checkpoint_minutes: Annotated[float, typer.Option(help="Minutes between checkpoints.")] = 30.0,
    max_failures: Annotated[int, typer.Option(
        help="Worker failures to recover from, each by restarting at the last checkpoint.")] = 3,
    max_eval_sequences: Annotated[int, typer.Option(
        help="Held-out sequences the MLM loss is measured on, at most (all, when fewer).")] = 512,
    eval_minutes: Annotated[float, typer.Option(
        help="Minutes of training between held-out evaluations, to evals.parquet (0: first and last only; "
             "evaluation time is not budget time).")] = 0.0,
    profile_steps: Annotated[int, typer.Option(
        help="Trace this many steady steps (past half the budget) with torch.profiler into the run's "
             "profile/: trace and summary of GPU busy time, host gaps, phases, syncs, top kernels.")] = 0,
    cache_dir: CacheDirOption = None,
    tracker: TrackerOption = None,
) -> None:
    """Train a crammed (or the original) BERT until the budget is spent; report held-out loss."""
    from crammit.data.layout import model_for
    from crammit.data.sources import check_corpus
    from crammit.train.engine import read_deepspeed_file
    from crammit.train.recipe import accumulation_target
    from crammit.train.run import (
        connect,
        default_run_dir,
        launch,
        prepare_corpus_for_run,
        prepare_run,
        resume_config,
    )

    run_dir = resume or out or default_run_dir(size.value)
    try:
        if resume is not None:
            _refuse_settings_with_resume(ctx)
            config = resume_config(resume)
            config = dataclasses.replace(config, launch=_launch_options(
                ctx, config.launch, checkpoint_minutes, max_failures, profile_steps, tracker))
            connect(config, address)
        else:
            if gpus > 0 and workers is not None and workers != gpus:
                raise CrammitError("--workers is for CPU runs; with GPUs there is one worker per GPU")
            overrides = read_deepspeed_file(deepspeed_config) if deepspeed_config else {}
            _refuse_flags_the_deepspeed_file_sets(ctx, overrides)
            micro_batch = overrides.get("train_micro_batch_size_per_gpu") or micro_batch
            changes = {key: value for key, value in (("peak_lr", lr), ("batch_size", batch_size),
                                                      ("micro_batch_size", micro_batch)) if value is not None}
            budget_param = next((name for name in BUDGET_PARAMS if ctx.params[name] is not None), "hours")
            with _flags_for(ctx, peak_lr="lr", micro_batch_size="micro_batch", budget=budget_param,
                            num_workers="gpus" if gpus else "workers", eval_every_s="eval_minutes",
                            checkpoint_every_s="checkpoint_minutes"):
                config = TrainConfig(
                    run_dir=str(run_dir),
                    model=model_for(size.value, data, arch),
                    recipe=recipe_config(recipe.value, seed=seed, **changes),
                    budget=_budget(hours, tokens, flops),
                    corpus=corpus,
                    data=str(data.resolve()) if data else "",
                    size_name=size.value,
                    device=Device.CUDA if gpus > 0 else Device.CPU,
                    num_workers=gpus or workers or 1,
                    zero_stage=overrides.get("zero_optimization", {}).get("stage", zero_stage),
                    compile=gpus > 0 if compile is None else compile,
                    deepspeed_overrides=overrides,
                    max_eval_sequences=max_eval_sequences,
                    eval_every_s=eval_minutes * 60,
                    deterministic=deterministic,
                    launch=LaunchOptions(checkpoint_every_s=checkpoint_minutes * 60,
                                         max_failures=max_failures, profile_steps=profile_steps,
                                         tracking=_tracking(tracker)),
                )
            accumulation_target(config.recipe, config.num_workers)  # fail before any work
            if not data:
                check_corpus(corpus)  # before Ray starts: a mistyped path fails at once
            connect(config, address)
            config = prepare_run(prepare_corpus_for_run(config, cache_dir or default_cache_dir()))
        results = launch(config)
    except CrammitError as error:
        raise _fail(error) from None
    except (Interrupted, KeyboardInterrupt) as error:
        raise _train_interrupted(error, run_dir, address if _given(ctx, "address") else None) from None
    typer.echo(
        f"held-out MLM loss {results.eval_loss:.4f} (from {results.initial_eval_loss:.4f} "
        f"before training) after {results.steps} steps, {results.tokens:,} tokens, "
        f"{results.elapsed_s:.0f} s\nrun directory: {config.run_dir}"
    )


def _train_interrupted(error: BaseException, run_dir: Path, address: str | None) -> typer.Exit:
    """What an interrupted `train` kept, and the command that continues it: a run whose
    directory holds its config resumes; one stopped before that starts again."""
    from crammit.train import rundir
    from crammit.train.run import stopped_at

    if not rundir.is_run_dir(run_dir):
        return _interrupted(Interrupted("the run stopped before it started"),
                            "run the same command to start it again")
    what = error if isinstance(error, Interrupted) else Interrupted(stopped_at(run_dir))
    resume = f"crammit train --resume {run_dir}" + (f" --address {address}" if address else "")
    return _interrupted(what, f"continue with `{resume}`")


@data_app.command("prepare")
def data_prepare(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Directory for shards, tokenizer and manifest.")],
    corpus: Annotated[str, typer.Option(help="'embedded', hf:NAME[:CONFIG][@SPLIT], files, a glob or a URI.")]
    = "embedded",
    text_field: Annotated[str, typer.Option(help="Text column of JSON/Parquet/HF sources.")] = "text",
    vocab_size: Annotated[int, typer.Option(help="WordPiece vocabulary size.")] = 32768,
    seq_len: Annotated[int, typer.Option(help="Tokens per packed sequence.")] = 128,
    max_tokens_per_char: Annotated[float, typer.Option(help="Compression filter threshold.")] = 0.3,
    near_duplicates: Annotated[float, typer.Option(
        help="Drop MinHash near-duplicates above this Jaccard similarity, e.g. 0.8 (0: off).")] = 0.0,
    order: Annotated[SequenceOrder, typer.Option(help="Sequence order: prevalence (the paper's) or shuffle.")]
    = SequenceOrder.PREVALENCE,
    seed: Annotated[int, typer.Option(help="Seed of the shuffle order and tie-breaks.")] = 0,
    tokenizer: Annotated[Path | None, typer.Option(help="Use this tokenizer.json instead of training one.")]
    = None,
    address: AddressOption = None,
    cache_dir: CacheDirOption = None,
) -> None:
    """Clean, deduplicate, filter, tokenize, pack and order a corpus into Parquet shards."""
    from crammit.cluster import start_ray
    from crammit.config import PrepareConfig
    from crammit.data.pipeline import prepare_corpus
    from crammit.data.sources import check_corpus

    try:
        with _flags_for(ctx, near_duplicate_threshold="near_duplicates"):
            config = PrepareConfig(corpus=corpus, text_field=text_field, vocab_size=vocab_size,
                                   seq_len=seq_len, max_tokens_per_char=max_tokens_per_char, order=order,
                                   seed=seed, near_duplicate_threshold=near_duplicates,
                                   tokenizer=str(tokenizer or ""))
        check_corpus(config.corpus, config.text_field)  # before Ray starts: a mistyped path fails at once
        start_ray(address)
        # A task's failure reaches us as an exception; Ray Data's log of its stack is noise.
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
        manifest = prepare_corpus(config, out, cache_dir or default_cache_dir())
    except CrammitError as error:
        raise _fail(error) from None
    except KeyboardInterrupt:
        raise _interrupted(Interrupted(f"preparing {out} stopped"),
                           "run the same command to continue (the work done is reused)") from None
    typer.echo(f"{manifest['train_sequences']:,} training and {manifest['eval_sequences']:,} held-out "
               f"sequences of {seq_len} tokens in {len(manifest['shards'])} shards: {out}")


@data_app.command("inspect")
def data_inspect(directory: Annotated[Path, typer.Argument(help="A prepared directory.")]) -> None:
    """Print the manifest, a histogram of document lengths and the most common tokens."""
    from crammit.data.inspect import describe

    try:
        typer.echo(describe(directory))
    except CrammitError as error:
        raise _fail(error) from None


GLUE_TASKS_HELP = ("GLUE tasks to fine-tune each finished trial on, e.g. rte,mrpc or all; "
                   "adds their scores to trials.parquet.")
GLUE_DIR_HELP = "The official GLUE TSV layout (e.g. RTE/train.tsv); default: the Hugging Face hub."

study_app = typer.Typer(help="Scaling studies on Ray Tune: sweep budgets x sizes, fit laws, plot.",
                        no_args_is_help=True)
app.add_typer(study_app, name="study")


def _with_flags(spec, data: Path | None, glue: str | None, glue_dir: Path | None, glue_seeds: int | None):
    """The study spec with what the command line replaces: its data, its GLUE evaluation."""
    from crammit.study.spec import StudyGlue

    if data is not None:
        spec = dataclasses.replace(spec, data=dataclasses.replace(spec.data, data=str(data.resolve())))
    tasks = tuple(task.strip() for task in glue.split(",") if task.strip()) if glue else None
    given = {key: value for key, value in (("tasks", tasks), ("seeds", glue_seeds),
                                           ("glue_dir", str(glue_dir.resolve()) if glue_dir else None))
             if value is not None}
    if given:
        with _parsing("--glue"):
            spec = dataclasses.replace(spec, glue=StudyGlue(**{**dataclasses.asdict(spec.glue), **given}))
    return spec


def _run_study(ctx: typer.Context, spec, out: Path | None, glue: str | None, data: Path | None,
               options: StudyOptions) -> None:
    """The spec with what the command line replaces (`glue`, `data`, the GLUE options); print
    the plan and its expected precision (and a better design, asked for or where the design
    leaves a parameter unidentified); unless a dry run, run the study and print its fitted
    laws."""
    import time

    from crammit.cluster import cluster_resources
    from crammit.study.precision import reference_law
    from crammit.study.spec import write_study_file
    from crammit.study.sweep import plan_study, run_study, study_precision

    spec = _with_flags(spec, data, glue, options.glue_dir, options.glue_seeds)
    tracking = _tracking(options.tracker)
    out = out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{spec.name}"
    try:
        law = reference_law(options.reference_law)
        cluster = cluster_resources(options.address)
        plan = plan_study(spec, out, cluster)
        typer.echo(plan.render())
        if plan.problem and not options.dry_run:  # before the precision's simulations: nothing will run
            raise CrammitError(f"this cluster cannot run the study as asked: {plan.problem}")
        suggest = options.suggest or options.write is not None
        lines, suggestion = study_precision(spec, out, cluster, plan, law, suggest=suggest)
        typer.echo("\n".join(lines))
        if options.write and suggestion is not None:
            write_study_file(options.write, suggestion.spec)
            typer.echo(f"wrote the suggested design to {options.write}")
        if options.dry_run:
            return
        run_study(spec, out, cluster, options.cache_dir or default_cache_dir(), options.address,
                  echo=typer.echo, allow_ordered_data=options.allow_ordered_data, tracking=tracking,
                  calibration=plan.calibration)
    except (Interrupted, KeyboardInterrupt) as error:
        raise _study_interrupted(spec, out, error, out_given=_given(ctx, "out")) from None
    typer.echo(f"study directory: {out}")


def _study_interrupted(spec, out: Path, error: BaseException, out_given: bool) -> typer.Exit:
    """What an interrupted study kept, and the command that continues it: the same one, in
    the same study directory."""
    from crammit.study import results

    if not (out / results.STUDY_FILE).is_file():
        return _interrupted(Interrupted("the study stopped before it started"),
                            "run the same command to start it again")
    if not isinstance(error, Interrupted):  # outside Tune's trials (which stops them itself): data, fits
        status = results.trials_table(spec, out)["status"]
        error = Interrupted(f"{(status == results.TrialStatus.OK).sum()} of {len(status)} trials finished")
    again = "run the same command" + ("" if out_given else f" with --out {out}")
    return _interrupted(error, f"{again} to continue")


@dataclasses.dataclass(frozen=True)
class StudyOptions:
    """The options every study command takes, declared once: where the study runs, how its
    plan judges its design (the reference law; whether to propose a better one), GLUE's data
    and seeds, and tracking."""

    address: AddressOption = None
    dry_run: DryRunOption = False
    allow_ordered_data: AllowOrderedDataOption = False
    reference_law: Annotated[str | None, typer.Option(
        help="The law the plan's precision is simulated from: E,A,B,alpha,beta or a fit.json (default: "
             "Chinchilla's published law).")] = None
    suggest: Annotated[bool, typer.Option(
        help="Propose extra trials that narrow the law most per unit of compute.")] = False
    write: Annotated[Path | None, typer.Option(
        help="Write the suggested design as a study file (implies --suggest).")] = None
    cache_dir: CacheDirOption = None
    glue_dir: Annotated[Path | None, typer.Option(help=GLUE_DIR_HELP)] = None
    glue_seeds: Annotated[int | None, typer.Option(
        min=1, help="Fine-tunes per GLUE task and trial (1).")] = None
    tracker: TrackerOption = None


def _with_study_options(command: Callable[..., None]) -> Callable[..., None]:
    """`command` with the options of `StudyOptions` after its own, handed to it as one
    `options` argument: typer reads the combined signature."""
    shared = inspect.signature(StudyOptions, eval_str=True).parameters
    own = [parameter for name, parameter in inspect.signature(command, eval_str=True).parameters.items()
           if name != "options"]

    @functools.wraps(command)
    def with_options(**params) -> None:
        command(options=StudyOptions(**{name: params.pop(name) for name in shared}), **params)

    with_options.__signature__ = inspect.Signature([*own, *shared.values()])
    return with_options


def _sizes(text: str) -> tuple[str, ...]:
    """`--sizes small,base` as names of model sizes."""
    from crammit.config import model_config

    sizes = tuple(size.strip() for size in text.split(",") if size.strip())
    with _parsing("--sizes"):
        for size in sizes:
            model_config(size)
    return sizes


@study_app.command("scaling")
@_with_study_options
def study_scaling(
    ctx: typer.Context,
    budgets: Annotated[str, typer.Option(help="Comma-separated budgets, e.g. 6,12,24.")],
    sizes: Annotated[str, typer.Option(help=f"Comma-separated model sizes, of {', '.join(MODEL_SIZES)}.")]
    = "small,base,crammed",
    unit: Annotated[StudyUnit, typer.Option(help="Budget unit.")] = StudyUnit.HOURS,
    gpus_per_trial: Annotated[int, typer.Option("--gpus-per-trial", "--gpus", min=0,
                                                help="GPUs per trial; 0 trains on CPU workers.")] = 1,
    workers: Annotated[int, typer.Option(min=1, help="CPU workers per trial when --gpus 0.")] = 1,
    arch: ArchOption = Arch.CRAMMED,
    recipe: RecipeOption = Recipe.crammed,
    batch_size: Annotated[int | None, typer.Option(help="Sequences per step after the ramp (the recipe's).")]
    = None,
    micro_batch: MicroBatchOption = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (the recipe's).")] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Trials of each size and budget, each with its own seed.")]
    = 1,
    corpus: Annotated[str, typer.Option(help="Prepared once for every trial: any `data prepare --corpus`.")]
    = "embedded",
    data: PreparedDataOption = None,
    order: Annotated[SequenceOrder, typer.Option(help="Order the study prepares its corpus in: shuffle, or "
                                                      "prevalence (the paper's, for one run).")]
    = SequenceOrder.SHUFFLE,
    out: Annotated[Path | None, typer.Option(help="Study directory (default runs/<time>-scaling).")] = None,
    glue: Annotated[str | None, typer.Option(help=GLUE_TASKS_HELP)] = None,
    options: StudyOptions = StudyOptions(),
) -> None:
    """Sweep budgets x model sizes (one arch and recipe; study files compare several), then
    fit and plot scaling laws."""
    from crammit.study.spec import Setting, StudyData, StudySpec, parse_budgets

    try:
        overrides = {key: value for key, value in
                     (("batch_size", batch_size), ("micro_batch_size", micro_batch), ("peak_lr", lr))
                     if value is not None}
        name = arch.value if arch.value == recipe.value else f"{arch.value}_arch_{recipe.value}_recipe"
        with _flags_for(ctx, peak_lr="lr", micro_batch_size="micro_batch", gpus="gpus_per_trial"):
            setting = Setting(name=name, sizes=_sizes(sizes), budgets=parse_budgets(budgets),
                              gpus=gpus_per_trial, workers=workers, arch=arch.value, recipe=recipe.value,
                              overrides=overrides, seeds=seeds)
        spec = StudySpec(name="scaling", settings=(setting,), unit=unit,
                         data=StudyData(corpus=corpus, order=order.value))
        _run_study(ctx, spec, out, glue, data, options)
    except CrammitError as error:
        raise _fail(error) from None


@study_app.command("run")
@_with_study_options
def study_run(
    ctx: typer.Context,
    study_file: Annotated[Path, typer.Argument(help="A study file, e.g. studies/smoke.toml.")],
    out: Annotated[Path | None, typer.Option(help="Study directory (default runs/<time>-<name>).")] = None,
    data: Annotated[Path | None, typer.Option(help="A prepared directory replacing the file's \\[data].")]
    = None,
    glue: Annotated[str | None, typer.Option(help=GLUE_TASKS_HELP + " Replaces the file's \\[glue] tasks.")]
    = None,
    options: StudyOptions = StudyOptions(),
) -> None:
    """Run the settings of a study file (each a size, recipe overrides, GPUs and budgets)."""
    from crammit.study.spec import read_study_file

    try:
        _run_study(ctx, read_study_file(study_file), out, glue, data, options)
    except CrammitError as error:
        raise _fail(error) from None


@study_app.command("fit")
def study_fit(
    ctx: typer.Context,
    source: Annotated[Path, typer.Argument(help="A study directory, or a CSV/Parquet table with "
                                                 "params, tokens, loss (optional flops, setting).")],
    out: Annotated[Path | None, typer.Option(
        help="Where fit.json and plots/ go (default: the study directory, or TABLE-fit/ beside a table).")]
    = None,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples for the intervals.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    # A string the fit's options check, not an enum: its choices live with the fits, which
    # the command line does not import until a fit runs.
    params: Annotated[str, typer.Option(
        help="N of the laws: 'total' parameters, or 'non-embedding' (Kaplan et al.'s count).")] = "total",
) -> None:
    """Refit the scaling laws without training, with bootstrap intervals, and draw their figures."""
    from crammit.study.laws import FitOptions
    from crammit.study.report import fit_source, summarize

    try:
        with _flags_for(ctx):
            options = FitOptions(resamples=resamples, seed=seed, params=params)
        fitted, target = fit_source(source, options, out)
    except CrammitError as error:
        raise _fail(error) from None
    typer.echo(summarize(fitted))
    typer.echo(f"fit: {target}; figures in {target.parent / 'plots'}")


@study_app.command("plot")
def study_plot(directory: Annotated[Path, typer.Argument(help="A study directory.")]) -> None:
    """Redraw a study's figures (PNG and SVG in DIR/plots) from its tables and fit.json."""
    from crammit.study.report import plot_directory

    try:
        figures = plot_directory(directory)
    except CrammitError as error:
        raise _fail(error) from None
    typer.echo("\n".join(str(path) for path in figures))


@study_app.command("recommend")
def study_recommend(
    directory: Annotated[Path, typer.Argument(help="A study directory.")],
    gpus: Annotated[int, typer.Option(min=0, help="GPUs the run will have; 0: CPU workers (for a CPU "
                                                  "study).")] = 1,
    workers: Annotated[int | None, typer.Option(min=1, help="CPU workers when --gpus 0.")] = None,
    hours: Annotated[float, typer.Option(help="Wall-clock hours the run may take.")] = 24.0,
    gpu: Annotated[str | None, typer.Option(
        help="The run's GPU where it is not the study's, e.g. A100: planned at the study's MFU.")] = None,
    setting: Annotated[str | None, typer.Option(help="Whose law (default: the study's only one).")] = None,
) -> None:
    """What the study's law recommends for a budget: the size, its tokens, the loss to expect,
    and the commands that train it (or one line on why the law cannot say)."""
    from crammit.study.recommend import Request, recommend

    try:
        recommendation = recommend(directory, Request(gpus, workers, hours, gpu, setting))
    except CrammitError as error:
        raise _fail(error) from None
    typer.echo(recommendation.render())


eval_app = typer.Typer(help="Evaluate finished runs downstream: GLUE fine-tuning on Ray Tune.",
                       no_args_is_help=True)
app.add_typer(eval_app, name="eval")


def _betas(text: str) -> tuple[float, float]:
    try:
        first, second = (float(value) for value in text.split(","))
    except ValueError:
        raise CrammitError(f"--betas {text!r} is not two numbers; give e.g. 0.9,0.98") from None
    return first, second


@eval_app.command("glue")
def eval_glue(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Argument(help="A finished `crammit train` run directory.")],
    tasks: Annotated[str, typer.Option(help="'all' or a comma-separated list of "
                                            "cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte.")] = "all",
    glue_dir: Annotated[Path | None, typer.Option(help=GLUE_DIR_HELP)] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Fine-tunes per task (seeds 0..N-1); the median is "
                                                   "reported.")] = 5,
    gpus: Annotated[int, typer.Option(min=0, help="GPUs, one fine-tune on each at a time; 0 fine-tunes on "
                                                  "CPUs.")] = 1,
    workers: Annotated[int, typer.Option(min=1, help="CPU fine-tunes at once when --gpus 0.")] = 1,
    from_scratch: Annotated[bool, typer.Option(
        help="Fine-tune a randomly initialised model of the same size instead (the control).")] = False,
    max_train_examples: Annotated[int, typer.Option(help="Fine-tune on a fixed random subset this large "
                                                         "(0: the whole training set).")] = 0,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = GlueRecipe.lr,
    betas: Annotated[str, typer.Option(help="AdamW betas, e.g. 0.9,0.98.")] = "0.9,0.98",
    adam_eps: Annotated[float, typer.Option(help="AdamW epsilon.")] = GlueRecipe.adam_eps,
    batch_size: Annotated[int, typer.Option(help="Examples per step.")] = GlueRecipe.batch_size,
    epochs: Annotated[int, typer.Option(help="Passes over the training set.")] = GlueRecipe.epochs,
    warmup: Annotated[float, typer.Option(help="Fraction of steps of linear warm-up.")]
    = GlueRecipe.warmup_fraction,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = GlueRecipe.weight_decay,
    seq_len: Annotated[int, typer.Option(help="Tokens per example (pairs truncated).")] = GlueRecipe.seq_len,
    address: AddressOption = None,
    tracker: TrackerOption = None,
) -> None:
    """Fine-tune the run's final model on GLUE tasks (the paper's GLUE-sane recipe) and
    report dev scores: median over seeds, spread, and the average over the tasks run."""
    from crammit.eval.glue import Placement, evaluate_glue
    from crammit.eval.glue_data import parse_tasks
    from crammit.eval.glue_results import Init, render

    init = Init.SCRATCH if from_scratch else Init.PRETRAINED
    try:
        if gpus and workers != 1:
            raise CrammitError("--workers is for CPU fine-tunes; with GPUs there is one fine-tune per GPU")
        with _flags_for(ctx, warmup_fraction="warmup"):
            recipe = GlueRecipe(lr=lr, betas=_betas(betas), adam_eps=adam_eps, weight_decay=weight_decay,
                                batch_size=batch_size, epochs=epochs, warmup_fraction=warmup, seq_len=seq_len,
                                max_train_examples=max_train_examples)
        with _parsing("--tasks"):
            task_list = parse_tasks(tasks)
        evaluation = evaluate_glue(
            [run_dir], task_list, range(seeds), recipe, glue_dir, Placement(gpus, workers), init,
            address, echo=typer.echo, tracking=_tracking(tracker),
        )
    except CrammitError as error:
        raise _fail(error) from None
    except (Interrupted, KeyboardInterrupt) as error:
        what = error if isinstance(error, Interrupted) else Interrupted(
            f"the evaluation stopped; the fine-tunes that finished are kept in {run_dir / init.directory}")
        raise _interrupted(what, "run the same command to continue") from None
    for directory, summary in evaluation.summaries.items():
        typer.echo(render(summary))
        typer.echo(f"results: {directory / Init(summary['init']).directory}")
    if evaluation.failed:
        typer.echo(f"error: {len(evaluation.failed)} fine-tunes failed ({', '.join(evaluation.failed)}); "
                   "run the command again to retry them", err=True)
        raise typer.Exit(1)


export_app = typer.Typer(help="Export finished runs for other tools.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("hf")
def export_hf(
    run_dir: Annotated[Path, typer.Argument(help="A finished `crammit train` run directory.")],
    out: Annotated[Path | None, typer.Option(help="Directory to write (default RUN_DIR/hf).")] = None,
) -> None:
    """Write the run's final model and tokenizer in Hugging Face's layout, which the Auto
    classes load (`trust_remote_code=True` for the crammed arch) where crammit is not installed."""
    from crammit.train import rundir

    target = out or run_dir / rundir.HF_DIR
    try:
        rundir.export_hf(run_dir, target)
    except CrammitError as error:
        raise _fail(error) from None
    typer.echo(f"Hugging Face model directory: {target}")
