"""Each built-in strategy takes effect inside the trial process (observed there, not assumed)."""

from __future__ import annotations

import pytest

from dstune.plugin_calls import applicable_knobs
from dstune.plugin_manager import plugin_manager

from .conftest import OTHER_THREADS, WORKLOADS

OBSERVE = WORKLOADS / "observe.py"


@pytest.mark.parametrize("precision,dtype,autocast", [("fp32", "torch.float32", False),
                                                       ("bf16", "torch.bfloat16", True)])
def test_precision_sets_autocast_dtype(trials, precision, dtype, autocast):
    outcome, facts = trials.run(OBSERVE, "observe", precision=precision)
    assert outcome.status == "ok", outcome.error
    assert facts["output_dtype"] == dtype and facts["autocast_cpu"] is autocast


def test_thread_counts_are_set(trials):
    # Not the trials' defaults (conftest.OTHER_THREADS), so a knob that did nothing would fail.
    outcome, facts = trials.run(OBSERVE, "observe", intra_op_threads=OTHER_THREADS, interop_threads=1)
    assert outcome.status == "ok", outcome.error
    assert facts["num_threads"] == OTHER_THREADS and facts["num_interop_threads"] == 1


@pytest.mark.parametrize("enabled", [False, True])
def test_activation_checkpointing_recomputes_blocks(trials, enabled):
    outcome, facts = trials.run(OBSERVE, "observe", activation_checkpointing=enabled)
    assert outcome.status == "ok", outcome.error
    losses = facts["loss_calls"]
    # Three blocks run once per forward; checkpointed, each earlier step ran them again in backward.
    expected = 3 * (2 * losses - 1) if enabled else 3 * losses
    assert facts["block_calls"] == expected


@pytest.mark.parametrize("micro,accumulation", [(4, 4), (16, 1)])
def test_batch_size_keeps_the_global_batch_with_accumulation(trials, micro, accumulation):
    outcome, facts = trials.run(OBSERVE, "observe_accum", batch_size=micro)
    assert outcome.status == "ok", outcome.error
    assert facts["batch_rows"] == micro
    assert outcome.metrics["accumulation"] == accumulation and outcome.metrics["samples_per_step"] == 16


def test_compile_produces_a_compiled_module(trials):
    outcome, facts = trials.run(OBSERVE, "observe", timeout_s=400, compile="default")
    assert outcome.status == "ok", (outcome.error, outcome.stderr_tail)
    assert facts["model_type"] == "OptimizedModule"
    assert outcome.metrics["first_step_s"] > outcome.metrics["step_time_median_s"]


def test_cuda_only_knobs_do_not_apply_on_cpu(trials):
    ctx = trials.context(OBSERVE, "observe")
    assert ctx.device == "cpu"
    pm = plugin_manager().pm
    names = {k.name: k for k in applicable_knobs(pm, ctx)}
    assert "cudnn_benchmark" not in names
    assert set(names["precision"].choices) == {"fp32", "bf16"}
    assert set(names["compile"].choices) == {"off", "default"}
    reasons = [r for r in pm.hook.dstune_validate(config={"cudnn_benchmark": True, "precision": "fp16"}, ctx=ctx) if r]
    assert any("cudnn_benchmark needs a CUDA device" in r for r in reasons)
    assert any("precision=fp16 is not supported" in r for r in reasons)


def test_inference_mode_times_forward_passes_with_latency_percentiles(trials):
    ctx = trials.context(OBSERVE, "observe_infer")
    names = {k.name for k in applicable_knobs(plugin_manager().pm, ctx)}
    assert ctx.mode == "inference" and "activation_checkpointing" not in names
    outcome, _ = trials.run(OBSERVE, "observe_infer", precision="bf16")
    assert outcome.status == "ok", (outcome.error, outcome.stderr_tail)
    m = outcome.metrics
    assert 0 < m["latency_p50_s"] <= m["latency_p99_s"] and m["samples_per_s"] > 0
    assert m["accumulation"] == 1 and m["samples_per_step"] == 8
