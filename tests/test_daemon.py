"""The daemon, run as the real ``dstune daemon`` process: schedules, signals, crash recovery, locks, metrics."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, TypeVar
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from .conftest import WORKLOADS, cli_in_process, db_rows

pytestmark = pytest.mark.slow  # end to end: real runs in subprocesses (`-m "not slow"` leaves them out)

PACED = str(WORKLOADS / "paced.py")
FAST_RUN = ("--trials", "2", "--check-repeats", "2", "--windows", "2", "--window-time", "0.05",
            "--disable-plugin", "compile", "--budget", "3m", "--max-warmup", "3")
SLOW_STEPS = {"DSTUNE_TEST_SLOWDOWN": "30"}  # paced.py: every step about 0.3 s, so a trial is caught running


T = TypeVar("T")


def _wait_for(predicate: Callable[[], T], timeout: float, what: str, log: Path | None = None) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f"; daemon log:\n{log.read_text()[-3000:]}" if log else ""))


def _add(capsys: pytest.CaptureFixture[str], db: Path, *args: str) -> int:
    code, out, err = cli_in_process(capsys, "schedule", "add", PACED, "--db", str(db), *args)
    assert code == 0, out + err
    return int(out.split()[1].rstrip(":"))


def _daemon(db: Path, tmp_path: Path, *args: str, log_name: str = "daemon.log",
            env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / log_name
    proc = subprocess.Popen(
        [sys.executable, "-m", "dstune", "daemon", "--db", str(db), "--idle-window", "0", "--poll", "1s",
         "--heartbeat", "1s", *args],
        cwd=tmp_path, stdout=log.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "200", **(env or {})}, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return proc, log


def _trial_running(db: Path) -> bool:
    try:
        return bool(db_rows(db, "select 1 from dstune_trials where status = 'running'"))
    except sqlite3.OperationalError:  # tables not made yet
        return False


def _freeze(pid: int) -> list[int]:
    """SIGSTOP a process and all its descendants, again until no new child appears, and return them all."""
    stopped: list[int] = []
    while True:
        new = [p for p in [pid, *_descendants(pid)] if p not in stopped]
        if not new:
            return stopped
        for p in new:
            try:
                os.kill(p, signal.SIGSTOP)
            except ProcessLookupError:
                continue
            stopped.append(p)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_schedule_add_refuses_what_would_fail_later_and_list_pause_resume_remove(tmp_path, capsys):
    db = tmp_path / "schedules.db"
    refused = {
        ("--cron", "61 * * * *"): "is not a cron expression of five fields",
        ("--cron", "0 3 * *"): "Weekly on Sunday at 03:00 is \"0 3 * * 0\"",
        ("--cron", "0 3 * * 0", "--bogus", "1"): "No such option: --bogus",
        ("--cron", "0 3 * * 0", "--budget", "soon"): "--budget 'soon' is not a duration",
        ("--cron", "0 3 * * 0", "--timezone", "Mars/Olympus"): "'Mars/Olympus' is not an IANA time zone",
        ("--cron", "0 3 * * 0", "--schedule-id", "4"): "--schedule-id cannot be part of a schedule",
    }
    for args, message in refused.items():
        code, out, err = cli_in_process(capsys, "schedule", "add", PACED, "--db", str(db), *args)
        assert code == 2 and message in err, (args, out, err)
    code, _, err = cli_in_process(capsys, "schedule", "add", str(tmp_path / "gone.py"), "--db", str(db), "--cron", "0 3 * * 0")
    assert code == 2 and "gone.py does not exist" in err
    assert json.loads(cli_in_process(capsys, "schedule", "list", "--db", str(db), "--json")[1]) == [], "nothing refused was stored"

    first = _add(capsys, db, "--cron", "0 3 * * 0", "--timezone", "Europe/Berlin", "--budget", "30m")
    second = _add(capsys, db, "--cron", "30 2 * * *", "--gpu", "1")
    rows = {row["id"]: row for row in json.loads(cli_in_process(capsys, "schedule", "list", "--db", str(db), "--json")[1])}
    due = datetime.strptime(rows[first]["next_due"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    berlin = due.astimezone(ZoneInfo("Europe/Berlin"))
    assert due > datetime.now(timezone.utc) and (berlin.weekday(), berlin.hour, berlin.minute) == (6, 3, 0)
    assert rows[first]["run_args"] == ["--budget", "30m"] and rows[second]["gpu"] == "1"
    assert cli_in_process(capsys, "schedule", "pause", str(first), "--db", str(db))[0] == 0
    table = cli_in_process(capsys, "schedule", "list", "--db", str(db))[1]
    assert "paused" in table and "enabled" in table
    assert cli_in_process(capsys, "schedule", "resume", str(first), "--db", str(db))[0] == 0
    assert cli_in_process(capsys, "schedule", "remove", str(second), "--db", str(db))[0] == 0
    code, _, err = cli_in_process(capsys, "schedule", "pause", str(second), "--db", str(db))
    assert code == 2 and f"no schedule {second}" in err
    listed = json.loads(cli_in_process(capsys, "schedule", "list", "--db", str(db), "--json")[1])
    assert [(r["id"], r["enabled"]) for r in listed] == [(first, True)]


def test_sigterm_during_a_trial_records_it_interrupted_and_exits_within_10s(tmp_path, capsys):
    db = tmp_path / "sigterm.db"
    schedule = _add(capsys, db, "--cron", "0 3 * * 0", "--now", *FAST_RUN)
    proc, log = _daemon(db, tmp_path, env=SLOW_STEPS)
    _wait_for(lambda: _trial_running(db), 120, "a trial to start", log)
    family = [proc.pid, *_descendants(proc.pid)]
    stopped_at = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    took = time.monotonic() - stopped_at
    assert code == 0 and took < 10, (code, took, log.read_text()[-3000:])
    _wait_for(lambda: not [p for p in family if _alive(p)], 10, "the daemon's processes to end")
    assert db_rows(db, "pragma integrity_check") == [("ok",)]
    assert db_rows(db, "select status, error from dstune_trials") == [
        ("interrupted", "dstune run was interrupted during this trial")]
    (status, error), = db_rows(db, "select status, error from dstune_iterations")
    assert status == "interrupted" and "interrupted during the do phase" in error
    (runs, result, claimed, next_due), = db_rows(db, "select runs, last_result, claimed_by, next_due_at from "
                                                   "dstune_schedules")
    assert (runs, result, claimed) == (0, "interrupted", None)
    assert datetime.fromisoformat(next_due).replace(tzinfo=timezone.utc) < datetime.now(timezone.utc), \
        "still due: it runs again when a daemon starts"
    assert f"schedule {schedule}: interrupted" in log.read_text()


def test_sigkill_during_a_trial_then_restart_marks_stale_rows_and_completes(tmp_path, capsys):
    db = tmp_path / "sigkill.db"
    _add(capsys, db, "--cron", "0 3 * * 0", "--now", *FAST_RUN)
    proc, log = _daemon(db, tmp_path, env=SLOW_STEPS)

    def caught() -> list[int]:
        """The frozen family once a trial has finished and another is running; a trial may end between a look at
        the database and the kill, so the family is stopped first and the database read while nothing moves."""
        if not (_trial_running(db) and db_rows(db, "select count(*) from dstune_trials where status != 'running'")[0][0]):
            return []
        family = _freeze(proc.pid)
        if _trial_running(db):
            return family
        for pid in family:
            os.kill(pid, signal.SIGCONT)
        return []

    family = _wait_for(caught, 180, "a finished trial and a running one", log)
    # The whole service killed at once, as systemd's SIGKILL or the OOM killer would: no handler runs anywhere.
    for pid in family:
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=10)
    _wait_for(lambda: not [p for p in family if _alive(p)], 10, "the killed processes to go")
    assert db_rows(db, "pragma integrity_check") == [("ok",)]
    assert db_rows(db, "select status from dstune_iterations") == [("running",)]
    before = db_rows(db, "select * from dstune_trials where status != 'running' order by id")

    restarted = subprocess.run(
        [sys.executable, "-m", "dstune", "daemon", "--db", str(db), "--idle-window", "0", "--once"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "daemon 1 stopped without a clean shutdown" in restarted.stderr
    assert "iteration 1 was left running by a dstune process that died" in restarted.stderr
    assert db_rows(db, "select id, status from dstune_daemons order by id") == [(1, "dead"), (2, "stopped")]
    (status1, error1), (status2, _) = db_rows(db, "select status, error from dstune_iterations order by id")
    assert status1 == "interrupted" and "ended without finishing the do phase" in error1
    assert status2 == "completed", "the schedule went on"
    assert db_rows(db, "select * from dstune_trials where iteration_id = 1 and status != 'interrupted' "
                     "order by id") == before, "no earlier row lost or altered"
    assert db_rows(db, "select count(*) from dstune_trials where iteration_id = 1 and status = 'interrupted'") == [(1,)]
    assert db_rows(db, "select runs, last_iteration_id, claimed_by from dstune_schedules") == [(1, 2, None)]
    assert db_rows(db, "pragma integrity_check") == [("ok",)]


def test_two_daemons_on_one_gpu_run_a_missed_and_a_due_schedule_once_each_never_at_once(tmp_path, capsys):
    """Two daemons, one database, one GPU id; a weekly schedule missed for three weeks and one due now."""
    db = tmp_path / "shared.db"
    weekly = _add(capsys, db, "--cron", "0 3 * * 0", "--timezone", "UTC", *FAST_RUN)
    now = _add(capsys, db, "--cron", "0 3 * * 0", "--now", *FAST_RUN)
    missed = datetime.now(timezone.utc) - timedelta(weeks=3)  # the host was down: three Sunday runs missed
    with sqlite3.connect(db) as conn:
        conn.execute("update dstune_schedules set next_due_at = ? where id = ?",
                     (missed.strftime("%Y-%m-%d %H:%M:%S.%f"), weekly))
    port = _free_port()
    # Its steps paced at 0.3 s, the first daemon's iteration lasts long enough for the second daemon to start,
    # claim the other schedule and wait for the lock (a 2-trial iteration of fast steps could end before the
    # second process had imported dstune, and then there was nothing to wait for).
    serving, serving_log = _daemon(db, tmp_path, "--gpu", "0", "--metrics-port", str(port), log_name="serving.log",
                                   env=SLOW_STEPS)
    # The second daemon starts while the first one's iteration runs, so the two always contend for the GPU.
    _wait_for(lambda: db_rows(db, "select 1 from dstune_iterations where status = 'running'"), 120,
              "the first daemon's iteration to start", serving_log)
    once, once_log = _daemon(db, tmp_path, "--gpu", "0", "--once", log_name="once.log")
    try:
        assert once.wait(timeout=300) == 0, once_log.read_text()[-3000:]
        _wait_for(lambda: all(r[0] for r in db_rows(db, "select last_result from dstune_schedules")), 300,
                  "both runs to end", serving_log)
        time.sleep(3)  # three more polls: a second run of either would have been claimed by now
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        status = json.loads(cli_in_process(capsys, "status", "--db", str(db), "--json")[1])
    finally:
        serving.send_signal(signal.SIGTERM)
        code = serving.wait(timeout=15)
    assert code == 0, serving_log.read_text()[-3000:]
    logs = serving_log.read_text() + once_log.read_text()

    spans = db_rows(db, "select id, started_at, ended_at, status, schedule_id from dstune_iterations order by started_at")
    assert [s[3] for s in spans] == ["completed", "completed"] and sorted(s[4] for s in spans) == [weekly, now]
    assert spans[0][2] <= spans[1][1], f"iterations overlapped: {spans}"
    trials = db_rows(db, "select iteration_id, started_at, ended_at from dstune_trials order by started_at")
    assert all(a[0] <= b[0] for a, b in zip(trials, trials[1:])), "no trial of one ran among the other's"
    assert "is held by pid" in logs, "the second run waited for the first, and said so"
    assert "schedule 1 | Decision:" in logs and "schedule 2 | Decision:" in logs, "runs' output is in the logs"

    rows = {r[0]: r[1:] for r in db_rows(db, "select id, runs, next_due_at, claimed_by, last_result from dstune_schedules")}
    assert rows[weekly][0] == rows[now][0] == 1, "three missed weeks run once; each schedule once in all"
    expected = croniter("0 3 * * 0", datetime.now(timezone.utc)).get_next(datetime)
    assert datetime.fromisoformat(rows[weekly][1]).replace(tzinfo=timezone.utc) == expected
    assert rows[weekly][2] is None and rows[now][2] is None

    decisions = dict(db_rows(db, "select decision, count(*) from dstune_iterations group by decision"))
    assert 'dstune_incumbent_samples_per_second{workload="paced"}' in metrics
    for decision, count in decisions.items():
        assert f'dstune_iterations_total{{result="{decision}",workload="paced"}} {count:.1f}' in metrics
    for status_, count in db_rows(db, "select status, count(*) from dstune_trials group by status"):
        assert f'dstune_trials_total{{status="{status_}",workload="paced"}} {count:.1f}' in metrics
    ages = {line.split("{")[1].split(",")[0]: float(line.split()[-1]) for line in metrics.splitlines()
            if line.startswith("dstune_daemon_heartbeat_age_seconds{")}
    (serving_id,), = db_rows(db, f"select id from dstune_daemons where pid = {serving.pid}")
    assert list(ages) == [f'daemon="{serving_id}"'], "only the daemon still running is listed"
    assert 0 <= ages[f'daemon="{serving_id}"'] < 5
    states = {d["id"]: d["state"] for d in status["daemons"]}
    assert states.pop(serving_id) == "alive" and list(states.values()) == ["stopped"] and status["running"] == []
    assert [q["id"] for q in status["queue"]] == [weekly, now]
    assert db_rows(db, "select status from dstune_daemons order by id") == [("stopped",), ("stopped",)]
