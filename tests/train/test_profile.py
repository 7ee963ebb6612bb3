import gzip
import json

import pytest
import torch
from torch.profiler import record_function

from crammit.config import Device
from crammit.train import profile


def span(name: str, category: str, start: float, duration: float) -> dict:
    return {"ph": "X", "name": name, "cat": category, "ts": start, "dur": duration}


def test_the_summary_counts_gpu_busy_time_phases_syncs_and_kernels_within_the_traced_steps():
    events = [
        span(profile.STEP, "user_annotation", 0, 100), span(profile.STEP, "user_annotation", 200, 100),
        span(profile.STEP, "gpu_user_annotation", 0, 300),  # the GPU timeline's copy of a range is not a step
        span(profile.DATA, "user_annotation", 0, 10), span(profile.DATA, "user_annotation", 200, 30),
        span(profile.FORWARD, "user_annotation", 10, 40),
        # Step 1: two overlapping kernels busy 20..60, a copy 70..80; step 2: 250..300 of a kernel
        # that runs on past the step's end. Outside both steps: ignored.
        span("gemm", "kernel", 20, 30), span("softmax", "kernel", 40, 20),
        span("Memcpy HtoD (Pageable -> Device)", "gpu_memcpy", 70, 10),
        span("gemm", "kernel", 250, 80), span("gemm", "kernel", 120, 50),
        span("cudaStreamSynchronize", "cuda_runtime", 60, 5), span("cudaLaunchKernel", "cuda_runtime", 15, 1),
        span("cudaStreamSynchronize", "cuda_runtime", 150, 5),
    ]
    summary = profile.summarize_events(events)
    assert summary.steps == 2 and summary.step_ms == pytest.approx(0.1)
    assert summary.device_busy == pytest.approx((40 + 10 + 50) / 200)
    assert summary.phase_ms == pytest.approx({profile.DATA: 0.02, profile.FORWARD: 0.02})
    assert summary.syncs_per_step == 0.5
    assert summary.copies_per_step == {"Memcpy HtoD (Pageable -> Device)": 0.5}
    assert [(kernel.name, kernel.calls) for kernel in summary.top_kernels] == [("gemm", 2), ("softmax", 1)]
    assert summary.top_kernels[0].total_ms == pytest.approx(0.11)
    assert "GPU busy 50.0% of the step, host gaps 50.0%" in summary.describe()


def test_a_trace_without_steps_is_refused():
    with pytest.raises(ValueError, match=profile.STEP):
        profile.summarize_events([span(profile.DATA, "user_annotation", 0, 10)])


def test_the_profiler_traces_the_steps_asked_for_from_its_start_fraction_and_writes_a_summary(tmp_path):
    profiler = profile.StepProfiler(tmp_path, steps=2, start_fraction=0.5, device=Device.CPU)
    layer = torch.nn.Linear(8, 8)
    for fraction in (0.0, 0.25, 0.5, 0.75, 0.9):
        profiler.step_started(fraction)
        with record_function(profile.FORWARD):
            layer(torch.randn(4, 8)).sum().backward()
        profiler.step_finished()
    out = tmp_path / profile.PROFILE_DIR
    summary = json.loads((out / profile.SUMMARY_JSON).read_text())
    assert summary["steps"] == 2 and summary["device_busy"] is None
    assert summary["phase_ms"][profile.FORWARD] > 0
    with gzip.open(out / profile.TRACE_FILE, "rt") as trace:
        assert any(event.get("name") == profile.STEP for event in json.load(trace)["traceEvents"])
    assert profile.summarize_trace(out / profile.TRACE_FILE).steps == 2
    assert "2 traced steps" in (out / profile.SUMMARY_FILE).read_text()
    # A resumed run does not trace again over the profile it has.
    again = profile.StepProfiler(tmp_path, steps=2, start_fraction=0.0, device=Device.CPU)
    again.step_started(0.9)
    assert again.profiler is None
