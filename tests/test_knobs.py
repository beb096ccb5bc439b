"""The knobs beyond the first six take effect in the trial process (observed there), and refuse what cannot run."""

from __future__ import annotations

import optuna
import pytest
import torch

from dstune.context import TuneContext
from dstune.plugin_calls import applicable_knobs
from dstune.plugin_manager import plugin_manager
from dstune.plugins.cuda_allocator import alloc_conf
from dstune.plugins.sdpa import uses_sdpa
from dstune.run.search import SearchSpace
from dstune.trial.composition import compose, configure_process
from dstune.trial.workload_file import select_workload

from .conftest import WORKLOADS

OBSERVE = WORKLOADS / "observe.py"


def _knobs(trials, workload: str) -> dict:
    return _knobs_in(trials.context(OBSERVE, workload))


def _knobs_in(ctx: TuneContext) -> dict:
    return {k.name: k for k in applicable_knobs(plugin_manager().pm, ctx)}


def _reasons(config: dict, ctx: TuneContext) -> list[str]:
    return [r for r in plugin_manager().pm.hook.dstune_validate(config=config, ctx=ctx) if r]


@pytest.mark.parametrize("value", ["high", "medium"])
def test_matmul_precision_is_set(trials, value):
    outcome, facts = trials.run(OBSERVE, "observe", matmul_precision=value)
    assert outcome.status == "ok", outcome.error
    assert facts["matmul_precision"] == value and facts["output_dtype"] == "torch.float32"


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_memory_format_converts_convolutional_models(trials, layout):
    assert _knobs(trials, "observe_conv")["memory_format"].checklist == "channels_last"
    assert "memory_format" not in _knobs(trials, "observe")  # no convolution: nothing to convert
    outcome, facts = trials.run(OBSERVE, "observe_conv", memory_format=layout)
    assert outcome.status == "ok", outcome.error
    assert facts["conv_channels_last"] is (layout == "channels_last")


@pytest.mark.parametrize("impl, fused, foreach", [("fused", True, None), ("foreach", None, True),
                                                  ("for-loop", None, False), ("default", None, None)])
def test_optimizer_implementation_reaches_the_optimizer(trials, impl, fused, foreach):
    knob = _knobs(trials, "observe")["optimizer_impl"]
    assert knob.choices == ("default", "foreach", "for-loop", "fused") and knob.checklist == "fused"
    outcome, facts = trials.run(OBSERVE, "observe", optimizer_impl=impl)
    assert outcome.status == "ok", outcome.error
    assert (facts["optimizer_fused"] or None, facts["optimizer_foreach"]) == (fused, foreach)


def test_optimizer_knob_is_left_out_when_the_factory_takes_no_keywords(trials):
    from dstune.plugins.optimizer_impl import dstune_model_facts

    class Plain:
        optimizer = staticmethod(lambda params: torch.optim.SGD(params, lr=0.1))

    ctx = trials.context(OBSERVE, "observe")
    facts = dstune_model_facts(torch.nn.Linear(2, 2), Plain(), ctx)
    assert facts["optimizer.accepts"] == []
    assert "optimizer_impl" not in {k.name for k in applicable_knobs(plugin_manager().pm,
                                                                     ctx.with_updates(facts=facts))}


def test_data_loader_knobs_configure_the_loader(trials):
    ctx = trials.context(OBSERVE, "observe_data")
    knobs = _knobs(trials, "observe_data")
    assert {"loader_workers", "prefetch_factor", "persistent_workers"} <= set(knobs)
    assert "pin_memory" not in knobs  # CUDA only
    assert "loader_workers" not in _knobs(trials, "observe")  # batch= workloads have no loader
    pm = plugin_manager().pm
    config = {"loader_workers": 2, "prefetch_factor": 4, "persistent_workers": True, "batch_size": 8}
    composed = compose(pm, select_workload(OBSERVE, "observe_data"), config, ctx)
    loader = composed.data_loader
    assert (loader.num_workers, loader.prefetch_factor, loader.persistent_workers) == (2, 4, True)
    assert _reasons({"loader_workers": 0, "persistent_workers": True}, ctx) == [
        "persistent_workers=True needs loader_workers > 0"]
    assert _reasons({"loader_workers": 0, "prefetch_factor": 8}, ctx) == ["prefetch_factor=8 needs loader_workers > 0"]


@pytest.mark.parametrize("persistent", [False, True])
def test_loader_workers_make_the_samples_and_persist_across_epochs(trials, tmp_path, monkeypatch, persistent):
    pids = tmp_path / "pids.txt"
    monkeypatch.setenv("DSTUNE_OBSERVE_PIDS", str(pids))
    outcome, _ = trials.run(OBSERVE, "observe_data", loader_workers=2, persistent_workers=persistent)
    assert outcome.status == "ok", outcome.error
    seen = pids.read_text().split()
    assert len(seen) > 2 * 64  # more than two epochs of 64 samples
    # Two workers make every sample; without persistence each epoch starts two new ones.
    assert len(set(seen)) == 2 if persistent else len(set(seen)) > 2


def test_conditional_knobs_are_searched_only_where_they_mean_something(trials):
    knobs = tuple(_knobs(trials, "observe_data").values())
    space = SearchSpace(knobs)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    configs = [space.config_from_trial(study.ask()) for _ in range(60)]
    ctx = trials.context(OBSERVE, "observe_data")
    assert not [c for c in configs if _reasons(c, ctx)]  # nothing refused: no wasted trials
    without = [c for c in configs if c["loader_workers"] == 0]
    assert without and all(c["prefetch_factor"] == 2 and c["persistent_workers"] is False for c in without)
    assert {c["prefetch_factor"] for c in configs if c["loader_workers"]} == {2, 4, 8}
    assert all(c["compile_dynamic"] == "auto" for c in configs if c["compile"] == "off")


@pytest.mark.parametrize("setting, extra_runs", [(False, 0), ("every_other", 2), (True, 3)])
def test_checkpointing_variants_recompute_the_chosen_blocks(trials, setting, extra_runs):
    assert _knobs(trials, "observe")["activation_checkpointing"].choices == (False, "every_other", True)
    outcome, facts = trials.run(OBSERVE, "observe", activation_checkpointing=setting)
    assert outcome.status == "ok", outcome.error
    losses = facts["loss_calls"]
    # Three blocks run per forward; each backward so far re-ran the checkpointed ones (the last has not run yet).
    assert facts["block_calls"] == 3 * losses + extra_runs * (losses - 1)


def test_compile_static_shapes_compiles_each_shape(trials):
    ctx = trials.context(OBSERVE, "observe_infer")
    pm = plugin_manager().pm
    assert _reasons({"compile": "off", "compile_dynamic": "static"}, ctx) == ["compile_dynamic=static needs compile on"]
    config = {"compile": "default", "compile_dynamic": "static", "batch_size": 8}
    configure_process(pm, config, ctx)
    composed = compose(pm, select_workload(OBSERVE, "observe_infer"), config, ctx)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with torch.inference_mode():
        for n in (2, 3, 4):
            composed.model(torch.randn(n, 32))
    # dynamic=False: three shapes, three graphs (automatic dynamic shapes would have made the third reuse the second).
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 3


def test_sdpa_knob_finds_attention_and_refuses_flash_in_fp32(trials):
    q = torch.randn(1, 2, 4, 8)
    assert uses_sdpa(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q))
    assert not uses_sdpa(lambda: torch.nn.Linear(8, 8)(q))
    cpu = trials.context(OBSERVE, "observe")
    assert "sdpa_backend" not in _knobs(trials, "observe")  # CUDA only
    cuda = cpu.with_updates(device="cuda", facts={**cpu.facts, "sdpa.used": True})
    assert _reasons({"sdpa_backend": "flash", "precision": "fp32"}, cuda) == [
        "sdpa_backend=flash needs precision bf16 or fp16"]
    assert not _reasons({"sdpa_backend": "flash", "precision": "bf16"}, cuda)


def test_a_cpu_without_bf16_instructions_keeps_fp32_in_its_checklist_and_bf16_among_its_choices(trials):
    """A small Mistral on this AVX2 host: its checklist's bf16 ran at 1.0 samples/s against the default's 30 (bf16
    in software), 97 s of a 3-minute budget.  The probe reports what the CPU computes in hardware."""
    import torch

    ctx = trials.context(OBSERVE, "observe")
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert ctx.facts["precision.cpu_bf16"] is native  # as the probe found it on this host
    for has, checklist in ((False, "fp32"), (True, "bf16")):
        knob = _knobs_in(ctx.with_updates(facts={**ctx.facts, "precision.cpu_bf16": has}))["precision"]
        assert (knob.checklist, knob.choices) == (checklist, ("fp32", "bf16"))
    # Without the probe's fact (`dstune plugins` builds no model) the plugin asks the CPU itself.
    assert _knobs_in(ctx.with_updates(facts={}))["precision"].checklist == ("bf16" if native else "fp32")
    # On a GPU with bf16 the CPU's instructions do not matter.
    gpu = ctx.with_updates(device="cuda", capability=(9, 0), bf16_supported=True,
                           facts={**ctx.facts, "precision.cpu_bf16": False})
    assert _knobs_in(gpu)["precision"].checklist == "bf16"


def test_allocator_settings_keep_what_the_user_set():
    assert alloc_conf({"expandable_segments": True, "gc_threshold": 0.8}) == (
        "expandable_segments:True,garbage_collection_threshold:0.8")
    assert alloc_conf({"expandable_segments": True, "gc_threshold": None}, "expandable_segments:False,"
                      "max_split_size_mb:128") == "expandable_segments:False,max_split_size_mb:128"


def test_the_loader_seed_gives_a_gpu_hosts_loader_every_core():
    from dstune.plugins.data_loader import dstune_knobs

    def seed(**facts):
        ctx = TuneContext(workload="w", has_dataset=True, **facts)
        return {k.name: k for k in dstune_knobs(ctx)}["loader_workers"].checklist

    assert seed(device="cuda", cpu_count=16) == 16
    assert seed(device="cuda", cpu_count=6) == 6
    assert seed(device="cpu", cpu_count=16) == 4  # on the CPU, workers take the model's cores
    assert seed(device="cpu", cpu_count=2) == 2


def test_a_loader_is_timed_over_whole_epochs_so_its_stalls_count(trials):
    """Each epoch starts new workers that stall 0.3 s; short windows between stalls must not be the figure."""
    import time

    from dstune.trial.measure import measure
    from dstune.trial.measure_settings import MeasureSettings

    ctx = trials.context(OBSERVE, "stalling_data")
    pm = plugin_manager().pm
    config = {"loader_workers": 2, "prefetch_factor": 2, "persistent_workers": False, "batch_size": 8}
    composed = compose(pm, select_workload(OBSERVE, "stalling_data"), config, ctx)
    epoch = len(composed.data_loader)
    assert epoch == 32
    measured, truths = [], []
    for _ in range(2):  # interleaved, best of two each: a busy machine only ever slows one of them down
        metrics = measure(composed, MeasureSettings(windows=5, window_s=0.01, min_warmup_steps=1))
        assert metrics["windows"] * metrics["steps_per_window"] >= 2 * epoch
        assert metrics["warmup_steps"] > 2 * 2  # the batches both workers prepared during the first step
        assert metrics["throughput_basis"] == "mean"
        measured.append(metrics["samples_per_s"])
        started = time.perf_counter()  # what training three epochs takes, by the wall clock
        for _ in range(3 * epoch):
            composed.step()
        truths.append(3 * epoch * 8 / (time.perf_counter() - started))
    assert 0.6 < max(measured) / max(truths) < 1.6, (measured, truths)


def test_a_loaders_windows_each_time_one_epoch_from_its_start_so_they_agree(trials):
    """Windows begun anywhere in an epoch hold its start (here new workers' 0.3 s stall) or not, and varied so much
    that the run warned of a busy machine; each window one whole epoch from its start holds one start apiece."""
    from dstune.run.windows import windows_message
    from dstune.trial.measure import epoch_windows, measure
    from dstune.trial.measure_settings import NOISY_CV, MeasureSettings

    ctx = trials.context(OBSERVE, "stalling_data")
    config = {"loader_workers": 2, "prefetch_factor": 2, "persistent_workers": False, "batch_size": 8}
    composed = compose(plugin_manager().pm, select_workload(OBSERVE, "stalling_data"), config, ctx)
    # Windows of 0.05 s are shorter than an epoch here (32 steps of about 3 ms, and the stall), as 16 workers' epochs
    # were on the H200; begun anywhere, two in three held a stall (cv 0.42-0.43, the figure 617-730 samples/s).
    quiet = 0
    for _ in range(4):  # a steady warm-up ends anywhere in an epoch; each measurement starts at the next one
        composed.step()
        metrics = measure(composed, MeasureSettings(min_warmup_steps=1, window_s=0.05))
        assert metrics["steps_per_epoch"] == metrics["steps_per_window"] == len(composed.data_loader) == 32
        assert metrics["windows"] >= 2 and composed.epoch.at_start  # whole epochs were timed, from a start
        quiet += metrics["step_time_cv"] < NOISY_CV and windows_message(metrics) is None
    # Nothing said of a busy machine; a busy one may still slow one window of one measurement (0.031 against
    # 0.018 s a step, cv 0.27, once with three test workers on two cores).
    assert quiet >= 3, quiet
    # An epoch too long to time twice within max_timed_s is timed as before, from wherever the warm-up ended.
    assert epoch_windows(MeasureSettings(), typical=0.1, steps_per_epoch=100) is None
    assert epoch_windows(MeasureSettings(), typical=0.1, steps_per_epoch=30) == (2, 30)
