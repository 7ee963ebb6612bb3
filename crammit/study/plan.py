"""The plan a study prints before it trains: its trials, what each needs, the GPU-hours in
all and the wall time on this cluster, and whether this cluster can run it at all.

Hours and minutes budgets are the trials' training time. Token and FLOP budgets become
time through a throughput: measured by the study's finished trials of the same setting
and size, else a GPU's bf16 peak at the MFU the trainer reaches (`ASSUMED_MFU`), else
unknown (CPUs), and the plan says which.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import pandas as pd

from crammit.cluster import ClusterResources, concurrent_cpu_runs
from crammit.config import SequenceOrder
from crammit.model.flops import peak_flops
from crammit.study.spec import StudySpec, StudyUnit, Trial, TrialStatus

# The crammed trainer's MFU on one H100 (benchmarks/RESULTS.md): a planning figure only.
ASSUMED_MFU = 0.3
# GPU trials planned on a cluster whose GPUs are unknown are timed as on this one.
ASSUMED_GPU = "H100"
# What a CPU trial spends besides training: a Tune trial, a Train controller and a worker
# starting, and the held-out evaluations before and after.
TRIAL_OVERHEAD_S = 45.0
# A prevalence-ordered corpus is refused once a budget reads more than this share of it:
# beyond it, budgets end (and anneal) on sequences of visibly different prevalence.
ORDERED_DATA_SHARE = 0.1


@dataclass(frozen=True)
class StudyCorpus:
    """What a plan knows of the study's corpus: its order, and its unique training tokens
    once it is prepared (None before)."""

    order: str
    train_tokens: int | None = None


@dataclass(frozen=True)
class Calibration:
    """This machine's training FLOP/s of CPU settings' sizes (`calibrate.calibrate`)."""

    rates: dict[tuple[str, str], float]
    seconds: float
    threads: int
    by_key: dict[str, float] = field(default_factory=dict)  # the rates by `calibration_key`, to save

    def describe(self) -> str:
        return (f"CPU throughput from a {self.seconds:.0f}-s calibration of the sizes on this machine "
                f"({self.threads} torch thread(s) a worker, as many at once as trials run), plus "
                f"{TRIAL_OVERHEAD_S:.0f} s of start-up and evaluation a trial")


@dataclass(frozen=True)
class TrialModel:
    """What a plan needs of a setting's size: its parameters and training FLOPs per token."""

    params: int
    flops_per_token: float


@dataclass(frozen=True)
class PlannedTrial:
    name: str
    size: str
    budget: str
    resources: str  # e.g. "1 GPU" or "2 CPU workers"
    hours: float | None  # training time; None when it cannot be estimated
    status: TrialStatus


@dataclass(frozen=True)
class StudyPlan:
    study: str
    trials: tuple[PlannedTrial, ...]
    cluster: ClusterResources
    concurrent_trials: int
    gpu_hours: float | None  # GPU-hours of the trials still to run
    wall_hours: float | None
    estimate_note: str
    problem: str  # why this cluster cannot run the study as asked; empty when it can
    glue: str = ""  # the GLUE fine-tunes that follow training; empty when none
    corpus: str = ""  # how much of the corpus the budgets read
    ordered_data: str = ""  # why the corpus's order would bend the law; empty when it does not
    design: pd.DataFrame | None = None  # per trial: setting, size, budget, seed, params, tokens, flops, hours
    precision: tuple[str, ...] = ()  # what the study is expected to conclude, and a better design
    calibration: Calibration | None = None  # the CPU speeds it is planned at, where it calibrated

    def render(self) -> str:
        width = max(len(trial.name) for trial in self.trials)
        lines = [f"study {self.study}: {len(self.trials)} trials",
                 f"  {'trial':<{width}}  {'size':<8} {'budget':<14} {'per trial':<15} {'hours':>8}  status"]
        for trial in self.trials:
            lines.append(f"  {trial.name:<{width}}  {trial.size:<8} {trial.budget:<14} {trial.resources:<15} "
                         f"{_hours(trial.hours):>8}  {trial.status.value}")
        to_run = sum(trial.status is not TrialStatus.OK for trial in self.trials)
        lines += [
            f"cluster: {self.cluster.describe()}; {self.concurrent_trials} trial(s) at a time",
            f"to run: {to_run} trials, {_hours(self.gpu_hours)} GPU-hours in all, "
            f"wall time on this cluster {_duration(self.wall_hours)}",
        ]
        if self.estimate_note:
            lines.append(f"({self.estimate_note})")
        if self.glue:
            lines.append(self.glue)
        lines += self.precision
        if self.corpus:
            lines.append(self.corpus)
        if self.ordered_data:
            lines.append(f"refused unless --allow-ordered-data: {self.ordered_data}")
        if self.problem:
            lines.append(f"this cluster cannot run this study as asked: {self.problem}")
        return "\n".join(lines)


def concurrent_trials(spec: StudySpec, cluster: ClusterResources) -> int:
    """Trials that fit on the cluster at once: GPU trials by GPUs, CPU trials by cores
    (each worker's torch threads get cores of their own). At least 1, so a plan can still
    be printed."""
    limits = [cluster.gpus // setting.gpus if setting.gpus
              else concurrent_cpu_runs(cluster.cpus, setting.workers) for setting in spec.settings]
    return max(min(limits), 1)


def cluster_problem(spec: StudySpec, cluster: ClusterResources) -> str:
    """Empty when every trial fits on the cluster, else what does not and how to fix it."""
    gpus = max(setting.gpus for setting in spec.settings)
    if gpus > cluster.gpus:
        return (f"its trials need {gpus} GPU(s) each and the cluster has {cluster.gpus}; "
                "use --gpus-per-trial 0 --workers K to train on CPUs, or --address of a cluster with GPUs")
    workers = max((setting.workers for setting in spec.settings if not setting.gpus), default=0)
    if workers > cluster.cpus:
        return (f"its CPU trials need {workers} workers each and the cluster has {cluster.cpus} CPUs; "
                "use fewer --workers")
    return ""


def make_plan(spec: StudySpec, trials: pd.DataFrame, cluster: ClusterResources,
              models: dict[tuple[str, str], TrialModel], corpus: StudyCorpus | None = None,
              calibrated: Calibration | None = None) -> StudyPlan:
    """`trials` is the study's trial table (status, and measured figures of finished
    trials); `models` maps each (setting, size) to its parameters and FLOPs per token;
    `corpus` what is known of the study's corpus; `calibrated` this machine's measured speed
    of CPU settings' sizes."""
    status = {name: TrialStatus(value) for name, value in zip(trials["trial"], trials["status"], strict=True)}
    design = trial_design(spec, models, measured_flops_per_s(trials), cluster, calibrated)
    planned = [PlannedTrial(trial.name, trial.size, f"{trial.budget:g} {trial.unit.value}", _resources(trial),
                            None if pd.isna(hours) else float(hours), status[trial.name])
               for trial, hours in zip(spec.trials(), design["hours"], strict=True)]
    to_run = [(trial, plan) for trial, plan in zip(spec.trials(), planned, strict=True)
              if plan.status is not TrialStatus.OK]
    known = all(plan.hours is not None for _, plan in to_run)
    gpu_known = all(plan.hours is not None for trial, plan in to_run if trial.setting.gpus)
    concurrency = concurrent_trials(spec, cluster)
    return StudyPlan(
        study=spec.name, trials=tuple(planned), cluster=cluster, concurrent_trials=concurrency,
        gpu_hours=sum(plan.hours * trial.setting.gpus for trial, plan in to_run if trial.setting.gpus)
        if gpu_known else None,
        wall_hours=_makespan([plan.hours for _, plan in to_run], concurrency) if known else None,
        estimate_note="; ".join(sorted(note for note in set(design["note"]) if note)),
        problem=cluster_problem(spec, cluster),
        glue=_glue_line(spec),
        design=design,
        calibration=calibrated,
        **_corpus_lines(corpus, [None if pd.isna(tokens) else tokens for tokens in design["tokens"]]),
    )


def _resources(trial: Trial) -> str:
    setting = trial.setting
    resources = f"{setting.gpus} GPU" if setting.gpus else f"{setting.workers} CPU worker"
    return resources + ("s" if setting.workers_per_trial > 1 else "")


def trial_design(spec: StudySpec, models: dict[tuple[str, str], TrialModel], measured: dict,
                 cluster: ClusterResources, calibrated: Calibration | None = None) -> pd.DataFrame:
    """Each trial of `spec` as a plan sees it: its setting, size, budget and seed, N, and the
    hours, tokens and FLOPs its budget comes to (NaN where its speed is unknown), with a note
    on how it was timed. A CPU trial of a token or FLOP budget also pays TRIAL_OVERHEAD_S."""
    rows = []
    for trial in spec.trials():
        model = models[(trial.setting.name, trial.size)]
        rate, note = _flops_per_s(trial, measured, cluster, calibrated)
        if trial.unit in (StudyUnit.HOURS, StudyUnit.MINUTES):
            hours = trial.unit.budget(trial.budget).amount
            flops = None if rate is None else hours * 3600 * rate
        else:
            flops = trial.budget * (model.flops_per_token if trial.unit is StudyUnit.TOKENS else 1.0)
            overhead = 0.0 if trial.setting.gpus else TRIAL_OVERHEAD_S
            hours = None if rate is None else (flops / rate + overhead) / 3600
        rows.append({"trial": trial.name, "setting": trial.setting.name, "size": trial.size,
                     "law_group": f"{trial.setting.arch} + {trial.setting.recipe_label()}",
                     "budget": trial.budget, "seed": trial.seed, "params": model.params, "hours": hours,
                     "tokens": None if flops is None else flops / model.flops_per_token, "flops": flops,
                     "device_hours": None if hours is None else hours * trial.setting.workers_per_trial,
                     "device": "cuda" if trial.setting.gpus else "cpu", "note": note})
    return pd.DataFrame(rows).astype({"hours": float, "tokens": float, "flops": float, "device_hours": float})


def _flops_per_s(trial: Trial, measured: dict, cluster: ClusterResources,
                 calibrated: Calibration | None) -> tuple[float | None, str]:
    """A trial's training FLOP/s and where it comes from: the study's finished trials of its
    setting and size; for CPU trials this machine's calibration; for GPU trials their bf16
    peak at ASSUMED_MFU (an H100's where the cluster's GPUs are unknown)."""
    key = (trial.setting.name, trial.size)
    if measured.get(key):
        return measured[key], "throughput of the study's finished trials"
    if not trial.setting.gpus:
        if calibrated is not None and key in calibrated.rates:
            return calibrated.rates[key], calibrated.describe()
        return None, "CPU throughput unknown until the first trials finish"
    peak = peak_flops(cluster.accelerator) if cluster.accelerator else None
    if peak:
        return peak * ASSUMED_MFU * trial.setting.gpus, f"GPU throughput at {ASSUMED_MFU:.0%} MFU"
    return (peak_flops(ASSUMED_GPU) * ASSUMED_MFU * trial.setting.gpus,
            f"GPU throughput as on an {ASSUMED_GPU} at {ASSUMED_MFU:.0%} MFU (this cluster's GPUs are "
            "unknown)")


def _corpus_lines(corpus: StudyCorpus | None, tokens: list[float | None]) -> dict[str, str]:
    """The plan's line on how much of the corpus the budgets read, and, for a corpus in
    prevalence order, why that order would bend the law."""
    if corpus is None:
        return {}
    largest = None if None in tokens else max(tokens)
    share = None if largest is None or not corpus.train_tokens else largest / corpus.train_tokens
    size = f"{corpus.train_tokens:,} unique training tokens" if corpus.train_tokens else "not prepared yet"
    reads = ("the largest budget's tokens are unknown until trials finish" if largest is None else
             f"the largest budget reads {largest:,.0f} tokens"
             + ("" if share is None else f", {share:.2f} epochs"))
    lines = {"corpus": f"corpus: {size}, {corpus.order} order; {reads}"}
    if corpus.order == SequenceOrder.PREVALENCE.value and (share is None or share > ORDERED_DATA_SHARE):
        reach = "an unknown share" if share is None else f"{min(share, 1):.0%}"
        lines["ordered_data"] = (
            f"the corpus is in prevalence order and the budgets reach {reach} of it, so each budget "
            "would end on sequences of a different prevalence and final loss would not be a function "
            "of compute alone; prepare it with `crammit data prepare --order shuffle`")
    return lines


def _glue_line(spec: StudySpec) -> str:
    glue = spec.glue
    if not glue.tasks:
        return ""
    fine_tunes = len(spec.trials()) * len(glue.tasks) * glue.seeds
    return (f"then GLUE: each finished trial fine-tuned on {', '.join(glue.tasks)} with {glue.seeds} "
            f"seed(s), {fine_tunes} fine-tunes in all (not in the hours above)")


def measured_flops_per_s(trials: pd.DataFrame) -> dict[tuple[str, str], float]:
    done = trials[(trials["status"] == TrialStatus.OK.value) & (trials["elapsed_s"].fillna(0) > 0)]
    rates = done["flops"] / done["elapsed_s"]
    return rates.groupby([done["setting"], done["size"]]).median().to_dict()


def _makespan(hours: list[float], slots: int) -> float:
    """Longest trials first onto the slot that frees first: the study's wall time."""
    finish = [0.0] * slots
    for duration in sorted(hours, reverse=True):
        heapq.heappush(finish, heapq.heappop(finish) + duration)
    return max(finish)


def _hours(hours: float | None) -> str:
    return "?" if hours is None else f"{hours:,.2f}"


def _duration(hours: float | None) -> str:
    if hours is None:
        return "unknown"
    if hours >= 48:
        return f"{hours:,.1f} h ({hours / 24:.1f} days)"
    return f"{hours:,.2f} h" if hours >= 1 else f"{hours * 60:.1f} min"
