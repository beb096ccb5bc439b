"""dstune's store on a real PostgreSQL server, as several hosts would share it.

``.ci/run`` installs PostgreSQL from Debian's packages, starts it on
127.0.0.1 and sets ``DSTUNE_TEST_POSTGRES`` to a URL of a role that may
create databases; each test gets a database of its own.  Without that
variable the tests are skipped, unless ``DSTUNE_REQUIRE_POSTGRES=1`` (as CI
sets) makes that a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from typing import Iterator

import optuna
import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from dstune.store import Store
from dstune.store.models import SCHEMA_VERSION

from .conftest import QUICK_RUN, WORKLOADS, run_cli
from .test_store import race_six_processes

pytestmark = pytest.mark.slow  # end to end: real runs in subprocesses (`-m "not slow"` leaves them out)

ADMIN_URL = os.environ.get("DSTUNE_TEST_POSTGRES")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty database on the server, dropped afterwards."""
    if not ADMIN_URL:
        if os.environ.get("DSTUNE_REQUIRE_POSTGRES") == "1":
            pytest.fail("DSTUNE_REQUIRE_POSTGRES=1 but DSTUNE_TEST_POSTGRES is not set (.ci/run starts the server)")
        pytest.skip("needs a PostgreSQL server: set DSTUNE_TEST_POSTGRES=postgresql://user:pw@127.0.0.1/postgres")
    name = f"dstune_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(_psycopg(ADMIN_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        _drop(admin, name)
        admin.dispose()


def _drop(admin, name: str) -> None:  # type: ignore[no-untyped-def]
    """Drop a test database, again while an autovacuum worker (not ours to terminate) is still in it."""
    for attempt in range(20):
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except ProgrammingError as exc:
            if "must be a member of the role" not in str(exc) or attempt == 19:
                raise
            time.sleep(0.5)


def _psycopg(url: str) -> str:
    return make_url(url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def test_two_iterations_on_postgresql_record_history_and_load_in_optuna(tmp_path, pg_url):
    args = ("run", str(WORKLOADS / "observe.py"), "--workload", "observe", "--db", pg_url, "--trials", "3",
            "--check-repeats", "2", *QUICK_RUN)
    for _ in range(2):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
    history = run_cli("history", "observe", "--db", pg_url, "--json", cwd=tmp_path)
    assert history.returncode == 0, history.stderr
    records = json.loads(history.stdout)
    assert [r["status"] for r in records] == ["completed", "completed"]
    assert records[1]["previous_iteration_id"] == records[0]["id"] and records[1]["environment_changes"] == []
    store = Store(pg_url)
    for record in records:
        trials = store.trials(record["id"])
        assert len(trials) == record["trials"]["total"] == 3
        study = optuna.load_study(study_name=record["study"], storage=_psycopg(pg_url))
        own = [t for t in study.trials if "dstune_copied_from" not in t.user_attrs]
        assert sorted(t.number for t in own) == sorted(t.number for t in trials)


def test_byte_counts_past_2_gib_fit_and_a_schema_4_database_is_widened(pg_url):
    """PostgreSQL's INTEGER is 32-bit; an 80 GiB GPU's peak memory must survive the round trip."""
    store = Store(pg_url)
    workload_id = store.workload_id("big", "/big.py")
    iteration_id = store.start_iteration(workload_id=workload_id, study_name="big-it1",
                                         memory_budget_bytes=72 * 2**30)
    trial_id = store.record_trial(iteration_id, number=0, config={}, status="ok",
                                  metrics={"samples_per_s": 1.0, "peak_memory_bytes": 80 * 2**30})
    assert store.trials(iteration_id)[0].peak_memory_bytes == 80 * 2**30 and trial_id

    # A database written by schema 4 had 32-bit columns: opening it widens them, keeping the rows.
    engine = create_engine(_psycopg(pg_url))
    with engine.begin() as conn:
        conn.execute(text("UPDATE dstune_trials SET peak_memory_bytes = 5"))
        conn.execute(text("ALTER TABLE dstune_trials ALTER COLUMN peak_memory_bytes TYPE INTEGER"))
        conn.execute(text("UPDATE dstune_meta SET value = '4' WHERE key = 'schema_version'"))
    Store(pg_url)
    columns = {c["name"]: c["type"] for c in inspect(engine).get_columns("dstune_trials")}
    assert str(columns["peak_memory_bytes"]) == "BIGINT"
    with engine.begin() as conn:
        assert conn.execute(text("SELECT value FROM dstune_meta")).scalar() == str(SCHEMA_VERSION)
        assert conn.execute(text("SELECT peak_memory_bytes FROM dstune_trials")).scalar() == 5
    engine.dispose()


def test_processes_starting_together_on_a_fresh_postgresql_database_share_one_row(pg_url):
    race_six_processes(pg_url)


def test_a_wrong_password_is_one_clear_paragraph(tmp_path, pg_url):
    wrong = make_url(pg_url).set(password="not-the-password").render_as_string(hide_password=False)
    result = run_cli("history", "observe", "--db", wrong, cwd=tmp_path)
    message = " ".join(result.stderr.split())
    assert result.returncode == 2 and "cannot be opened" in message and "Traceback" not in result.stderr, message
    assert "not-the-password" not in message  # the URL is shown without its password


def _trial_rows(url: str, study: str) -> list[tuple]:
    engine = create_engine(_psycopg(url))
    with engine.connect() as conn:
        rows = conn.execute(text(
            "select t.number, t.status, t.pid, t.error from dstune_trials t join dstune_iterations i "
            "on t.iteration_id = i.id where i.study_name = :s order by t.id"), {"s": study}).fetchall()
    engine.dispose()
    return [tuple(r) for r in rows]


def test_coordinator_and_three_workers_share_one_study_and_a_killed_workers_trial_goes_stale(tmp_path, pg_url):
    """One `dstune run --study` and three `dstune worker` processes (each its own "host": its own lock folder).

    Trials of about two seconds (paced steps, three half-second windows); worker 1 is SIGKILLed
    while a trial of its own runs.  Optuna's heartbeat (every second here, stale after three)
    fails that trial, dstune marks it stale, and the others finish the budget of 8 trials.
    """
    study, trials = "paced-w47", 8
    workload = tmp_path / "paced.py"
    shutil.copy(WORKLOADS / "paced.py", workload)
    other = tmp_path / "elsewhere" / "paced.py"  # a host whose copy of the workload was edited
    other.parent.mkdir()
    other.write_text(workload.read_text() + "\n# edited on this host\n")

    def start(*args: str, host: str) -> subprocess.Popen[str]:
        env = {**os.environ, "COLUMNS": "200", "DSTUNE_TRIAL_HEARTBEAT": "1",
               "DSTUNE_LOCK_DIR": str(tmp_path / f"locks-{host}")}
        return subprocess.Popen([sys.executable, "-m", "dstune", *args], cwd=tmp_path, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    Store(pg_url)  # the tables exist before the test polls them (creation races are tested above)
    coordinator = start("run", str(workload), "--db", pg_url, "--study", study, "--trials", str(trials),
                        "--check-repeats", "2", "--window-time", "0.5", "--windows", "3", "--max-warmup", "1",
                        "--disable-plugin", "compile", host="coordinator")
    workers = [start("worker", "--db", pg_url, "--study", study, host=f"w{i}") for i in range(3)]
    edited = start("worker", "--db", pg_url, "--study", study, "--workload-file", str(other), host="edited")
    victim = workers[0]
    try:
        deadline = time.monotonic() + 240
        while True:  # stop worker 1 while a trial of its own runs (then it cannot record its end), and kill it
            assert time.monotonic() < deadline and victim.poll() is None, "worker 1 never started a trial"
            if any(r[1] == "running" and r[2] == victim.pid for r in _trial_rows(pg_url, study)):
                victim.send_signal(signal.SIGSTOP)
                if any(r[1] == "running" and r[2] == victim.pid for r in _trial_rows(pg_url, study)):
                    victim.kill()
                    break
                victim.send_signal(signal.SIGCONT)  # it ended in between (a pruned trial is short): the next one
            time.sleep(0.05)
        victim.wait(timeout=10)
        out, _ = coordinator.communicate(timeout=300)
        outputs = [w.communicate(timeout=60)[0] for w in workers[1:]]
        edited_out, _ = edited.communicate(timeout=60)
    finally:
        for process in (coordinator, *workers, edited):
            if process.poll() is None:
                process.kill()
    assert coordinator.returncode == 0, out
    assert all(w.returncode == 0 for w in workers[1:]), outputs

    rows = _trial_rows(pg_url, study)
    ran = [r for r in rows if r[1] != "invalid"]  # refused configurations are not trials, as in a plain run
    assert len(ran) == trials, rows
    assert len({r[0] for r in rows}) == len(rows), "each Optuna trial is recorded once"
    stale = [r for r in rows if r[1] == "stale"]
    assert [r[2] for r in stale] == [victim.pid] and "no heartbeat" in stale[0][3], rows
    assert all(r[1] in ("ok", "pruned", "invalid") for r in rows if r[1] != "stale"), rows
    assert len({r[2] for r in ran}) >= 3, "the coordinator and the surviving workers took trials"
    # Each surviving worker stops cleanly and says why: the trials it saw claimed reached the count, or the
    # coordinator had taken the last one and left the Do phase before the worker looked ("ended").  Which of the
    # two a worker sees is a race: a clean-clone CI run on a busy host saw both workers say "ended".
    assert all("worker done" in o and ("(stopped: trials)" in o or "(stopped: ended)" in o) for o in outputs), outputs

    loaded = optuna.load_study(study_name=study, storage=_psycopg(pg_url))
    by_number = {t.number: t for t in loaded.trials}
    assert by_number[stale[0][0]].state == optuna.trial.TrialState.FAIL
    for number, status, *_ in rows:
        expected = optuna.trial.TrialState.FAIL if status == "stale" else optuna.trial.TrialState.COMPLETE
        assert by_number[number].state == expected, (number, status)
    record, = json.loads(run_cli("history", "paced", "--db", pg_url, "--json", cwd=tmp_path).stdout)
    assert record["status"] == "completed" and record["trials"]["total"] == len(rows), record
    shown = json.loads(run_cli("show", "paced", "--db", pg_url, "--json", cwd=tmp_path).stdout)
    assert shown["applied"]["gpu_model"] == "cpu" and list(shown["applied_by_gpu_model"]) == ["cpu"]
    assert {t["pid"] for t in shown["pareto_front"]} <= {r[2] for r in ran}

    assert edited.returncode == 2, edited_out
    assert "differs from the one the coordinator" in edited_out and "--workload-file" in edited_out
