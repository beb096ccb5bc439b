"""The store refuses what it cannot safely use, and leaves such files untouched."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dstune.errors import UsageError
from dstune.store import SCHEMA_VERSION, Store, resolve_url


def test_new_database_is_wal_and_private(tmp_path):
    db = tmp_path / "new.db"
    store = Store(str(db))
    assert store.url == f"sqlite:///{db}"
    with sqlite3.connect(db) as conn:
        assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
    assert {"dstune_workloads", "dstune_iterations", "dstune_trials", "dstune_meta"} <= tables
    assert (db.stat().st_mode & 0o777) == 0o600


def test_trial_is_committed_when_recorded(tmp_path):
    db = tmp_path / "t.db"
    store = Store(str(db))
    workload = store.workload_id("w", "/x.py")
    iteration = store.start_iteration(workload_id=workload, study_name="s")
    store.record_trial(iteration, config={"a": 1}, status="ok",
                       metrics={"samples_per_s": 10.0, "peak_memory_bytes": 123})
    # Another connection sees it at once: nothing waits for the end of the run.
    with sqlite3.connect(db) as conn:
        assert conn.execute("select status, samples_per_s, peak_memory_bytes from dstune_trials").fetchall() == [
            ("ok", 10.0, 123)]


def test_non_database_file_is_refused_and_untouched(tmp_path):
    db = tmp_path / "notes.db"
    db.write_bytes(b"these are my notes, not a database\n" * 100)
    before = db.read_bytes()
    with pytest.raises(UsageError, match="cannot be opened"):
        Store(str(db))
    assert db.read_bytes() == before


def test_newer_schema_is_refused(tmp_path):
    db = tmp_path / "future.db"
    Store(str(db))
    with sqlite3.connect(db) as conn:
        conn.execute("update dstune_meta set value = ? where key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(UsageError, match="newer dstune"):
        Store(str(db))


def test_url_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("DSTUNE_DB", raising=False)
    assert resolve_url(None) == "sqlite:///dstune.db"
    monkeypatch.setenv("DSTUNE_DB", str(tmp_path / "env.db"))
    assert resolve_url(None) == f"sqlite:///{tmp_path / 'env.db'}"
    # A plain postgresql:// URL uses psycopg 3 (dstune's driver) unless psycopg2 is installed; named drivers stay.
    import importlib.util

    plain = "postgresql+psycopg://u@h/db" if importlib.util.find_spec("psycopg2") is None else "postgresql://u@h/db"
    assert resolve_url("postgresql://u@h/db") == plain
    assert resolve_url("postgresql+psycopg2://u:pw@h/db") == "postgresql+psycopg2://u:pw@h/db"
    with pytest.raises(UsageError, match="does not know"):
        resolve_url("bogus://host/db")
    with pytest.raises(UsageError, match="does not exist"):
        Store(str(tmp_path / "missing-dir" / "x.db"))


def test_schema_1_database_is_migrated_without_losing_rows(tmp_path):
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.executescript((Path(__file__).parent / "data" / "schema_v1.sql").read_text())
    store = Store(str(db))
    with sqlite3.connect(db) as conn:
        assert conn.execute("select value from dstune_meta where key = 'schema_version'").fetchone() == (
            str(SCHEMA_VERSION),)
        columns = {row[1] for row in conn.execute("pragma table_info(dstune_iterations)")}
    assert {"decision", "speedup_low", "fingerprint_diff", "incumbent_config"} <= columns
    (iteration,) = store.iterations_of("observe")
    assert iteration.status == "completed" and iteration.chosen_config["precision"] == "bf16"
    assert iteration.decision is None
    assert len(store.trials(iteration.id)) == 2
    # The migrated database takes schema-2 rows.
    store.record_measurement(iteration.id, role="incumbent", round=0, config={}, status="ok", metrics={})
    assert len(store.measurements(iteration.id)) == 1


def test_database_in_a_read_only_place_is_a_clear_error(tmp_path):
    # /proc refuses new files even to root, unlike a chmod-ed directory.
    with pytest.raises(UsageError, match=r"database /proc/dstune\.db cannot be created.*--db"):
        Store("/proc/dstune.db")


WRITER = """
import sys
from dstune.store import Store
store = Store(sys.argv[1])
iteration = store.start_iteration(workload_id=store.workload_id("w", "w.py"), study_name="s")
for number in range(100000):
    trial_id = store.record_trial(iteration, number=number, config={"n": number}, status="ok",
                                  metrics={"samples_per_s": float(number)})
    print(trial_id, flush=True)  # printed only after the commit returned
"""


@pytest.mark.parametrize("after_s", [0.5, 0.8, 1.3])
def test_sigkill_while_committing_loses_no_committed_trial(tmp_path, after_s):
    """A writer committing trials in a tight loop is SIGKILLed: every commit it reported is there, intact."""
    db = tmp_path / "kill.db"
    Store(str(db))  # schema created before the writer starts
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    time.sleep(after_s + 1.5)  # the writer's imports take about a second
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    reported = [int(line) for line in out.split()]
    assert len(reported) > 10, "the writer was killed before it committed anything"
    with sqlite3.connect(db) as conn:
        assert conn.execute("pragma integrity_check").fetchone() == ("ok",)
        rows = dict(conn.execute("select id, samples_per_s from dstune_trials").fetchall())
    assert set(reported) <= set(rows)
    assert len(rows) - len(reported) <= 1  # at most the commit in flight, whole or absent
    assert all(rows[i] == float(n) for n, i in enumerate(sorted(rows)))


RACE = '''
import sys, time
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all start at once, on a fresh database
from dstune.store import Store
store = Store(sys.argv[1])  # dstune's tables
store.optuna_storage()  # Optuna's tables
print(store.workload_id("raced", "/w.py"), store.environment_id("fp-raced", {"gpu": "none"}))
'''


def race_six_processes(db: str) -> None:
    """Six processes open a fresh store at the same instant; each must get the same workload and environment."""
    start = time.time() + 3.0
    procs = [subprocess.Popen([sys.executable, "-c", RACE, db, str(start)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(6)]
    results = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    assert len({out for out, _ in results}) == 1  # one id each, the same for all


def test_runs_starting_together_share_one_workload_and_environment_row(tmp_path):
    race_six_processes(str(tmp_path / "race.db"))


def test_a_setup_refused_by_a_concurrent_write_is_tried_again():
    """A clean-clone CI run saw one of the six racing processes fail in Optuna's version stamp: SQLite's
    "database is locked", which WAL mode raises at once when a reader's snapshot went stale."""
    from sqlalchemy.exc import OperationalError

    from dstune.store.database import first_use, lost_setup_race

    locked = OperationalError("INSERT INTO alembic_version", {}, sqlite3.OperationalError("database is locked"))
    assert lost_setup_race(locked)
    assert not lost_setup_race(OperationalError("SELECT 1", {}, sqlite3.OperationalError("disk I/O error")))
    calls = []

    def setup() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise locked
        return "done"

    assert first_use(setup) == "done" and len(calls) == 2


def test_reading_commands_and_dstune_best_never_create_a_store(tmp_path, monkeypatch, capsys):
    """In a folder with no store, `dstune.best`, `show` and `history` say where they looked; no file appears."""
    import dstune

    from .conftest import cli_in_process

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DSTUNE_DB", raising=False)
    monkeypatch.delenv("DSTUNE_CONFIG", raising=False)
    with pytest.raises(UsageError) as caught:
        dstune.best("resnet")
    message = str(caught.value)
    assert f"no dstune store at dstune.db (looked, in order, at --db (not given); DSTUNE_DB (not set); a config " \
           f"file (none found); ./dstune.db ({tmp_path / 'dstune.db'}))" in message
    assert "DSTUNE_CONFIG" in message
    for command in (("show", "resnet"), ("history", "resnet"), ("history", "resnet", "--db", str(tmp_path / "x.db"))):
        code, _, err = cli_in_process(capsys, *command)
        assert code == 2 and "no dstune store at" in err and "Nothing was created" in err
    (tmp_path / "pyproject.toml").write_text('[tool.dstune]\ndb = "runs/tuning.db"\n')
    code, _, err = cli_in_process(capsys, "show", "resnet")
    assert code == 2 and f"{tmp_path / 'pyproject.toml'}, line 2: db = {tmp_path / 'runs' / 'tuning.db'})" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pyproject.toml"]
