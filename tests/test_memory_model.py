"""The memory model: lines per variant, predictions, corrections, and a real run sized by it on the CPU."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

from dstune.knobs import BatchPlan, Knob
from dstune.run.memory_model import Line, MemoryModel, build, memory_labels, representatives

WORKLOADS = Path(__file__).resolve().parent / "workloads"
MiB = 2**20
GLOBAL = 64
HUNGRY_GLOBAL = 32  # tests/workloads/memory_hungry.py's global batch

KNOBS = [
    Knob("precision", ("fp32", "bf16", "fp16"), "fp32", "bf16", memory={"fp32": "fp32", "bf16": "16-bit",
                                                                          "fp16": "16-bit"}),
    Knob("ckpt", (False, True), False, False, memory={False: "off", True: "on"}),
    Knob("batch", (1, 2, 4, 8, 16, 32, 64), 4, 64),
    Knob("compile", ("off", "on"), "off", "on"),
]


def plan(config: dict) -> BatchPlan:
    return BatchPlan(config["batch"], GLOBAL // config["batch"])


def point(precision: str, ckpt: bool, micro: int, fixed: float, per_sample: float) -> dict:
    peak = fixed + per_sample * micro
    return {"config": {"precision": precision, "ckpt": ckpt, "batch": micro, "compile": "off"}, "micro_batch": micro,
            "allocated": {"first": peak, "later": peak + 10 * MiB, "update": fixed + 50 * MiB}, "reserved": peak}


def model(budget: int = 1000 * MiB) -> MemoryModel:
    points = []
    for precision, per_sample in (("fp32", 40 * MiB), ("bf16", 20 * MiB)):
        for ckpt, factor in ((False, 1.0), (True, 0.25)):
            points += [point(precision, ckpt, m, 200 * MiB, per_sample * factor) for m in (1, 2)]
    base = {"precision": "fp32", "ckpt": False, "batch": 4, "compile": "off"}
    return build(memory_labels(KNOBS), points, budget, plan, base, ("batch",))


def test_variants_are_the_labels_not_the_choices() -> None:
    changes = representatives(KNOBS)
    # bf16 and fp16 share a label: one measurement stands for both.
    assert changes == [{"precision": "fp32", "ckpt": False}, {"precision": "fp32", "ckpt": True},
                       {"precision": "bf16", "ckpt": False}, {"precision": "bf16", "ckpt": True}]


def test_a_line_through_two_points_never_falls() -> None:
    assert Line.through((1, 300.0), (2, 340.0)) == Line(260.0, 40.0)
    assert Line.through((2, 300.0), (1, 310.0)).per_sample == 0.0  # noise at tiny batches: flat, not falling


def test_the_line_over_many_points_lies_above_each_and_keeps_the_steepest_slope() -> None:
    """Peak RSS of memory_hungry on the CPU, measured in forked processes without glibc's threshold (MiB): the
    point at 32 fell below the one at 16.  A line through the last two would have had no slope at all (any
    micro-batch fits); the line above the points keeps the steepest slope seen, between 2 and 4."""
    rss = [(1, 339.0), (2, 445.0), (4, 667.0), (8, 1031.0), (16, 1831.0), (32, 1463.0)]
    line = Line.above(rss)
    assert line.per_sample == pytest.approx(111.0)
    assert all(line.at(x) >= y for x, y in rss)
    assert Line.above([(1, 300.0), (2, 340.0)]) == Line.through((1, 300.0), (2, 340.0))
    assert Line.above([(1, 300.0), (2, 290.0)]) == Line(300.0, 0.0)  # never falling, and never below a point


def test_predictions_follow_the_lines_and_refuse_what_exceeds_the_budget() -> None:
    m = model()
    fp32 = {"precision": "fp32", "ckpt": False, "compile": "off"}
    # 16 samples of 40 MiB over 200 MiB fixed, plus the held gradients of accumulation (the "later" part).
    assert m.predict({**fp32, "batch": 16}) == 200 * MiB + 16 * 40 * MiB + 10 * MiB
    assert m.predict({**fp32, "batch": 64}) == 200 * MiB + 64 * 40 * MiB  # no accumulation: the first part
    assert m.exceeds({**fp32, "batch": 16}) is None
    reason = m.exceeds({**fp32, "batch": 32})
    assert reason.startswith("predicted: micro-batch 32 with fp32, off would peak at 1.5 GiB, over the memory "
                             "budget of 1000.0 MiB")
    # fp16 shares bf16's measurement; checkpointing a quarter of the activations fits all 64.
    assert m.exceeds({**fp32, "precision": "fp16", "batch": 32}) is None
    assert m.exceeds({**fp32, "ckpt": True, "batch": 64}) is None
    halve = lambda c: {**c, "batch": c["batch"] // 2} if c["batch"] > 1 else None  # noqa: E731
    assert m.fit({**fp32, "batch": 64}, halve)["batch"] == 16
    assert m.fit({**fp32, "precision": "bf16", "batch": 64}, halve)["batch"] == 32


def test_an_out_of_memory_trial_caps_its_variant() -> None:
    m = model()
    config = {"precision": "bf16", "ckpt": False, "compile": "off", "batch": 32}
    assert m.exceeds(config) is None
    said = m.observe(config, "oom", {})
    assert "micro-batch 32 with 16-bit, off ran out of memory" in said
    assert m.exceeds(config).startswith("predicted: micro-batch 32 with 16-bit, off needs more memory than")
    assert m.exceeds({**config, "batch": 16}) is None  # smaller ones still fit
    assert m.exceeds({**config, "precision": "fp32", "batch": 8}) is None  # another variant: untouched
    assert m.observe(config, "oom", {}) is None  # nothing new


def test_peaks_above_the_prediction_raise_it_and_other_knobs_learn_their_effect() -> None:
    m = model()
    eager = {"precision": "fp32", "ckpt": False, "compile": "off", "batch": 8}
    predicted = m.predict(eager)
    assert m.observe(eager, "ok", {"peak_memory_bytes": predicted * 1.02}) is None  # within noise
    said = m.observe(eager, "ok", {"peak_memory_bytes": predicted * 1.2})
    assert "are raised 1.20x" in said and m.predict(eager) == pytest.approx(predicted * 1.2, rel=1e-6)
    # Compile is outside the variants: its first trial tells what it does, for every variant.
    compiled = {**eager, "compile": "on", "precision": "bf16"}
    before = m.predict(compiled)
    said = m.observe(compiled, "ok", {"peak_memory_bytes": before * 0.7})
    assert said.startswith("compile=on change(s) the peak 0.70x")
    assert m.predict({**compiled, "batch": 16}) == pytest.approx(0.7 * m.predict({**eager, "precision": "bf16",
                                                                                   "batch": 16}), rel=1e-6)
    restored = MemoryModel.from_dict(json.loads(json.dumps(m.to_dict())), plan)
    assert restored.predict({**compiled, "batch": 16}) == m.predict({**compiled, "batch": 16})


def test_the_probes_cache_ratio_is_the_median_over_its_variants() -> None:
    """GPT-2 on the H200: at micro-batch 2 one variant's reserved bytes were 1.12x its live ones, the others about
    1.06x, and full-size trials saw 1.01-1.08x; the largest overstated the first trial's peak by 19%."""
    points = []
    for (precision, ckpt), ratio in zip((("fp32", False), ("bf16", False), ("fp32", True), ("bf16", True)),
                                        (1.06, 1.07, 1.12, 1.05)):
        for micro in (1, 2):
            found = point(precision, ckpt, micro, 200 * MiB, 40 * MiB)
            points.append({**found, "reserved": max(found["allocated"].values()) * ratio})
    m = build(memory_labels(KNOBS), points, 1000 * MiB, plan, {"compile": "off"}, ("batch",))
    assert m.reserve_ratio == pytest.approx(1.065)
    assert model().reserve_ratio == 1.0  # reserved below the allocated peak (the CPU's RSS) never shrinks it


def test_the_allocators_cache_is_learned_from_full_size_trials() -> None:
    m = model()
    m.reserve_ratio = 1.08  # what tiny probe batches showed
    config = {"precision": "fp32", "ckpt": False, "compile": "off", "batch": 8}
    allocated = m.predict(config) / 1.08
    m.observe(config, "ok", {"peak_allocated": allocated, "peak_reserved": allocated * 1.03,
                             "peak_memory_bytes": allocated * 1.03})
    assert m.reserve_ratio == pytest.approx(1.03) and m.predict(config) == pytest.approx(allocated * 1.03, rel=1e-6)
    m.observe(config, "oom", {"peak_allocated": 1, "peak_reserved": 100})  # a failed trial's peak says nothing
    assert m.reserve_ratio == pytest.approx(1.03)


GiB = 2**30
# llama_1b with every block checkpointed, bf16, TF32 and fused AdamW, as the memory probe measured it on an H200
# (2026-12-03, benchmarks/results/2026-12-03-h200-llama_1b-memory-points-every-block.json), in GiB per part; and the
# full trials' allocated peaks: 39.22 at micro-batch 16 (two accumulated), 51.98 at 32 (none).
EVERY_BLOCK = {1: (20.39, 23.83, 20.37), 2: (20.58, 24.82, 20.35), 4: (21.80, 26.86, 20.31),
               8: (25.91, 30.95, 20.24), 16: (34.20, 39.21, 20.18), 32: (51.98, 57.00, 20.18)}
LLAMA_SIZES = [1, 2, 4, 8, 16, 32]


def every_block(*micro: int) -> list[dict]:
    return [{"config": {"precision": "bf16", "ckpt": True, "batch": m, "compile": "off"}, "micro_batch": m,
             "allocated": dict(zip(("first", "later", "update"), (g * GiB for g in EVERY_BLOCK[m]))),
             "reserved": EVERY_BLOCK[m][1] * GiB * 1.05} for m in micro]


def llama_plan(config: dict) -> BatchPlan:
    return BatchPlan(config["batch"], 32 // config["batch"])


def test_a_peak_that_bends_with_the_micro_batch_is_measured_until_its_line_settles() -> None:
    """The line through micro-batches 1 and 2 predicted 26.4 GiB at 32 for a step that peaked at 52.0: at tiny
    batches the moment with every gradient held binds, at large ones the one with the logits.  A third point
    shows the bend; the next micro-batch is measured while the last two lines disagree where the prediction is
    used.  The line takes the steepest slope between neighbouring points, raised to the highest of them."""
    labels, budget = memory_labels(KNOBS), 125 * GiB

    def fitted(*micro: int) -> MemoryModel:
        return build(labels, every_block(*micro), budget, llama_plan, {"compile": "off"}, ("batch",))

    variant = lambda m: next(iter(m.variants.values()))  # noqa: E731
    at_32 = {"precision": "bf16", "ckpt": True, "compile": "off", "batch": 32}
    assert variant(fitted(1, 2)).next_size(budget, LLAMA_SIZES) is None  # two points cannot show a bend
    assert fitted(1, 2).predict(at_32) == pytest.approx(26.39 * GiB * 1.05, rel=0.01)  # half of what it needs
    assert variant(fitted(1, 2, 4)).next_size(budget, LLAMA_SIZES) == 8
    assert variant(fitted(1, 2, 4, 8)).next_size(budget, LLAMA_SIZES) == 16
    settled = fitted(1, 2, 4, 8, 16)
    assert variant(settled).next_size(budget, LLAMA_SIZES) is None  # the lines through 4-8 and 8-16 agree at 32
    assert settled.predict(at_32) / 1.05 == pytest.approx(51.98 * GiB, rel=0.03)  # the trial's allocated peak
    assert settled.predict({**at_32, "batch": 16}) / 1.05 == pytest.approx(39.22 * GiB, rel=0.01)
    # A next point the last line puts near the budget, or at a micro-batch that ran out of memory, is not measured.
    # The line through 2 and 4 puts micro-batch 8 at 30.9 GiB: with 25% headroom that needs 38.6 GiB of budget.
    assert variant(fitted(1, 2, 4)).next_size(36 * GiB, LLAMA_SIZES) is None
    assert variant(fitted(1, 2, 4)).next_size(40 * GiB, LLAMA_SIZES) == 8
    capped = fitted(1, 2, 4)
    variant(capped).ceiling = 8
    assert variant(capped).next_size(budget, LLAMA_SIZES) is None
    # A straight line needs no further point.
    straight = [point("fp32", False, m, 200 * MiB, 40 * MiB) for m in (1, 2, 4)]
    line = build(labels, straight, 10_000 * MiB, plan, {"compile": "off"}, ("batch",))
    assert next(iter(line.variants.values())).next_size(10_000 * MiB, [1, 2, 4, 8, 16, 32, 64]) is None


@pytest.mark.slow
def test_a_run_sizes_its_seeds_by_the_model_and_never_runs_what_would_not_fit(tmp_path: Path) -> None:
    """A real run on a workload whose memory is known (about 38 MiB per sample, tests/workloads/memory_hungry.py).

    glibc is told to return every large block at once (MALLOC_MMAP_THRESHOLD_), so the process's peak RSS,
    which is what the CPU measures, is the tensors' peak, as the allocator's is on a GPU.
    """
    db = tmp_path / "dstune.db"
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "DSTUNE_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "dstune", "run", str(WORKLOADS / "memory_hungry.py"), "--db", str(db),
         "--memory-budget", "720MiB", "--budget", "3m", "--trials", "5", "--check-repeats", "2",
         "--windows", "2", "--window-time", "0.2", "--max-warmup", "5",
         "--exclude", "compile,intra_op_threads,interop_threads,matmul_precision,optimizer_impl",
         # The sampler's first proposal after the two seeds is its random start-up's, a function of the seed
         # alone: with seed 15 it is micro-batch 32 without checkpointing in fp32 (about 1.4 GiB whatever this
         # host's own RSS), so a refusal is certain.  Seed 3's was micro-batch 1, and whether its TPE proposals
         # crossed the budget depended on what the trials measured (a clean-clone CI run refused none).  The
         # local search steps one micro-batch at a time, and whether it crosses depends on which measured faster.
         "--search", "sampler", "--seed", "15", "--no-numerics-guard"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    out = " ".join(result.stdout.split())  # rich wraps lines at the terminal's width
    assert "[memory] measuring 2 variant(s) at micro-batches 1, 2 and 4; the 4 that save memory only if it is tight" \
        in out
    assert "of the memory budget: measuring the 4 variant(s) that save memory" in out  # 32 x 40 MiB in 720 MiB
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select seed_kind, status, config, peak_memory_bytes, metrics, error, duration_s "
                            "from dstune_trials order by number").fetchall()
        study, recorded = conn.execute("select study_name, memory_model from dstune_iterations").fetchone()
    trials = [dict(zip(("seed", "status", "config", "peak", "metrics", "error", "duration"), r)) for r in rows]
    assert not [t for t in trials if t["status"] == "oom"], "the model let a configuration run out of memory"
    # The checklist (no checkpointing; bf16 only on a CPU with its instructions) starts at the largest micro-batch
    # its line fits in 720 MiB: how large depends on what the process itself holds on this host (torch's own RSS,
    # 246 MiB here), so it is read from the model.  720 MiB fits 8 for an RSS up to about 400 MiB: at 600 MiB a
    # CI host's fp32 checklist fitted only 4, the default's micro-batch, and was the default itself.
    # The sampler's first proposal (micro-batch 32 with seed 15) is then refused before it starts.
    checklist = json.loads(next(t for t in trials if t["seed"] == "checklist")["config"])
    memory = MemoryModel.from_dict(json.loads(recorded),
                                   lambda c: BatchPlan(c["batch_size"], HUNGRY_GLOBAL // c["batch_size"]))
    fitting = [b for b in (1, 2, 4, 8, 16, 32) if memory.predict({**checklist, "batch_size": b}) <= 720 * MiB]
    assert 4 <= checklist["batch_size"] == max(fitting) < HUNGRY_GLOBAL
    assert f"[memory] the checklist seed starts at batch_size={checklist['batch_size']}, the largest predicted to fit" in out
    ran = [t for t in trials if t["status"] == "ok"]
    assert len(ran) >= 4
    for t in ran:
        predicted = json.loads(t["metrics"])["predicted_peak_bytes"]
        assert abs(predicted - t["peak"]) <= 0.10 * t["peak"], (t["config"], predicted, t["peak"])
    refused = [t for t in trials if t["status"] == "predicted_oom"]
    assert refused, out
    for t in refused:
        assert t["error"].startswith("predicted: micro-batch") and "over the memory budget of 720.0 MiB" in t["error"]
        assert t["duration"] is None  # never started
        assert json.loads(t["metrics"])["predicted_peak_bytes"] > 720 * MiB
    assert "[memory] not run: micro-batch" in out
    optuna_trials = optuna.load_study(study_name=study, storage=f"sqlite:///{db}").trials
    told = [t for t in optuna_trials if t.user_attrs.get("dstune_infeasible") == "predicted"]
    # Each refused configuration is told to Optuna as infeasible; the sampler may propose one again, and is told
    # again (with no second row), so the configurations agree, not the counts.
    refused_sizes = {json.loads(t["config"])["batch_size"] for t in refused}
    assert len(told) >= len(refused) and {t.params["batch_size"] for t in told} == refused_sizes
    assert 32 in refused_sizes  # the first proposal, whatever the trials measured
    assert all(t.constraints["memory_over_budget"] > 0 for t in told)  # infeasible for the sampler, by memory


def test_a_memory_budget_below_the_smallest_micro_batch_is_refused_before_any_trial(tmp_path: Path) -> None:
    db = tmp_path / "dstune.db"
    result = subprocess.run(
        [sys.executable, "-m", "dstune", "run", str(WORKLOADS / "paced.py"), "--db", str(db), "--memory-budget",
         "1KiB", "--budget", "1m"], capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 2, result.stdout + result.stderr
    error = " ".join(result.stderr.split())
    assert "--memory-budget 1KiB (1.0 KiB) is below what workload 'paced' needs at its smallest:" in error
    assert "Give a budget above that, or leave --memory-budget out" in error
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from dstune_iterations").fetchone() == (0,)


@pytest.mark.parametrize("budget_mib, measured", [(20480, 2), (600, 6)])
def test_variants_that_save_memory_are_measured_only_when_memory_is_tight(budget_mib: int, measured: int) -> None:
    """GPT-2 on the H200 spent 41 s of its probe on six variants, four checkpointed, at 38% of its budget: with
    room to spare the search never proposes checkpointing, so its variants are not measured. memory_hungry's
    largest micro-batch (32, about 1.2 GiB) is roomy in 20 GiB and tight in 600 MiB."""
    from dstune.context import TuneContext
    from dstune.plugin_calls import applicable_knobs, invalid_reason
    from dstune.plugin_manager import plugin_manager
    from dstune.run.memory_plan import measure_model
    from dstune.run.options import RunOptions

    from .conftest import probed

    file = WORKLOADS / "memory_hungry.py"
    info = probed(file, "memory_hungry")
    ctx = TuneContext.from_dict(info["ctx"])
    pm = plugin_manager().pm
    knobs = [k for k in applicable_knobs(pm, ctx) if k.name in ("precision", "activation_checkpointing", "batch_size")]
    said: list[str] = []
    env = {"MALLOC_MMAP_THRESHOLD_": "65536"}
    memory = measure_model(RunOptions(workload_file=file, workload_name="memory_hungry", budget_s=120.0), ctx,
                           info["ctx"], knobs, pm, budget_mib * MiB, env, lambda c: invalid_reason(pm, c, ctx),
                           said.append)
    text = " ".join(said)
    assert memory is not None, text
    assert "[memory] measuring 2 variant(s) at micro-batches 1, 2 and 4; the 4 that save memory only if it is tight" \
        in text
    assert len([v for v in memory.variants.values() if v.lines]) == measured, text
    if measured == 2:
        assert "variant(s) that save memory are not measured" in text
        assert memory.predict({"precision": "fp32", "activation_checkpointing": True, "batch_size": 32}) is None
    else:
        assert "measuring the 4 variant(s) that save memory" in text
        assert memory.predict({"precision": "fp32", "activation_checkpointing": True, "batch_size": 32}) is not None


def test_a_probe_cut_off_at_its_time_keeps_the_points_it_measured() -> None:
    """A 336M-parameter Qwen2 on an H200 spent 80 s of a 4-minute run on its probe and got nothing: the variants
    that save memory ran out of the probe's time, and the points measured before them were dropped with them.
    Here micro-batch 4 never finishes: in one process (as on a GPU) the points before it come back with the
    timeout, and the model is fitted from them and says it was measured only in part.  On the CPU each point
    has a process of its own; on a GPU (``tests/test_gpu.py``) the model's points share one."""
    cut_off_probe()


def cut_off_probe() -> Any:
    """The checks of the test above, on the device this machine's trials use; returns the workload's context."""
    from dstune.context import TuneContext
    from dstune.plugin_calls import applicable_knobs, invalid_reason
    from dstune.plugin_manager import plugin_manager
    from dstune.run.memory_plan import measure_model
    from dstune.run.options import RunOptions
    from dstune.trial.launch import run_in_subprocess
    from dstune.trial.records import MEMORY, TrialSpec

    from .conftest import probed

    file = WORKLOADS / "slow_when_large.py"
    info = probed(file, "slow_when_large")
    ctx = TuneContext.from_dict(info["ctx"])
    pm = plugin_manager().pm
    knobs = [k for k in applicable_knobs(pm, ctx) if k.name in ("precision", "batch_size")]
    sizes = [{"precision": "fp32", "batch_size": n} for n in (1, 2, 4)]
    spec = TrialSpec(kind=MEMORY, workload_file=str(file), workload_name="slow_when_large", ctx=info["ctx"],
                     variants=sizes)
    outcome = run_in_subprocess(spec, timeout_s=12.0)
    assert outcome.status == "timeout", outcome
    assert [p["micro_batch"] for p in outcome.payload["points"]] == [1, 2]
    assert all(p["allocated"] and "oom" not in p for p in outcome.payload["points"])

    said: list[str] = []
    memory = measure_model(RunOptions(workload_file=file, workload_name="slow_when_large", budget_s=24.0), ctx,
                           info["ctx"], knobs, pm, 1 << 30, {}, lambda c: invalid_reason(pm, c, ctx), said.append)
    text = " ".join(said)
    assert memory is not None, text
    assert "[warning] the memory model was measured only in part (it ran out of its time): 2 of 6 points" in text
    assert memory.predict({"precision": "fp32", "batch_size": 2}) is not None
    assert memory.predict({"precision": "bf16", "batch_size": 2}) is None  # not reached: no prediction, no refusal
    assert memory.exceeds({"precision": "bf16", "batch_size": 8}) is None
    assert "could not be measured" not in text
    return ctx
