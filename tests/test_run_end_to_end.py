"""The real ``dstune run`` in a subprocess, on a temporary SQLite database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from .conftest import WORKLOADS, db_rows, run_cli

pytestmark = pytest.mark.slow  # end to end: real runs in subprocesses (`-m "not slow"` leaves them out)

NO_COMPILE = ("--disable-plugin", "compile")


def test_run_records_every_trial_and_prints_the_front(tmp_path):
    db = tmp_path / "tune.db"
    result = run_cli("run", str(WORKLOADS / "observe.py"), "--workload", "observe", "--db", str(db),
                     "--trials", "5", "--budget", "3m", "--window-time", "0.1", *NO_COMPILE, cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    assert "Pareto front" in out and "Challenger" in out and "Decision:" in out
    assert "trial 1/5" in out and "trial 5/5" in out
    assert "Plan: first iteration" in out

    iterations = db_rows(db, "select id, status, study_name, chosen_config, memory_budget_bytes, decision, "
                           "incumbent_config from dstune_iterations")
    assert len(iterations) == 1
    iteration_id, status, study_name, chosen, budget, decision, incumbent = iterations[0]
    assert status == "completed" and chosen is not None and budget > 0 and decision in ("promoted", "kept")
    # The check re-measured incumbent (the default config, before anything was applied) and challenger.
    roles = [r[0] for r in db_rows(db, "select role from dstune_measurements order by id")]
    check = json.loads(db_rows(db, 'select "check" from dstune_iterations')[0][0])
    if chosen == incumbent:
        assert roles == ["incumbent"] * 5
    elif check["settled"]:  # a plain answer ends the check after 2 to 4 of its 5 rounds, and says so
        rounds = len(roles) // 2
        assert 2 <= rounds < 5 and roles == ["incumbent", "challenger"] * rounds, roles
        assert f"the check settled after {rounds} of 5 rounds" in " ".join(out.split())
    else:
        assert roles == ["incumbent", "challenger"] * 5
    applied = db_rows(db, "select reason, config from dstune_applied")
    assert len(applied) == 1 and applied[0][0] == ("promoted" if decision == "promoted" else "baseline")

    trials = db_rows(db, "select seed_kind, status, samples_per_s, peak_memory_bytes, step_time_cv, config "
                       "from dstune_trials order by id")
    assert len(trials) == 5
    assert [t[0] for t in trials[:2]] == ["default", "checklist"]
    for seed_kind, status, sps, peak, cv, config in trials:
        assert status in ("ok", "pruned") and sps > 0 and peak > 0  # pruned: its warm-up estimate
        assert (cv is not None) == (status == "ok")
    assert len({t[5] for t in trials}) == 5, "each trial measured a different configuration"
    # From the second trial on, the run says how long it expects each to take, and keeps that beside what it took.
    lines = [line for line in out.splitlines() if line.startswith("trial ") and "/5 [" in line]
    assert len(lines) == 5 and "this trial about" not in lines[0], lines
    assert all("; this trial about 0:" in line for line in lines[1:]), lines
    expected = [json.loads(m).get("expected_duration_s") for (m,) in
                db_rows(db, "select metrics from dstune_trials order by id")]
    assert expected[0] is None and all(e > 0 for e in expected[1:]), expected
    # Optuna's own tables live in the same file, and hold the same trials.
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{db}")
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 5
    assert db_rows(db, "pragma journal_mode")[0][0] == "wal"
    assert (os.stat(db).st_mode & 0o777) == 0o600


def test_failures_are_recorded_and_the_run_goes_on(tmp_path):
    db = tmp_path / "faults.db"
    pid_file = tmp_path / "child.pid"
    result = run_cli("run", str(WORKLOADS / "faults.py"), "--db", str(db), "--trials", "7", "--budget", "5m",
                     "--trial-timeout", "8s", "--window-time", "0.05", "--check-repeats", "2", "--only", "batch_size",
                     cwd=tmp_path,
                     env={"DSTUNE_CHILD_PID_FILE": str(pid_file)})
    assert result.returncode == 0, result.stderr + result.stdout
    rows = db_rows(db, "select json_extract(config, '$.batch_size'), status, error, signal, stderr_tail "
                     "from dstune_trials")
    by_batch = {batch: (status, error, sig, tail) for batch, status, error, sig, tail in rows}
    assert sorted(by_batch) == [8, 16, 32, 64, 128, 256, 512]
    assert by_batch[8][0] == "oom" and "80.00 GiB" in by_batch[8][1]
    assert by_batch[16][0] == "crash" and by_batch[16][2] == "SIGABRT"
    assert by_batch[64][0] == "numerics"
    assert by_batch[128][0] == "timeout"
    assert by_batch[32][0] == "ok"  # the default
    assert all(by_batch[b][0] in ("ok", "pruned") for b in (256, 512)), by_batch  # healthy; pruned if slow
    # The hung trial's own child process died with its process group.
    child = int(pid_file.read_text())
    assert not Path(f"/proc/{child}").exists() or "zombie" in Path(f"/proc/{child}/status").read_text().lower()
    status, chosen = db_rows(db, "select status, json_extract(chosen_config, '$.batch_size') from dstune_iterations")[0]
    assert status == "completed" and chosen in (32, 256, 512)


HANGS_WITH_A_FUSED_OPTIMIZER = '''
import time
import torch
import torch.nn.functional as F
import dstune

fused = False


def optimizer(params, **kw):
    global fused
    fused = bool(kw.get("fused"))
    return torch.optim.SGD(params, lr=0.01, **kw)


def loss(model, batch):
    if fused:
        time.sleep(600)  # the checklist (a fused optimizer on every host; bf16 only on a CPU with its instructions)
    return F.cross_entropy(model(batch[0]), batch[1])


@dstune.workload(batch_size=8)
def slow_checklist(ctx):
    return dstune.Workload(
        model=torch.nn.Linear(16, 4),
        optimizer=optimizer,
        batch=lambda n, device: (torch.randn(n, 16, device=device), torch.randint(0, 4, (n,), device=device)),
        loss=loss,
    )
'''


def test_no_trial_outlives_the_budget(tmp_path):
    """A trial still running when the budget ends is stopped and recorded as interrupted, not timeout."""
    workload = tmp_path / "slow_checklist.py"
    workload.write_text(HANGS_WITH_A_FUSED_OPTIMIZER)
    db = tmp_path / "budget.db"
    started = time.monotonic()
    # 24 s: beside a spinning core and another test's trials, the probe, the fork server and the default trial
    # took 12 s, and a budget of 12 s had no room left to start the checklist.
    result = run_cli("run", str(workload), "--db", str(db), "--trials", "2", "--budget", "24s",
                     "--trial-timeout", "10m", "--window-time", "0.05", *NO_COMPILE, cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    rows = db_rows(db, "select seed_kind, status, error, duration_s from dstune_trials order by id")
    assert [r[:2] for r in rows] == [("default", "ok"), ("checklist", "interrupted")], result.stdout
    assert "budget ran out" in rows[1][2] and rows[1][3] < 24
    assert db_rows(db, "select status, decision from dstune_iterations") == [("completed", "kept")]
    assert elapsed < 60, elapsed  # the 10-minute trial timeout did not apply


def test_a_seed_out_of_memory_is_retried_smaller_until_it_fits(tmp_path):
    """The workload's own batch does not fit: the default seed halves its batch and the run tunes from there."""
    db = tmp_path / "smaller.db"
    result = run_cli("run", str(WORKLOADS / "too_big_default.py"), "--db", str(db), "--trials", "3", "--budget", "3m",
                     "--window-time", "0.05", "--check-repeats", "2", "--only", "batch_size", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the default configuration ran out of memory; trying it with batch_size=32" in result.stdout
    rows = db_rows(db, "select seed_kind, json_extract(config, '$.batch_size'), status, error "
                       "from dstune_trials order by id")
    assert rows[0][:3] == ("default", 64, "oom") and "can't allocate memory" in rows[0][3]
    assert rows[1][:3] == ("default", 32, "ok")
    status, chosen = db_rows(db, "select status, json_extract(chosen_config, '$.batch_size') "
                                 "from dstune_iterations")[0]
    assert status == "completed" and chosen is not None and chosen <= 32


def _pids_of_trials(marker: str) -> list[int]:
    """Processes whose environment names this test's database (trial processes inherit DSTUNE_ITERATION)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_sigkill_mid_run_loses_nothing_committed_and_the_next_run_recovers(tmp_path):
    db = tmp_path / "killed.db"
    marker = f"DSTUNE_TEST_MARKER={tmp_path.name}"
    args = [sys.executable, "-m", "dstune", "run", str(WORKLOADS / "observe.py"), "--workload", "observe",
            "--db", str(db), "--trials", "30", "--budget", "5m", "--window-time", "0.2", *NO_COMPILE]
    env = {**os.environ, "DSTUNE_TEST_MARKER": tmp_path.name}
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if db.exists() and "dstune_trials" in {r[0] for r in db_rows(db, "select name from sqlite_master")}:
            statuses = [r[0] for r in db_rows(db, "select status from dstune_trials")]
            if len(statuses) >= 3 and statuses[-1] == "running":
                break
        time.sleep(0.05)
    before = db_rows(db, "select id, status, samples_per_s, config from dstune_trials where status != 'running'")
    proc.kill()  # SIGKILL: no handler runs
    proc.wait(timeout=30)
    # The fork server sees its parent gone and exits; the trial dies with it (PR_SET_PDEATHSIG).
    # A busy machine can take seconds to schedule the dying processes: wait up to 30 s, not a fixed instant.
    for _ in range(300):
        left = _pids_of_trials(marker)
        if not left:
            break
        time.sleep(0.1)
    assert not left, f"processes outlived the killed dstune: {left}"
    assert db_rows(db, "pragma integrity_check") == [("ok",)]
    assert db_rows(db, "select status from dstune_iterations") == [("running",)]

    rerun = run_cli("run", str(WORKLOADS / "observe.py"), "--workload", "observe", "--db", str(db), "--trials", "1",
                    "--check-repeats", "2", "--window-time", "0.05", *NO_COMPILE, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "iteration 1 was left running" in rerun.stdout
    (status, error), _ = db_rows(db, "select status, error from dstune_iterations order by id")
    assert status == "interrupted" and "nothing was promoted" in error
    after = db_rows(db, "select id, status, samples_per_s, config from dstune_trials where iteration_id = 1 "
                      "and status != 'interrupted'")
    assert after == before, "every trial committed before the kill is intact"
    assert db_rows(db, "select count(*) from dstune_trials where iteration_id = 1 and status = 'interrupted'") == [(1,)]
    assert db_rows(db, "select count(*) from dstune_applied where iteration_id = 1") == [(0,)]


def test_segfault_exit_and_output_flood_are_recorded(tmp_path):
    db = tmp_path / "process.db"
    result = run_cli("run", str(WORKLOADS / "process_faults.py"), "--db", str(db), "--trials", "7", "--budget", "5m",
                     "--window-time", "0.05", "--check-repeats", "2", "--only", "batch_size", cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    rows = db_rows(db, "select json_extract(config, '$.batch_size'), status, signal, exit_code, error, stderr_tail "
                     "from dstune_trials")
    by_batch = {row[0]: row[1:] for row in rows}
    assert by_batch[8][:2] == ("crash", "SIGSEGV")
    assert by_batch[16][0] == "crash" and by_batch[16][2] == 3 and "code 3" in by_batch[16][3]
    status, _, _, error, tail = by_batch[64]
    assert status == "crash" and "failed after flooding its output" in error
    assert len(tail) <= 4000 and "flood" in tail  # 8 MB written; only the tail is kept
    assert all(by_batch[b][0] in ("ok", "pruned") for b in (32, 128, 256, 512)), rows


def test_exec_start_method_classifies_and_kills_the_same_way(tmp_path, trials, monkeypatch):
    """DSTUNE_START_METHOD=exec: each trial a new interpreter; same statuses, same group kill."""
    monkeypatch.setenv("DSTUNE_START_METHOD", "exec")
    pid_file = tmp_path / "child.pid"
    monkeypatch.setenv("DSTUNE_CHILD_PID_FILE", str(pid_file))
    ok, _ = trials.run(WORKLOADS / "faults.py", None, batch_size=32)
    assert ok.status == "ok" and ok.metrics["samples_per_s"] > 0
    crashed, _ = trials.run(WORKLOADS / "faults.py", None, batch_size=16)
    assert crashed.status == "crash" and crashed.signal == "SIGABRT"
    # The timeout covers a new interpreter's start (torch's import alone took 3 s on an idle 2-core host): with
    # 6 s, a run of the suite with three workers timed the trial out before it had started its child.
    hung, _ = trials.run(WORKLOADS / "faults.py", None, timeout_s=15, batch_size=128)
    assert hung.status == "timeout"
    child = int(pid_file.read_text())
    assert not Path(f"/proc/{child}").exists() or "zombie" in Path(f"/proc/{child}/status").read_text().lower()


def test_a_short_budget_for_slow_trials_still_runs_trials_and_a_shorter_check(tmp_path):
    """Five check rounds of 3 s trials would take about 30 s of the 30 s budget: the trials get at least 65% of it
    less the check's two-round minimum, and the check does the rounds the rest pays for. (With 16 s, a slow
    host's 3 s trials left the trials 4 s after that minimum: two trials.  With 0.3 s windows a quick host's
    trials took 1.7 s, measured all seven micro-batches with 18 s left, and the check could pay for five rounds.)"""
    db = tmp_path / "short.db"
    result = run_cli("run", str(WORKLOADS / "paced.py"), "--db", str(db), "--budget", "30s", "--trials", "20",
                     "--window-time", "0.4", "--only", "batch_size", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    trials = db_rows(db, "select status from dstune_trials")
    assert len(trials) >= 3, result.stdout  # before the cap: the default alone, then the check
    [(repeats, settled)] = db_rows(db, "select json_extract(\"check\", '$.repeats'), "
                                       "json_extract(\"check\", '$.settled') from dstune_iterations")
    rounds = db_rows(db, "select count(distinct round) from dstune_measurements")[0][0]
    assert 2 <= repeats < 5, result.stdout  # fewer rounds than the five asked for: what the time left pays for
    # ... all of them, unless the answer was plain sooner (a 16x speed-up settles after 2 of 3).
    assert rounds == repeats or (settled and 2 <= rounds < repeats), (rounds, repeats, settled, result.stdout)


def test_a_latency_limit_picks_the_fastest_trial_in_time_and_replaces_an_incumbent_beyond_it(tmp_path):
    """serving.py: a batch of n takes 3 ms + 2 ms x n; batch 32 (67 ms) is faster than 16 (35 ms), and breaks
    a 55 ms p99 limit. Sleeps are a floor a busy machine only raises: 32 cannot fit, and 16 has 20 ms to spare
    (a slow host's p99, the slowest of a few dozen steps, was seen 11 ms over the sleep)."""
    db = tmp_path / "serve.db"
    args = ("run", str(WORKLOADS / "serving.py"), "--db", str(db), "--window-time", "0.1", "--windows", "3",
            "--check-repeats", "2", *NO_COMPILE)
    # Without a limit the workload's batch of 32 is applied as the baseline ...
    first = run_cli(*args, "--trials", "1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr + first.stdout
    assert db_rows(db, "select reason, json_extract(config, '$.batch_size') from dstune_applied") == [("baseline", 32)]

    # ... and with one, the fastest trial that answers within it replaces that incumbent, though it is slower.
    result = run_cli(*args, "--only", "batch_size", "--trials", "3", "--max-latency", "55ms", cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "and p99 55 ms):" in result.stdout, result.stdout
    trials = db_rows(db, "select id, samples_per_s, latency_p99_s, json_extract(config, '$.batch_size') "
                       "from dstune_trials where status = 'ok' and iteration_id = 2")
    (chosen_id, limit, decision, reason), = db_rows(
        db, "select chosen_trial_id, json_extract(options, '$.max_latency_s'), decision, reason "
            "from dstune_iterations where id = 2")
    assert limit == 0.055
    in_time = [t for t in trials if t[2] <= 0.055]
    chosen = max(in_time, key=lambda t: t[1])
    assert chosen_id == chosen[0], (chosen_id, trials)
    faster = [t for t in trials if t[1] > chosen[1]]
    assert faster and all(t[2] > 0.055 for t in faster), ("the limit, not speed, decided", trials)
    assert f"p99 {chosen[2] * 1e3:.3g} ms" in result.stdout, "each inference trial shows its p99"
    assert decision == "promoted" and "incumbent's p99 latency" in reason and "breaks the limit of 55 ms" in reason, \
        (reason, result.stdout[-3000:])
    assert db_rows(db, "select json_extract(config, '$.batch_size') from dstune_applied order by id desc limit 1") \
        == [(chosen[3],)]
