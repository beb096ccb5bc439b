"""The numerics guard: each trial's first loss or output is compared with an fp32 eager reference."""

from __future__ import annotations

import sqlite3

import pytest

from dstune.errors import UsageError
from dstune.knobs import Knob
from dstune.trial.numerics import GuardSettings, parse_tolerances, trial_tolerance

from .conftest import WORKLOADS, run_cli

FRAGILE = WORKLOADS / "fragile.py"
GUARD = GuardSettings(tolerance=0.05)


@pytest.mark.parametrize("workload", ["fragile", "fragile_infer"])
def test_bf16_that_breaks_the_model_is_a_numerics_trial(trials, workload):
    outcome, _ = trials.run(FRAGILE, workload, numerics=GUARD, precision="bf16")
    assert outcome.status == "numerics", (outcome.status, outcome.error)
    assert "differs from the fp32 eager reference by" in outcome.error and "tolerance of 0.05" in outcome.error


@pytest.mark.parametrize("workload", ["fragile", "fragile_infer", "dropout"])
def test_fp32_trials_match_the_reference_exactly(trials, workload):
    # dropout: the reference replays the random state, so its masks are the first step's.
    outcome, _ = trials.run(FRAGILE, workload, numerics=GUARD)
    assert outcome.status == "ok", outcome.error
    assert outcome.metrics["numerics_error"] == 0.0 and outcome.metrics["numerics_reference"] == "computed"


def test_bf16_within_tolerance_passes_and_reports_its_error(trials):
    outcome, _ = trials.run(WORKLOADS / "observe.py", "observe", numerics=GUARD, precision="bf16")
    assert outcome.status == "ok", outcome.error
    assert 0 < outcome.metrics["numerics_error"] <= 0.05 and outcome.metrics["numerics_tolerance"] == 0.05


def test_reference_is_shared_by_trials_of_one_micro_batch(trials, tmp_path):
    shared = GuardSettings(tolerance=0.05, reference_dir=str(tmp_path))
    first, _ = trials.run(FRAGILE, "fragile", numerics=shared, batch_size=16)
    again, _ = trials.run(FRAGILE, "fragile", numerics=shared, batch_size=16, intra_op_threads=1)
    other, _ = trials.run(FRAGILE, "fragile", numerics=shared, batch_size=8)
    assert [o.metrics["numerics_reference"] for o in (first, again, other)] == ["computed", "cached", "computed"]
    assert again.metrics["numerics_error"] < 1e-6


def test_tolerance_is_the_largest_the_config_allows_and_users_override_it():
    knobs = [Knob("precision", ("fp32", "bf16"), "fp32", "bf16", tolerance={"bf16": 0.05}),
             Knob("matmul_precision", ("highest", "high"), "highest", "high", tolerance={"high": 0.01})]
    assert trial_tolerance(knobs, {"precision": "fp32", "matmul_precision": "highest"}, {}) == 1e-3
    assert trial_tolerance(knobs, {"precision": "bf16", "matmul_precision": "high"}, {}) == 0.05
    overrides = parse_tolerances(["precision:bf16=0.2", "base=1e-5"])
    assert trial_tolerance(knobs, {"precision": "bf16"}, overrides) == 0.2
    assert trial_tolerance(knobs, {"precision": "fp32"}, overrides) == 1e-5
    for bad in ("bf16=0.1", "precision:bf16", "precision:bf16=-1", "base=lots"):
        with pytest.raises(UsageError, match="KNOB:VALUE=RELATIVE_ERROR"):
            parse_tolerances([bad])


def test_run_records_numerics_trials_and_keeps_the_safe_config(tmp_path):
    args = ("run", str(FRAGILE), "--workload", "fragile", "--db", str(tmp_path / "n.db"), "--only", "precision",
            "--trials", "2", "--check-repeats", "2", "--window-time", "0.05", "--windows", "2")
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    with sqlite3.connect(tmp_path / "n.db") as conn:
        rows = dict(conn.execute("select json_extract(config, '$.precision'), status from dstune_trials"))
        applied = conn.execute("select json_extract(config, '$.precision') from dstune_applied").fetchall()
    assert rows == {"fp32": "ok", "bf16": "numerics"} and applied == [("fp32",)]
    unknown = run_cli(*args, "--tolerance", "precision:fp8=0.1", cwd=tmp_path)
    assert unknown.returncode == 2 and "precision:fp8" in unknown.stderr and "precision:bf16" in unknown.stderr
