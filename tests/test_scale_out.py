"""Scale-out on one host: ``--gpus`` slots running trials side by side, claims, refusals, per-model incumbents.

A CPU host has no GPUs to pin, but ``--gpus 0,1`` still makes two slots
(with a warning): the pool, the claims and the interrupt path are the same
code a GPU host runs.  Several hosts on PostgreSQL are in test_postgres.py;
the GPU run is in test_gpu.py.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import optuna
import pytest

from dstune.production import best
from dstune.store import Store

from .conftest import WORKLOADS, cli_in_process, db_rows, parallel_seconds

pytestmark = pytest.mark.slow  # end to end: real runs in subprocesses (`-m "not slow"` leaves them out)

PACED = ("--window-time", "0.3", "--windows", "3", "--max-warmup", "1", "--disable-plugin", "compile",
         "--check-repeats", "2")


def _start(tmp_path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "dstune", *args], cwd=tmp_path, text=True,
                            env={**os.environ, "COLUMNS": "200"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_two_slots_run_trials_side_by_side_and_each_is_recorded_once(tmp_path):
    db = tmp_path / "slots.db"
    run = _start(tmp_path, "run", str(WORKLOADS / "paced.py"), "--db", str(db), "--trials", "6", "--gpus", "0,1",
                 *PACED)
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 0, out
    assert "no NVIDIA GPU: the 2 slots of --gpus run trials side by side" in " ".join(out.split())
    assert "(stopped: trials)" in out
    rows = db_rows(db, "select gpu, started_at, ended_at from dstune_trials order by id")
    assert len(rows) == 6 and {gpu for gpu, *_ in rows} == {"0", "1"}
    assert parallel_seconds(rows) > 0.5, "trials of the two slots ran at the same time"
    (claimed, study, model), = db_rows(db, "select trials_claimed, study_name, gpu_model from dstune_iterations")
    assert claimed == 6 and model == "cpu"
    numbers = [n for n, in db_rows(db, "select number from dstune_trials")]
    loaded = optuna.load_study(study_name=study, storage=f"sqlite:///{db}")
    assert sorted(numbers) == sorted(t.number for t in loaded.trials if "dstune_copied_from" not in t.user_attrs)
    assert {t.state for t in loaded.trials} == {optuna.trial.TrialState.COMPLETE}
    applied, = db_rows(db, "select gpu_model from dstune_applied")
    assert applied == ("cpu",)


def _running(db) -> int:
    """Trials running now in a run's SQLite file (0 until the run has created its tables)."""
    try:
        return db_rows(db, "select count(*) from dstune_trials where status = 'running'")[0][0]
    except sqlite3.OperationalError:
        return 0


def test_an_interrupt_stops_every_slot_and_records_their_trials(tmp_path):
    db = tmp_path / "interrupted.db"
    run = _start(tmp_path, "run", str(WORKLOADS / "paced.py"), "--db", str(db), "--trials", "20", "--gpus", "0,1",
                 "--window-time", "2", "--windows", "3", "--disable-plugin", "compile")
    deadline = time.monotonic() + 120
    while _running(db) != 2:
        assert time.monotonic() < deadline and run.poll() is None, "two trials never ran at once"
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    out, _ = run.communicate(timeout=60)
    assert run.returncode == 130, out
    rows = db_rows(db, "select gpu, status, error from dstune_trials where status != 'ok' and status != 'pruned'")
    assert sorted(r[0] for r in rows) == ["0", "1"] and {r[1] for r in rows} == {"interrupted"}, rows
    (status, error), = db_rows(db, "select status, error from dstune_iterations")
    assert status == "interrupted" and "do phase" in error
    study, = db_rows(db, "select study_name from dstune_iterations")[0]
    loaded = optuna.load_study(study_name=study, storage=f"sqlite:///{db}")
    assert optuna.trial.TrialState.RUNNING not in {t.state for t in loaded.trials}


@pytest.mark.parametrize("args,expected", [
    (("--gpus", "0,0"), "names GPU 0 more than once"),
    (("--gpus", "0,,1"), "has an empty entry"),
])
def test_bad_gpus_are_refused_before_anything_starts(tmp_path, capsys, args, expected):
    code, _, err = cli_in_process(capsys, "run", str(WORKLOADS / "paced.py"), "--db", str(tmp_path / "x.db"), *args)
    assert code == 2 and expected in err and "--gpus" in err
    assert not (tmp_path / "x.db").exists()


def test_a_worker_without_a_study_to_join_says_how_to_start_one(tmp_path, capsys):
    db = tmp_path / "empty.db"
    code, _, err = cli_in_process(capsys, "worker", "--db", str(db), "--study", "resnet50-w47", "--wait", "0")
    assert code == 2
    assert "no iteration of study 'resnet50-w47' reached its Do phase" in err
    assert "dstune run WORKLOAD.py --db URL --study resnet50-w47" in err


def test_a_worker_arriving_after_the_do_phase_has_nothing_to_join(tmp_path, capsys):
    store = Store(str(tmp_path / "done.db"))
    iteration = store.start_iteration(workload_id=store.workload_id("w", "/w.py"), study_name="late", phase="check")
    code, out, _ = cli_in_process(capsys, "worker", "--db", str(tmp_path / "done.db"), "--study", "late", "--wait", "0")
    assert code == 0 and f"iteration {iteration} (study late) has left its Do phase" in " ".join(out.split())


def test_claims_never_exceed_the_trial_budget_and_stop_with_the_do_phase(tmp_path):
    store = Store(str(tmp_path / "claims.db"))
    iteration = store.start_iteration(workload_id=store.workload_id("w", "/w.py"), study_name="s", phase="do")
    assert [store.claim_trial(iteration, 3) for _ in range(4)] == [1, 2, 3, None]
    store.release_claim(iteration)
    assert store.claim_trial(iteration, 3) == 3
    store.release_claim(iteration)
    store.update_iteration(iteration, phase="check")
    assert store.claim_trial(iteration, 3) is None


def test_each_gpu_model_keeps_its_own_incumbent(tmp_path, monkeypatch):
    """Tuning on an H100 never replaces what was measured on this host's model; production picks by model."""
    db = str(tmp_path / "models.db")
    store = Store(db)
    store.workload_id("w", "/w.py")
    legacy = store.apply_config("w", config={"batch_size": 8}, reason="promoted")  # written before schema 6
    assert store.applied("w", "cpu").id == legacy  # a row naming no model holds for every model
    cpu = store.apply_config("w", config={"batch_size": 16}, reason="promoted", gpu_model="cpu")
    h100 = store.apply_config("w", config={"batch_size": 256}, reason="promoted", gpu_model="NVIDIA H100 80GB HBM3")
    assert store.applied("w", "cpu").id == cpu and store.applied("w", "NVIDIA H100 80GB HBM3").id == h100
    assert store.applied("w").id == h100  # the newest of any model
    assert store.applied_models("w") == ["NVIDIA H100 80GB HBM3", "cpu", None]
    monkeypatch.delenv("DSTUNE_CONFIG", raising=False)
    found = best("w", db)  # this host is a CPU host: its own model's config, not the newer H100 one
    assert found.config == {"batch_size": 16} and found.gpu_model == "cpu" and found.applied_id == cpu
