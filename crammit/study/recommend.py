"""What a fitted study recommends for a budget (`crammit study recommend`): "one GPU for 24
hours: which size, how many tokens, what loss?".

The setting's L(N, D) is fitted exactly as `crammit study fit` fits it (with fit.json's
options where the study has one), so every number agrees with fit.json's named budgets. The
budget in FLOPs is hours × devices × one device's median measured FLOP/s over the law's
trials (the throughput fit.json's named budgets use). Another GPU (`gpu`) is taken at the
study's MFU: the measured FLOP/s times its peak over the study GPU's peak, which the trials'
recorded MFU gives; a CPU study, or a GPU without a known peak, cannot be converted, and the
study refuses rather than guesses.

The recommendation is refused with a CrammitError, never a bare number, where the law is not
fitted, its compute-optimal allocation is not identified, or the budget lies beyond what the
law supports (`fit.py`'s extrapolation verdict, the one fit.json's predictions carry).
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from crammit.config import MODEL_SIZES
from crammit.data.layout import MANIFEST
from crammit.errors import CrammitError
from crammit.io import read_json
from crammit.model.flops import (
    PEAK_FLOPS_BF16,
    non_embedding_parameter_count,
    parameter_count,
    peak_flops,
    training_flops_per_token,
)
from crammit.study import results
from crammit.study.allocation import compute_optimal
from crammit.study.fit import LawGroup, law_group
from crammit.study.laws import FitOptions, Interval, Noise
from crammit.study.report import factor_text, interval_text
from crammit.study.spec import Setting, StudySpec, read_study_file, trial_model
from crammit.study.table import study_rows
from crammit.train.recipe import accumulation_target

PARAMETER_COUNTS = {"total": parameter_count, "non-embedding": non_embedding_parameter_count}
# Recipe fields a study setting may override that `crammit train` has a flag for.
TRAIN_FLAGS = {"batch_size": "--batch-size", "micro_batch_size": "--micro-batch", "peak_lr": "--lr",
               "seed": "--seed"}


@dataclass(frozen=True)
class Request:
    """The budget asked about: GPUs (or, with gpus = 0, CPU workers) for so many hours, the
    GPU model where it is not the study's, and whose law (None: the study's only one)."""

    gpus: int = 1
    workers: int | None = None  # CPU workers when gpus == 0
    hours: float = 24.0
    gpu: str | None = None
    setting: str | None = None

    def __post_init__(self) -> None:
        if self.gpus < 0 or (self.workers is not None and self.workers < 1):
            raise CrammitError("--gpus must be >= 0 and --workers >= 1")
        if self.gpus and self.workers is not None:
            raise CrammitError("--workers is for CPU runs (--gpus 0); with GPUs there is one worker per GPU")
        if not self.gpus and self.gpu:
            raise CrammitError(f"--gpu {self.gpu} names a GPU, but --gpus 0 asks about CPU workers")
        if not 0 < self.hours < math.inf:
            raise CrammitError(f"--hours must be positive and finite, got {self.hours:g}")

    @property
    def devices(self) -> int:
        return self.gpus or self.workers or 1

    def describe(self) -> str:
        kind = "GPU" if self.gpus else "CPU worker"
        return f"{self.devices} {kind}{'s' if self.devices > 1 else ''} × {self.hours:g} h"


class Throughput(NamedTuple):
    """One device's training FLOP/s the budget is converted at, and where it comes from."""

    flops_per_s: float
    source: str


@dataclass(frozen=True)
class Recommendation:
    """What the law says for the budget. Intervals are the law's (bootstrap) at `confidence`,
    except `size_loss`: where one run of the named size lands (the law's uncertainty and the
    run-to-run scatter `noise`)."""

    study: Path
    law: str  # the law group, as fit.json names it
    request: Request
    throughput: Throughput
    flops: float  # the budget
    params: Interval  # N_opt
    tokens: Interval  # D_opt
    optimal_loss: Interval  # the law's loss at N_opt, D_opt
    size: str  # the named size nearest N_opt (in log N)
    size_params: float
    size_tokens: float  # what the size trains in the budget
    size_loss: Interval
    noise: Noise
    trained_params: tuple[float, float]  # the smallest and largest N the law was fitted on
    extrapolation: float  # the budget over the law's largest trial's FLOPs
    validated_factor: float  # the extrapolation the rollout checked
    unidentified: tuple[str, ...]  # the law's parameters the runs do not identify
    unique_tokens: float | None  # of the study's corpus
    confidence: float
    commands: tuple[str, ...]  # prepare the study's corpus where it is not at hand; train

    @property
    def epochs(self) -> float | None:
        """Passes of the named size's run over the study's corpus."""
        return self.size_tokens / self.unique_tokens if self.unique_tokens else None

    def render(self) -> str:
        level = f"{self.confidence:.0%}"
        kind = "GPU" if self.request.gpus else "CPU worker"
        lines = [
            f"{self.study}: L(N, D) of {self.law}, fitted as `crammit study fit` fits it ({level} intervals)",
            f"budget: {self.request.describe()} = {self.flops:.3g} FLOPs at "
            f"{self.throughput.flops_per_s:.3g} FLOP/s per {kind} ({self.throughput.source})",
            f"compute-optimal: N_opt {_text(self.params)} parameters, D_opt {_text(self.tokens)} tokens, "
            f"loss {_text(self.optimal_loss)} (the law's interval)",
            self._extrapolation_text(),
            f"nearest named size: {self.size} ({self.size_params:.3g} parameters{self._size_range_text()}): "
            f"{self.size_tokens:.3g} tokens in the budget, {self._epochs_text()}",
            f"expected loss of one run: {_text(self.size_loss)} ({level} prediction interval: the law's "
            f"uncertainty and a run-to-run scatter of {self.noise.sigma:.2%} from {self.noise.source})",
        ]
        if self.unidentified:
            names = ", ".join(self.unidentified)
            lines.append(f"note: the law's {names} {'is' if len(self.unidentified) == 1 else 'are'} not "
                         "identified; the allocation's alpha and beta are")
        return "\n".join([*lines, "run it:", *(f"  {command}" for command in self.commands)])

    def _extrapolation_text(self) -> str:
        factor, checked = self.extrapolation, self.validated_factor
        if factor <= 1:
            return f"within the study's compute ({factor_text(factor)} its largest trial)"
        verdict = (f"validated: the rollout checked to {factor_text(checked)}" if factor <= checked else
                   f"not validated: the rollout checked only to {factor_text(checked)}")
        return f"extrapolated {factor_text(factor)} beyond the largest trial; {verdict}"

    def _size_range_text(self) -> str:
        smallest, largest = self.trained_params
        if self.size_params > largest:
            return f"; {factor_text(self.size_params / largest)} the largest size trained: extrapolated"
        if self.size_params < smallest:
            return f"; 1/{factor_text(smallest / self.size_params)} the smallest size trained: extrapolated"
        return ""

    def _epochs_text(self) -> str:
        epochs = self.epochs
        if epochs is None:
            return "epochs unknown (the study records no corpus size)"
        text = f"{epochs:.3g} epochs of the study corpus's {self.unique_tokens:.3g} unique tokens"
        return text + (" (repeated data: worth less than the fresh data the law was fitted on)"
                       if epochs > 1 else "")


def recommend(study_dir: Path, request: Request) -> Recommendation:
    """The recommendation of the study in `study_dir` for `request`, or a CrammitError
    saying why the study cannot give one."""
    if not study_dir.is_dir():
        raise CrammitError(f"{study_dir} is not a study directory")
    spec = read_study_file(study_dir / results.STUDY_FILE)
    names = [setting.name for setting in spec.settings]
    if request.setting is not None and request.setting not in names:
        raise CrammitError(f"unknown setting {request.setting!r}; the study's settings are "
                           f"{', '.join(names)}")
    trials, curves = results.read_tables(study_dir)
    options = _fit_options(study_dir, spec)
    law = law_group(study_rows(trials), request.setting, options)
    # Before the fit: a budget the study cannot price, or a recipe the run cannot take, fails fast.
    rate = throughput(law, curves, request)
    setting = _setting(spec, request.setting or min(law.rows["setting"]))
    recipe_flags = _recipe_flags(setting, request)
    section, fitted = law.params_tokens(options)
    if fitted is None:
        raise CrammitError(f"no recommendation: L(N, D) of {law.name} was not fitted ({section['skipped']})")
    if not fitted.allocation_identified:
        raise CrammitError(f"no recommendation: the compute-optimal allocation of {law.name} is not "
                           f"identified (it {section['allocation_problem']})")
    flops = rate.flops_per_s * request.devices * request.hours * 3600
    extrapolation = fitted.extrapolation(flops)
    if not extrapolation["supported"]:
        raise CrammitError(f"no recommendation at {flops:.3g} FLOPs: {extrapolation['reason']}")
    optimal = {name: Interval(*(float(value[0]) for value in interval))
               for name, interval in compute_optimal(fitted.fit, [flops], fitted.per_token).items()}
    size, params, per_token = _nearest_size(spec, setting, optimal["params"].estimate, options)
    size_tokens = flops / per_token
    noise = Noise(**section["noise"])  # L(N, D) leaves a degree of freedom: never None here
    size_loss = Interval(*(float(value[0]) for value in
                           fitted.fit.predict_run([params], [size_tokens], noise=noise, seed=options.seed)))
    return Recommendation(
        study=study_dir, law=law.name, request=request, throughput=rate, flops=flops,
        params=optimal["params"], tokens=optimal["tokens"], optimal_loss=optimal["loss"], size=size,
        size_params=params, size_tokens=size_tokens, size_loss=size_loss, noise=noise,
        trained_params=(float(law.rows["params"].min()), float(law.rows["params"].max())),
        extrapolation=extrapolation["extrapolation"], validated_factor=extrapolation["validated_factor"],
        unidentified=tuple(name for name, value in section["parameters"].items() if not value["identified"]),
        unique_tokens=law.unique_tokens, confidence=options.confidence,
        commands=_commands(spec, study_dir, setting, recipe_flags, size, size_tokens, request),
    )


def _fit_options(study_dir: Path, spec: StudySpec) -> FitOptions:
    """fit.json's options, so the law is the one the study reported; else the study's."""
    fit_file = study_dir / results.FIT_FILE
    if not fit_file.is_file():
        return FitOptions(resamples=spec.resamples)
    recorded = read_json(fit_file)["options"]
    return FitOptions(**{field.name: recorded[field.name] for field in dataclasses.fields(FitOptions)
                         if field.name in recorded})


def _setting(spec: StudySpec, name: str) -> Setting:
    return next(setting for setting in spec.settings if setting.name == name)


def throughput(law: LawGroup, curves: pd.DataFrame, request: Request) -> Throughput:
    """One device's FLOP/s on the budget's devices: measured, or converted to `request.gpu`
    at the study's MFU."""
    devices = set(law.rows["device"]) if "device" in law.rows else set()
    ran_on = "GPUs" if devices == {"cuda"} else "CPU workers" if devices == {"cpu"} else None
    if ran_on is None:
        raise CrammitError(f"the trials of {law.name} record no single kind of device "
                           f"({', '.join(sorted(map(str, devices))) or 'none'}): no throughput to plan with")
    if (ran_on == "GPUs") != bool(request.gpus):
        ask = "--gpus N" if ran_on == "GPUs" else "--gpus 0 --workers N"
        raise CrammitError(f"the study's trials ran on {ran_on}: their throughput says nothing of "
                           f"{request.describe()}; ask with {ask}")
    measured = law.throughput
    if measured is None:
        raise CrammitError(f"the trials of {law.name} record no device hours: no throughput to plan with")
    trials = f"the median of its {len(law.rows)} trials"
    peak = _study_peak(law.rows, curves)
    if request.gpu is None:
        mfu = f", {measured / peak:.0%} MFU" if peak else ""
        return Throughput(measured, f"measured: {trials}{mfu}")
    target = peak_flops(request.gpu)
    if target is None:
        raise CrammitError(f"unknown GPU {request.gpu!r} (--gpu): its peak is known for "
                           f"{', '.join(PEAK_FLOPS_BF16)}")
    if peak is None:
        raise CrammitError(f"the study's trials recorded no MFU (crammit knows no peak of their GPUs), so "
                           f"their throughput cannot be converted to an {request.gpu}'s; drop --gpu to plan "
                           "at the study's own")
    return Throughput(measured * target / peak,
                      f"{trials}, {measured:.3g} FLOP/s at {measured / peak:.0%} of the study GPUs' "
                      f"{peak / 1e12:.0f} TFLOP/s peak, at that MFU on an {request.gpu}'s "
                      f"{target / 1e12:.0f} TFLOP/s")


def _study_peak(rows: pd.DataFrame, curves: pd.DataFrame) -> float | None:
    """The peak FLOP/s of one of the study's GPUs as its trainer knew it: each step's FLOP/s
    over its MFU and workers (`model_flops_utilization` backwards); None where no step
    recorded an MFU (CPUs, or a GPU crammit knows no peak of)."""
    if curves.empty or "mfu" not in curves:
        return None
    per_trial = rows[["trial"]].assign(per_token=rows["flops"] / rows["tokens"], workers=rows["workers"])
    steps = curves[["trial", "tokens_per_s", "mfu"]].merge(per_trial, on="trial")
    mfu = pd.to_numeric(steps["mfu"], errors="coerce")
    steps, mfu = steps[mfu > 0], mfu[mfu > 0]
    if steps.empty:
        return None
    return float(np.median(steps["tokens_per_s"] * steps["per_token"] / (mfu * steps["workers"])))


def _nearest_size(spec: StudySpec, setting: Setting, params: float, options: FitOptions
                  ) -> tuple[str, float, float]:
    """The named size nearest `params` in log N, on the study's corpus and in the setting's
    arch, counted as the law counts N: its name, N and training FLOPs per token."""
    count = PARAMETER_COUNTS[options.params]
    mask_rate = setting.recipe_config().mask_rate
    models = {size: trial_model(spec, size, setting.arch) for size in MODEL_SIZES}
    size = min(models, key=lambda name: abs(math.log(count(models[name]) / params)))
    return size, float(count(models[size])), training_flops_per_token(models[size], mask_rate)


def _recipe_flags(setting: Setting, request: Request) -> list[str]:
    """The `crammit train` flags of the setting's recipe, which must run on the devices asked for."""
    unknown = sorted(set(setting.overrides) - set(TRAIN_FLAGS))
    if unknown:
        raise CrammitError(f"setting {setting.name!r} overrides {', '.join(unknown)}, which `crammit train` "
                           "has no flag for: no command runs its recipe")
    try:
        accumulation_target(setting.recipe_config(), request.devices)
    except CrammitError as error:
        raise CrammitError(f"the study's recipe cannot run on {request.describe()}: {error}") from None
    overrides = sorted(setting.overrides.items())
    return ["--arch", setting.arch, "--recipe", setting.recipe,
            *(part for key, value in overrides for part in (TRAIN_FLAGS[key], str(value)))]


def _commands(spec: StudySpec, study_dir: Path, setting: Setting, recipe_flags: list[str], size: str,
              tokens: float, request: Request) -> tuple[str, ...]:
    """`crammit train` of the size on the study's corpus with the setting's recipe, for the
    tokens the law predicts at (an hours budget would train as many as the device's speed
    gives); preceded by `crammit data prepare` of the study's corpus where it is not at hand."""
    data = Path(spec.data.data) if spec.data.data else study_dir / results.DATA_DIR
    prepare = [] if spec.data.data or (data / MANIFEST).is_file() else [shlex.join([
        "crammit", "data", "prepare", "--out", str(data), "--corpus", spec.data.corpus,
        "--vocab-size", str(spec.data.vocab_size), "--seq-len", str(spec.data.seq_len),
        "--order", spec.data.order, "--seed", str(spec.data.seed)])]
    devices = ["--gpus", str(request.gpus), *([] if request.gpus else ["--workers", str(request.devices)])]
    train = ["crammit", "train", "--size", size, *recipe_flags, *devices, "--tokens", f"{tokens:.0f}",
             "--data", str(data), "--max-eval-sequences", str(spec.max_eval_sequences)]
    return (*prepare, shlex.join(train))


def _text(interval: Interval) -> str:
    """`estimate [low, high]`; a side no resample bounds is "unbounded"."""
    return interval_text({key: value if np.isfinite(value) else None
                          for key, value in interval._asdict().items()})
