"""What only a CUDA device can show: event timing, NVML, fp16 scaling, cuDNN, compile, a real OOM.

Run on the GPU machine with ``pytest -m gpu -s`` (``-s`` shows the printed readings).
"""

from __future__ import annotations

import time

import pytest
import torch

from dstune.composition import compose, configure_process
from dstune.context import TuneContext
from dstune.gpu_monitor import GpuMonitor
from dstune.plugin_manager import plugin_manager
from dstune.workload_loader import select_workload

from .conftest import WORKLOADS, probed

OBSERVE = WORKLOADS / "observe.py"
pytestmark = pytest.mark.gpu


def test_cuda_trial_reports_event_timing_memory_and_nvml(trials):
    outcome, facts = trials.run(OBSERVE, "observe")
    print("\ncuda trial metrics:", {k: v for k, v in outcome.metrics.items() if k != "window_step_times_s"})
    assert outcome.status == "ok", outcome.error
    assert facts["device"].startswith("cuda")
    m = outcome.metrics
    assert m["samples_per_s"] > 0 and m["step_time_median_s"] > 0
    assert 0 < m["peak_allocated"] <= m["peak_reserved"] == m["peak_memory_bytes"]
    assert m["gpu_util_mean"] is not None and m["nvml_memory_used_max"] > 0
    assert m["energy_per_sample_j"] > 0, m


def test_nvml_monitor_reads_utilisation_and_energy():
    x = torch.randn(8192, 8192, device="cuda")
    monitor = GpuMonitor(0)
    monitor.start()
    deadline = time.perf_counter() + 1.5
    while time.perf_counter() < deadline:
        x = (x @ x).clamp_(-1, 1)
    torch.cuda.synchronize()
    readings = monitor.stop()
    print("\nnvml readings under matmul load:", readings)
    assert readings["gpu_util_mean"] > 50
    assert readings["energy_j"] > 0 and readings["power_mean_w"] > 50


@pytest.mark.parametrize("precision,dtype", [("bf16", "torch.bfloat16"), ("fp16", "torch.float16")])
def test_autocast_precisions_on_cuda(trials, precision, dtype):
    outcome, facts = trials.run(OBSERVE, "observe", precision=precision)
    assert outcome.status == "ok", outcome.error
    assert facts["output_dtype"] == dtype and facts["autocast_cuda"] is True


def test_tf32_sets_matmul_precision(trials):
    outcome, facts = trials.run(OBSERVE, "observe", precision="tf32")
    assert outcome.status == "ok", outcome.error
    assert facts["matmul_precision"] == "high" and facts["output_dtype"] == "torch.float32"


def test_fp16_training_uses_a_grad_scaler():
    ctx = TuneContext.from_dict(probed(OBSERVE, "observe")["ctx"])
    pm = plugin_manager().pm
    config = {"precision": "fp16", "batch_size": 8}
    configure_process(pm, config, ctx)
    composed = compose(pm, select_workload(OBSERVE, "observe"), config, ctx)
    assert isinstance(composed.scaler, torch.amp.GradScaler) and composed.scaler.is_enabled()
    for _ in range(3):
        loss = composed.step()
    assert torch.isfinite(loss) and composed.scaler.get_scale() > 0
    print("\nfp16 scaler scale after 3 steps:", composed.scaler.get_scale())


@pytest.mark.parametrize("value", [True, False])
def test_cudnn_benchmark_flag_in_trial(trials, value):
    outcome, facts = trials.run(OBSERVE, "observe_conv", cudnn_benchmark=value)
    assert outcome.status == "ok", outcome.error
    assert facts["cudnn_benchmark"] is value


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compile_on_cuda(trials, mode):
    outcome, facts = trials.run(OBSERVE, "observe", timeout_s=400, compile=mode)
    print(f"\ncompile={mode}: first step {outcome.metrics.get('first_step_s')} s, "
          f"median step {outcome.metrics.get('step_time_median_s')} s")
    assert outcome.status == "ok", (outcome.error, outcome.stderr_tail)
    assert facts["model_type"] == "OptimizedModule"
    assert outcome.metrics["first_step_s"] > 5 * outcome.metrics["step_time_median_s"]


def test_real_cuda_oom_is_classified(trials):
    outcome, _ = trials.run(WORKLOADS / "gpu_oom.py", "gpu_oom")
    print("\noom trial:", outcome.status, (outcome.error or "")[:200])
    assert outcome.status == "oom"
