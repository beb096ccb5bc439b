"""The benchmark harness on the CPU: arms, the oracle cache, the side-by-side rounds and the table.

The batch finders and the checklist's batch search look for out-of-memory
errors, which only a GPU gives, and the dstune arm is a whole ``dstune run``
(minutes); they ran on the H100 (benchmarks/results).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.harness.oracle import best_point, cache_mismatch, implied_oom, measuring_order, set_aside
from benchmarks.harness.registry import WORKLOADS
from benchmarks.harness.report import markdown, targets
from dstune.trial.measure_settings import MeasureSettings

pytestmark = pytest.mark.slow  # end to end: real runs in subprocesses (`-m "not slow"` leaves them out)

REPO = Path(__file__).resolve().parents[1]


def _harness(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    # Short windows: what is tested is the harness's bookkeeping, not the figures.
    extra = ["--max-warmup", "3", "--windows", "3", "--window-time", "0.1"] if args[0] in ("run", "oracle") else []
    return subprocess.run([sys.executable, "-m", "benchmarks.harness", *args, *extra], cwd=cwd, capture_output=True,
                          text=True, timeout=600, check=False)


def test_harness_measures_each_arm_side_by_side_and_reuses_the_oracle_cache(tmp_path: Path) -> None:
    results, work = tmp_path / "results", tmp_path / "work"
    first = _harness("run", "examples/quickstart.py", "--arms", "default,oracle", "--rounds", "2",
                     "--grid", "batch_size=64,128",
                     "--results", str(results), "--out", str(work), "--tag", "cpu-test")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    [written] = results.glob("*-cpu-test-quickstart-bench.json")
    result = json.loads(written.read_text())
    names = [a["name"] for a in result["arms"]]
    assert names == ["default", "oracle"]
    oracle = json.loads((results / "oracle-quickstart-cpu.json").read_text())
    assert [p["config"]["batch_size"] for p in oracle["points"]] == [64, 128]
    best = max(oracle["points"], key=lambda p: p["metrics"]["samples_per_s"])
    assert result["arms"][1]["config"] == best["config"]
    for name in names:  # every arm measured in each round, with its ratio to the default
        figure = result["figures"][name]
        assert figure["ok_rounds"] == 2 and len(figure["samples_per_s"]) == 2
    assert result["figures"]["default"]["samples_per_s_median"] > 0
    assert "| oracle |" in result["table"] and "dstune / oracle" in result["table"]

    again = _harness("run", "examples/quickstart.py", "--arms", "oracle", "--rounds", "1",
                     "--grid", "batch_size=64,128", "--results", str(results), "--out", str(tmp_path / "work2"),
                     "--tag", "cpu-test2")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "oracle: reusing oracle-quickstart-cpu.json" in again.stdout
    [second] = results.glob("*-cpu-test2-quickstart-bench.json")
    assert json.loads(second.read_text())["oracle"]["source"] == "cache"

    wider = _harness("run", "examples/quickstart.py", "--arms", "oracle", "--rounds", "1",
                     "--grid", "batch_size=32,64,128", "--results", str(results), "--out", str(tmp_path / "work3"),
                     "--tag", "cpu-test3")
    assert wider.returncode == 0, wider.stdout[-3000:] + wider.stderr[-3000:]
    assert "reusing the 2 points both share" in wider.stdout and "oracle: point 1/3" in wider.stdout
    assert "point 2/3" not in wider.stdout and "point 3/3" not in wider.stdout
    grown = json.loads((results / "oracle-quickstart-cpu.json").read_text())
    assert [p["config"]["batch_size"] for p in grown["points"]] == [32, 64, 128]
    assert grown["points"][1:] == oracle["points"] and grown["reused_points"] == 2 and grown["complete"] is True

    # A call's time limit cut the grid after its first point: the cache says so, and the next run goes on.
    (results / "oracle-quickstart-cpu.json").write_text(json.dumps({**grown, "complete": False,
                                                                     "points": grown["points"][:1]}))
    resumed = _harness("run", "examples/quickstart.py", "--arms", "oracle", "--rounds", "1",
                       "--grid", "batch_size=32,64,128", "--results", str(results), "--out", str(tmp_path / "work4"),
                       "--tag", "cpu-test4")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "was cut short; reusing the 1 points both share" in resumed.stdout
    assert "point 1/3" not in resumed.stdout and "point 2/3" in resumed.stdout and "point 3/3" in resumed.stdout
    finished = json.loads((results / "oracle-quickstart-cpu.json").read_text())
    assert finished["complete"] is True and [p["config"]["batch_size"] for p in finished["points"]] == [32, 64, 128]

    table = _harness("table", str(written))
    assert table.returncode == 0 and "| default |" in table.stdout


def test_the_oracle_alone_stops_starting_points_after_its_time_and_goes_on_in_the_next_call(tmp_path: Path) -> None:
    """``oracle --stop-after S``: a grid longer than a device call keeps what it measured, starts no point past S
    (a point cut by the call's limit would be lost), and the next call measures only the rest."""
    results, grid = tmp_path / "results", ("--grid", "batch_size=32,64")
    cut = _harness("oracle", "examples/quickstart.py", *grid, "--results", str(results), "--out", str(tmp_path / "w"),
                   "--stop-after", "0")
    assert cut.returncode == 0, cut.stdout[-3000:] + cut.stderr[-3000:]
    assert "stopping after 0 s with 2 of 2 points not measured" in cut.stdout
    assert "0 points, complete: False" in cut.stdout
    cache = results / "oracle-quickstart-cpu.json"
    assert json.loads(cache.read_text())["complete"] is False
    # A first point, as a call cut after it would leave the cache.
    whole = _harness("oracle", "examples/quickstart.py", "--grid", "batch_size=32", "--results", str(results),
                     "--out", str(tmp_path / "w"))
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]
    cache.write_text(json.dumps({**json.loads(cache.read_text()), "complete": False}))
    rest = _harness("oracle", "examples/quickstart.py", *grid, "--results", str(results), "--out", str(tmp_path / "w"))
    assert rest.returncode == 0, rest.stdout[-3000:] + rest.stderr[-3000:]
    assert "reusing the 1 points both share" in rest.stdout and "point 2/2" in rest.stdout
    assert "point 1/2" not in rest.stdout and "2 points, complete: True" in rest.stdout
    ranked = [line.split()[3] for line in rest.stdout.splitlines() if line.lstrip().startswith("grid ")]
    assert len(ranked) == 2 and float(ranked[0]) >= float(ranked[1]) > 0  # best first


def test_oracle_measures_the_smaller_points_first_and_runs_none_beyond_one_out_of_memory() -> None:
    order = WORKLOADS["llama_1b"].memory_order
    points = [{"precision": p, "batch_size": b, "activation_checkpointing": c}
              for p in ("bf16", "fp32") for b in (32, 16, 8, 4) for c in (False, "every_other", True)]
    measuring = [points[i] for i in measuring_order(order, points)]
    # The grid's blocks stay in its order (bf16 first); within one, the least memory first.
    assert [m["precision"] for m in measuring] == ["bf16"] * 12 + ["fp32"] * 12
    assert measuring[0] == {"precision": "bf16", "batch_size": 4, "activation_checkpointing": True}
    assert measuring[11] == {"precision": "bf16", "batch_size": 32, "activation_checkpointing": False}
    failed = {"label": "grid 17", "status": "oom",
              "config": {"precision": "fp32", "batch_size": 16, "activation_checkpointing": "every_other"}}
    beyond = [c for c in points if implied_oom(order, c, [failed]) is failed]
    # Larger micro-batches and less checkpointing of the same precision, and the point itself; not bf16.
    assert sorted((c["batch_size"], str(c["activation_checkpointing"])) for c in beyond) == [
        (16, "False"), (16, "every_other"), (32, "False"), (32, "every_other")]
    assert all(c["precision"] == "fp32" for c in beyond)
    # A point that ran, or one itself implied, implies nothing.
    assert implied_oom(order, points[0], [{**failed, "status": "ok"}]) is None
    assert implied_oom(order, {**failed["config"], "batch_size": 32},
                       [{**failed, "implied_by": "grid 5"}]) is None


def test_the_oracle_is_not_a_compiled_point_whose_eager_twin_diverged() -> None:
    """The committed H200 grid of ResNet-50: fp16 went NaN eager; compiled it passed once, then failed every round."""
    grid = json.loads((REPO / "benchmarks/results/oracle-resnet50-nvidia-h200.json").read_text())["points"]
    best = best_point(grid)
    assert best["config"]["precision"] == "bf16" and best["config"]["compile"] == "reduce-overhead"
    rate = best["metrics"]["samples_per_s"]
    faster = [p for p in grid if p["status"] == "ok" and p["metrics"]["samples_per_s"] > rate]
    assert faster and all(p["config"]["precision"] == "fp16" and p["config"]["compile"] != "off" for p in faster)
    notes = set_aside(grid)
    assert len(notes) == len(faster) and all("eager twin" in n and "NaN" in n for n in notes)
    # With the eager twins gone (never measured), the compiled fp16 point is the oracle again.
    kept = [p for p in grid if not (p["config"]["precision"] == "fp16" and p["config"]["compile"] == "off")]
    assert best_point(kept)["metrics"]["samples_per_s"] == max(p["metrics"]["samples_per_s"] for p in faster)
    assert set_aside(kept) == []


def test_oracle_cache_is_refused_for_another_driver_or_grid() -> None:
    identity = {"gpu": "NVIDIA H100 80GB HBM3", "driver": "580.159.04", "torch": "2.11.0", "workload_source": "ab",
                "grid": [{"batch_size": 64}], "measure": {"windows": 5}}
    cached = {"identity": dict(identity)}
    assert cache_mismatch(cached, identity) == []
    assert cache_mismatch(cached, {**identity, "driver": "590.1"}) == [
        "driver: cached '580.159.04', here '590.1'"]
    assert cache_mismatch(cached, {**identity, "grid": [{"batch_size": 128}]}) == ["the grid's points differ"]
    # A loader setting re-measures the grids of dataset workloads only.
    settings = MeasureSettings()
    assert "loader_epochs" not in settings.applicable(has_dataset=False)
    assert settings.applicable(has_dataset=True) == {**settings.applicable(has_dataset=False), "loader_epochs": 2.0,
                                                     "epoch_aligned": True}


def test_committed_h100_results_render_and_state_their_targets() -> None:
    result = json.loads((REPO / "benchmarks/results/2026-11-24-h100-bert_infer-bench.json").read_text())
    checks = {t["target"]: t for t in targets(result)}
    assert checks["dstune / oracle"]["met"] is True and checks["dstune / lightning"]["met"] is True
    assert "p99 ms" in markdown(result)
    loader = json.loads((REPO / "benchmarks/results/2026-11-24-h100-augmented_images-bench.json").read_text())
    checks = {t["target"]: t for t in targets(loader)}
    assert checks["largest CV across rounds"]["met"] is False  # the miss the README explains
    assert "MISSED" in markdown(loader) and "p99 ms" not in markdown(loader)


def test_a_runs_applied_configuration_is_placed_in_an_oracle_grid_measured_so_far() -> None:
    """``benchmarks/oracle_ratio``: dstune / oracle from a grid cache and a run's history, costing no device time;
    an incomplete grid says so, and a configuration outside the grid has no ratio rather than a wrong one."""
    from benchmarks.oracle_ratio import place

    def point(label: str, batch: int, rate: float | None, status: str = "ok") -> dict:
        return {"label": label, "config": {"batch_size": batch, "precision": "bf16"}, "status": status,
                "metrics": {"samples_per_s": rate} if rate else {}}

    grid = {"complete": False, "points": [point("grid 1", 32, 352.6), point("grid 2", 16, 339.4),
                                          point("grid 3", 64, None, "oom")]}
    found = place(grid, {"batch_size": 16, "precision": "bf16", "compile_dynamic": "auto"})
    assert found["point"] == "grid 2" and found["best"] == "grid 1"
    assert found["ratio"] == pytest.approx(339.4 / 352.6) and found["grid_complete"] is False
    assert place(grid, {"batch_size": 64, "precision": "bf16"})["ratio"] is None  # out of memory: no figure
    assert place(grid, {"batch_size": 32, "precision": "fp16"})["ratio"] is None  # not a point of the grid


def test_the_search_comparison_reads_why_the_trials_stopped_where_the_console_wrapped_the_line() -> None:
    """On the H200 the sampler's summary line, with five statuses, wrapped at 80 columns and its stop reason
    was recorded as null; the reason is read across the wrap (and the runs now print 160 columns wide)."""
    from benchmarks.search_compare import stop_reason

    wrapped = ("Iteration 1 of gpt2: 1 crash, 1 interrupted, 1 invalid, 7 ok, 3 pruned \n(stopped: \nbudget)\n"
               "Pareto front: throughput vs peak memory\n")
    assert stop_reason(wrapped) == "budget"
    assert stop_reason("Iteration 1 of gpt2: 9 ok (stopped: converged)") == "converged"
    assert stop_reason("Iteration 1 of gpt2: 9 ok\n") is None
