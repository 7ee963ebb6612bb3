"""Where a training step's time goes: a `torch.profiler` trace of a few steady steps
(`crammit train --profile-steps N`) and its summary.

Rank 0 traces N steps from the first one past half the budget and the end of the batch
ramp (compile done, batch at its final size) and writes them to the run directory's
`profile/`: `trace.json.gz` (open it in Perfetto or chrome://tracing) and a summary of it
(`summary.txt`, `summary.json`): how much of the step the GPU is busy and how much is host
gaps, the host time of each phase of the step, host-device syncs, and the top kernels.
Traced steps run slower than the others; their time counts against the budget.
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, record_function

from crammit.config import Device
from crammit.io import atomic_path

PROFILE_DIR = "profile"
TRACE_FILE = "trace.json.gz"
SUMMARY_FILE = "summary.txt"
SUMMARY_JSON = "summary.json"
START_FRACTION = 0.5  # of the budget, at least: the step before it is not yet steady

# Names of the ranges the training loop marks; the summary reports host time per phase.
STEP = "crammit.step"
DATA = "crammit.data"
FORWARD = "crammit.forward"
BACKWARD = "crammit.backward"
OPTIMIZER = "crammit.optimizer"
STEP_COLLECTIVE = "crammit.step_collective"
PHASES = (DATA, FORWARD, BACKWARD, OPTIMIZER, STEP_COLLECTIVE)

# Trace categories (Kineto's chrome trace) of work on the device, and the runtime calls
# that make the host wait for it.
HOST_RANGE = "user_annotation"
DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
TOP_KERNELS = 15


class StepProfiler:
    """Traces `steps` training steps on this rank once the budget's progress reaches
    `start_fraction`; `step_started` and `step_finished` bracket each step of the loop.
    Does nothing when `steps` is 0 or the run directory holds a profile already (a resume)."""

    def __init__(self, run_dir: Path, steps: int, start_fraction: float, device: Device) -> None:
        self.out_dir = run_dir / PROFILE_DIR
        self.steps_left = 0 if (self.out_dir / SUMMARY_JSON).exists() else steps
        self.start_fraction = start_fraction
        self.activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == Device.CUDA else [])
        self.profiler: torch.profiler.profile | None = None
        self.step_range: record_function | None = None

    def step_started(self, fraction: float) -> None:
        if self.profiler is None and self.steps_left and fraction >= self.start_fraction:
            self.profiler = torch.profiler.profile(activities=self.activities)
            self.profiler.start()
        if self.profiler is not None:
            self.step_range = record_function(STEP)
            self.step_range.__enter__()

    def step_finished(self) -> None:
        if self.profiler is None:
            return
        self.step_range.__exit__(None, None, None)
        self.steps_left -= 1
        if self.steps_left == 0:
            self.close()

    def close(self) -> None:
        """Stop tracing and write the trace and its summary (also when the budget ends
        before the steps asked for)."""
        if self.profiler is None:
            return
        self.profiler.stop()
        with atomic_path(self.out_dir) as tmp:
            tmp.mkdir()
            self.profiler.export_chrome_trace(str(tmp / TRACE_FILE))
            summary = summarize_trace(tmp / TRACE_FILE)
            (tmp / SUMMARY_JSON).write_text(json.dumps(asdict(summary), indent=2) + "\n")
            (tmp / SUMMARY_FILE).write_text(summary.describe())
        self.profiler = None


@dataclass(frozen=True)
class KernelTime:
    name: str
    calls: int
    total_ms: float
    share_of_busy: float


@dataclass(frozen=True)
class TraceSummary:
    steps: int
    step_ms: float  # mean wall time of a traced step
    device_busy: float | None  # share of the steps' wall time with GPU work (None: no GPU in the trace)
    phase_ms: dict[str, float]  # host time of each phase, per step
    syncs_per_step: float  # runtime calls that block the host until the GPU catches up
    copies_per_step: dict[str, float]  # device copies by kind, e.g. "Memcpy HtoD (Pageable -> Device)"
    top_kernels: list[KernelTime]

    def describe(self) -> str:
        lines = [f"{self.steps} traced step{'' if self.steps == 1 else 's'}, {self.step_ms:,.1f} ms a step"]
        if self.device_busy is None:
            lines.append("no GPU work in the trace (a CPU run): phases only")
        else:
            lines.append(f"GPU busy {self.device_busy:.1%} of the step, host gaps {1 - self.device_busy:.1%}")
            lines.append(f"host-device syncs a step: {self.syncs_per_step:,.1f}")
            lines.extend(f"  {kind}: {count:,.1f} a step" for kind, count in self.copies_per_step.items())
        lines.append(f"\n{'phase (host time)':<28}{'ms a step':>12}{'share':>9}")
        for phase, ms in self.phase_ms.items():
            lines.append(f"{phase:<28}{ms:>12,.1f}{ms / self.step_ms:>9.1%}")
        if self.top_kernels:
            lines.append(f"\n{'top kernels by GPU time':<72}{'calls':>8}{'ms':>10}{'of busy':>9}")
            for kernel in self.top_kernels:
                lines.append(f"{kernel.name[:70]:<72}{kernel.calls:>8}{kernel.total_ms:>10,.1f}"
                             f"{kernel.share_of_busy:>9.1%}")
        return "\n".join(lines) + "\n"


def summarize_trace(path: Path) -> TraceSummary:
    """The summary of a chrome trace written by `torch.profiler` (gzipped or not) whose
    steps are marked by `STEP` ranges."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as file:
        events = [event for event in json.load(file)["traceEvents"] if event.get("ph") == "X"]
    return summarize_events(events)


def summarize_events(events: list[dict[str, Any]]) -> TraceSummary:
    # Kineto repeats each range on the GPU timeline ("gpu_user_annotation"): the host's counts.
    steps = [_interval(event) for event in events if event.get("cat") == HOST_RANGE and event["name"] == STEP]
    if not steps:
        raise ValueError(f"the trace marks no {STEP} range")
    wall_us = sum(end - start for start, end in steps)

    def in_steps(event: dict) -> bool:
        start, end = _interval(event)
        return any(start < step_end and end > step_start for step_start, step_end in steps)

    traced = [event for event in events if in_steps(event)]
    device = [event for event in traced if event.get("cat") in DEVICE_CATEGORIES]
    busy_us = sum(_overlap(union, step) for union in _union(map(_interval, device)) for step in steps)

    phase_us: dict[str, float] = defaultdict(float)
    kernel_us: dict[str, float] = defaultdict(float)
    kernel_calls: dict[str, int] = defaultdict(int)
    copies: dict[str, int] = defaultdict(int)
    syncs = 0
    for event in traced:
        category = event.get("cat")
        if category == HOST_RANGE and event["name"] in PHASES:
            phase_us[event["name"]] += event["dur"]
        elif category == "kernel":
            kernel_us[event["name"]] += event["dur"]
            kernel_calls[event["name"]] += 1
        elif category == "gpu_memcpy":
            copies[event["name"]] += 1
        elif category == "cuda_runtime" and event["name"] in SYNC_CALLS:
            syncs += 1

    count = len(steps)
    ranked = sorted(kernel_us, key=kernel_us.get, reverse=True)[:TOP_KERNELS]
    return TraceSummary(
        steps=count,
        step_ms=wall_us / count / 1e3,
        device_busy=busy_us / wall_us if device else None,
        phase_ms={phase: phase_us[phase] / count / 1e3 for phase in PHASES if phase in phase_us},
        syncs_per_step=syncs / count,
        copies_per_step={kind: copies[kind] / count for kind in sorted(copies)},
        top_kernels=[KernelTime(name, kernel_calls[name], kernel_us[name] / 1e3, kernel_us[name] / busy_us)
                     for name in ranked],
    )


def _interval(event: dict) -> tuple[float, float]:
    return float(event["ts"]), float(event["ts"]) + float(event["dur"])


def _union(intervals) -> list[tuple[float, float]]:
    """Overlapping intervals merged (kernels on several streams overlap)."""
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


def _overlap(first: tuple[float, float], second: tuple[float, float]) -> float:
    return max(0.0, min(first[1], second[1]) - max(first[0], second[0]))
