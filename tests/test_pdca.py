"""Plan-Do-Check-Act across iterations: the check's statistics, regressions, history, production use."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dstune.context import TuneContext
from dstune.knobs import default_config
from dstune.plugin_calls import applicable_knobs
from dstune.plugin_manager import plugin_manager
from dstune.run.act import decide
from dstune.run.check import SETTLE_AFTER, CheckResult, interleaved_check
from dstune.run.options import RunOptions, trial_spec
from dstune.run.speedup import paired_ratio
from dstune.trial.launch import run_in_subprocess

from .conftest import FAST, OTHER_THREADS, WORKLOADS, copy_store, db_rows, probed, run_cli
from .conftest import QUICK_RUN as QUICK

pytestmark = pytest.mark.slow  # end to end: real runs in subprocesses (`-m "not slow"` leaves them out)


def test_aa_check_promotes_at_most_once_in_20():
    """Incumbent and challenger are the same config: any promotion is a false one, early stops included (a check
    may end after 2 rounds when even its 99% interval lies below 1 + 2%)."""
    info = probed(WORKLOADS / "observe.py", "observe")
    ctx = TuneContext.from_dict(info["ctx"])
    config = default_config(applicable_knobs(plugin_manager().pm, ctx))
    options = RunOptions(workload_file=WORKLOADS / "observe.py", workload_name="observe", measure=FAST)

    def measure(role, round_, cfg):
        return run_in_subprocess(trial_spec(options, info["ctx"], cfg), timeout_s=60)

    estimates, promotions = [], 0
    for _ in range(20):
        result = interleaved_check(measure, config, dict(config), repeats=5, min_gain=0.02)
        assert not result.failures and len(result.incumbent) == len(result.challenger) >= SETTLE_AFTER == 2
        assert (len(result.incumbent) == 5) == (result.settled is None)  # fewer rounds only when it settled
        estimates.append(result.estimate)
        promotions += decide(result, has_challenger=True, min_gain=0.02, reference=None).promoted
    print("\nA/A speed-ups:", ", ".join(str(e) for e in estimates))
    assert promotions <= 1, estimates
    # The intervals are honest about noise: most of them contain 1.
    assert sum(e.low <= 1.0 <= e.high for e in estimates) >= 16, estimates


@pytest.mark.parametrize("incumbent_p99,challenger_p99,decision,why", [
    (0.090, 0.040, "promoted", "the incumbent's p99 latency, 90 ms, breaks the limit of 50 ms"),
    (0.030, 0.060, "kept", "the challenger's p99 latency in the check, 60 ms, breaks the limit of 50 ms"),
    (0.030, 0.040, "promoted", "speed-up"),  # both in time: speed decides
    (0.090, 0.070, "promoted", "speed-up"),  # neither in time: speed decides too
])
def test_a_latency_limit_decides_before_speed(incumbent_p99, challenger_p99, decision, why):
    # The challenger is 1.5x faster in every round.
    result = CheckResult(incumbent=[100.0, 101.0, 99.0], challenger=[150.0, 151.0, 149.0])
    result.estimate = paired_ratio(result.incumbent, result.challenger)
    made = decide(result, has_challenger=True, min_gain=0.02, reference=None, max_latency_s=0.05,
                  latency_p99_s={"incumbent": incumbent_p99, "challenger": challenger_p99})
    assert made.decision == decision and why in made.reason, made.reason


def test_injected_slowdown_is_flagged_as_a_regression_every_time(tmp_path):
    """Each slowed iteration follows a normal one; each is flagged, and --fail-on-regression exits 3."""
    db = str(tmp_path / "paced.db")
    # Longer windows than QUICK: the regression test must see through a busy 2-core machine's noise.
    args = ("run", str(WORKLOADS / "paced.py"), "--db", db, "--trials", "1", "--fail-on-regression", *QUICK,
            "--window-time", "0.2")
    for week in range(2):
        normal = run_cli(*args, cwd=tmp_path)
        assert normal.returncode == 0, normal.stdout + normal.stderr
        # 30%: a host whose sleeps overshoot by a millisecond or two dilutes 15% to under 10% (a quiet CI run
        # measured 570-626 samples/s slowed against about 640), within what the check calls noise.
        slowed = run_cli(*args, cwd=tmp_path, env={"DSTUNE_TEST_SLOWDOWN": "0.3"})
        assert slowed.returncode == 3, slowed.stdout + slowed.stderr
        assert "Regression:" in slowed.stdout and "regression detected" in slowed.stderr
    rows = db_rows(Path(db), "select regression, json_extract(\"check\", '$.regression_estimate.ratio') "
                           "from dstune_iterations order by id")
    assert [r[0] for r in rows] == [None, 1, 0, 1]  # the first has no earlier measurement to compare with
    for _, ratio in rows[1::2]:
        assert 0.60 < ratio < 0.92, rows  # about 1/1.3, give or take the noise of a 2-core machine
    # Nothing was promoted: the incumbent was the only candidate each time.
    assert db_rows(Path(db), "select reason from dstune_applied") == [("baseline",)]


def test_three_weekly_iterations_history_show_export_rollback(tmp_path, weekly_store):
    weekly_db, _, outputs = weekly_store
    db = str(copy_store(weekly_db, tmp_path / "weekly.db"))
    assert "first iteration" in outputs[0]
    assert "environment unchanged since iteration 1" in outputs[1] and "warm-start" in outputs[1]
    assert "environment changed since iteration 2" in outputs[2] and "workload_source:" in outputs[2]

    rows = db_rows(Path(db), "select id, decision, previous_iteration_id, json_array_length(fingerprint_diff), "
                           "incumbent_source from dstune_iterations order by id")
    assert [r[1] in ("promoted", "kept") for r in rows] == [True] * 3
    assert [r[2] for r in rows] == [None, 1, 2] and [r[3] for r in rows] == [0, 0, 1]
    assert rows[0][4].startswith("default configuration") and rows[1][4].startswith("applied #1")
    # Later iterations start from the incumbent.
    seeds = db_rows(Path(db), "select seed_kind from dstune_trials where iteration_id = 2 order by id")
    assert seeds[0] == ("incumbent",)

    history = run_cli("history", "observe", "--db", db, cwd=tmp_path)
    assert history.returncode == 0, history.stderr
    assert "workload_source:" in history.stdout and "first" in history.stdout
    for decision in (r[1] for r in rows):
        assert decision in history.stdout

    show = run_cli("show", "observe", "--db", db, cwd=tmp_path)
    assert show.returncode == 0 and "incumbent applied #" in show.stdout and "samples/s" in show.stdout
    exported = json.loads(run_cli("export", "observe", "--db", db, "--format", "json", cwd=tmp_path).stdout)
    assert exported["workload"] == "observe" and exported["context"]["workload"] == "observe"
    env_lines = run_cli("export", "observe", "--db", db, "--format", "env", cwd=tmp_path).stdout.splitlines()
    assert "DSTUNE_WORKLOAD=observe" in env_lines
    assert f"DSTUNE_BATCH_SIZE={exported['config']['batch_size']}" in env_lines

    # Roll back to the first iteration's configuration: it becomes the applied one.
    first = db_rows(Path(db), "select config from dstune_applied where iteration_id = 1")[0][0]
    rolled = run_cli("rollback", "observe", "--to", "1", "--db", db, cwd=tmp_path)
    assert rolled.returncode == 0, rolled.stderr
    after = json.loads(run_cli("export", "observe", "--db", db, cwd=tmp_path).stdout)
    assert after["config"] == json.loads(first) and after["reason"] == "rollback"
    bad = run_cli("rollback", "observe", "--to", "99", "--db", db, cwd=tmp_path)
    assert bad.returncode == 2 and "no completed iteration 99" in bad.stderr and "1, 2, 3" in bad.stderr


PRODUCTION = """
import json, os, sys
sys.path.insert(0, {workloads!r})
import dstune
from observe import observe
cfg = dstune.best("observe", db={db!r})
run = dstune.apply(observe, cfg)
for _ in range(3):
    run.step()
print(json.dumps({{"config": cfg.config, "micro_batch": run.plan.micro_batch}}))
"""


def test_apply_composes_what_the_trial_measured(tmp_path, trials):
    """On a CUDA machine this runs on the GPU (bf16 autocast on CUDA); elsewhere on the CPU."""
    db = str(tmp_path / "prod.db")
    result = run_cli("run", str(WORKLOADS / "observe.py"), "--workload", "observe", "--db", db, "--trials", "1",
                     "--check-repeats", "2", *QUICK, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # Put a configuration that changes every observable fact in production, as a rollback would.
    config = {"precision": "bf16", "intra_op_threads": OTHER_THREADS, "interop_threads": 1, "activation_checkpointing": True,
              "batch_size": 16}
    with sqlite3.connect(db) as conn:
        conn.execute("insert into dstune_applied (workload_id, iteration_id, config, reason, applied_at) "
                     "values (1, 1, ?, 'rollback', '2026-11-23 00:00:00')", (json.dumps(config),))

    _, in_trial = trials.run(WORKLOADS / "observe.py", "observe", **config)
    observe_file = tmp_path / "production.json"
    script = PRODUCTION.format(workloads=str(WORKLOADS), db=db)
    prod = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "DSTUNE_OBSERVE": str(observe_file)})
    assert prod.returncode == 0, prod.stderr
    printed = json.loads(prod.stdout.strip().splitlines()[-1])
    assert printed["config"] == config and printed["micro_batch"] == 16
    in_production = json.loads(observe_file.read_text())
    for fact in ("autocast_cpu", "output_dtype", "num_threads", "num_interop_threads", "cudnn_benchmark",
                 "matmul_precision", "model_type", "batch_rows", "device"):
        assert in_production[fact] == in_trial[fact], fact
    autocast = "autocast_cuda" if in_trial["device"].startswith("cuda") else "autocast_cpu"
    assert in_production[autocast] is True and in_production["num_threads"] == OTHER_THREADS
    assert in_production["block_calls"] > in_production["loss_calls"] * 3  # checkpointed blocks ran twice

    # DSTUNE_CONFIG: the exported file replaces the store.
    exported = tmp_path / "best.json"
    assert run_cli("export", "observe", "--db", db, "-o", str(exported), cwd=tmp_path).returncode == 0
    check = ("import dstune, json; b = dstune.best('observe', db='/nonexistent/x.db'); "
             "print(json.dumps(b.config))")
    from_file = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60,
                               env={**__import__("os").environ, "DSTUNE_CONFIG": str(exported)})
    assert from_file.returncode == 0, from_file.stderr
    assert json.loads(from_file.stdout) == config


def test_best_without_an_applied_config_names_what_is_there(tmp_path):
    from dstune import UsageError, best
    from dstune.store import Store

    Store(str(tmp_path / "empty.db"))  # a store with nothing applied (best itself never creates one)
    with pytest.raises(UsageError, match=r"no configuration has been applied to workload 'nope'.*dstune run"):
        best("nope", db=str(tmp_path / "empty.db"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"config": {"batch_size": 8},\n "workload": }')
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DSTUNE_CONFIG", str(bad))
        with pytest.raises(UsageError, match=r"bad.json: not valid JSON \(line 2"):
            best("observe")


def test_interrupted_check_promotes_nothing(tmp_path):
    db = tmp_path / "interrupted.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dstune", "run", str(WORKLOADS / "observe.py"), "--workload", "observe", "--db",
         str(db), "--trials", "3", "--check-repeats", "20", "--window-time", "0.3", "--disable-plugin", "compile"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # As from a terminal: a shell's background job would otherwise pass SIGINT on as ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Wait for the check itself, however slow the machine: a SIGINT sent on a timer could land in Do.
    deadline = time.monotonic() + 280
    in_check = False
    while not in_check and time.monotonic() < deadline and proc.poll() is None:
        tables = {r[0] for r in db_rows(db, "select name from sqlite_master")} if db.exists() else set()
        in_check = "dstune_measurements" in tables and db_rows(
            db, "select count(*) from dstune_measurements")[0][0] >= 2
        time.sleep(0.2)
    if not in_check:
        proc.kill()
        pytest.fail("the run never reached its check's second measurement: " + "".join(proc.communicate()))
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    (status, phase, decision, error), = db_rows(db, "select status, phase, decision, error from dstune_iterations")
    assert (status, phase, decision) == ("interrupted", "check", None) and "nothing was promoted" in error
    assert db_rows(db, "select count(*) from dstune_applied") == [(0,)]
    assert db_rows(db, "select count(*) from dstune_measurements")[0][0] >= 2


@pytest.mark.parametrize("config, message", [
    ({"batch_size": 7}, r"batch_size=7 is not one of its choices \[2, 4, 8, 16, 32, 64, 128\]"),
    ({"precision": "bf16", "warp_speed": True}, r"knob 'warp_speed' is not declared by any plugin here"),
])
def test_apply_refuses_an_invalid_config_before_applying_anything(tmp_path, config, message):
    """Run in a fresh process: nothing (threads, flags) may have been changed when the error comes."""
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(config))
    script = (f"import sys, torch; sys.path.insert(0, {str(WORKLOADS)!r}); import dstune; from observe import observe\n"
              "threads = torch.get_num_threads()\n"
              "try:\n    dstune.apply(observe, dstune.best('observe'))\n"
              "except dstune.UsageError as exc:\n    print(exc); assert torch.get_num_threads() == threads\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**__import__("os").environ, "DSTUNE_CONFIG": str(path)})
    assert result.returncode == 0, result.stderr
    assert re.search(message, result.stdout) and f"DSTUNE_CONFIG={path}" in result.stdout
