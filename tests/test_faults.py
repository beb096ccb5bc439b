"""Faults outside a trial: broken third-party plugins (loaded through a real entry point) and two runs sharing
one SQLite file and one study."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import WORKLOADS, db_rows, installed_plugin

pytestmark = pytest.mark.slow  # end to end: real runs in subprocesses (`-m "not slow"` leaves them out)

QUICK = ("--trials", "1", "--check-repeats", "2", "--window-time", "0.05", "--windows", "2",
         "--disable-plugin", "compile")

BROKEN_PLUGIN = '''
import os
from dstune import Knob, hookimpl

WHERE = os.environ.get("BROKEN_IN", "")
if WHERE == "import":
    raise ImportError("brokenplug needs a library that is not installed")


def _maybe_raise(hook):
    if WHERE == hook:
        raise RuntimeError(f"brokenplug fails in {hook}")


@hookimpl
def dstune_knobs(ctx):
    _maybe_raise("dstune_knobs")
    if WHERE == "invalid_knob":
        return [Knob("broken_knob", choices=(1, 2), default=3, checklist=1)]
    return []


@hookimpl
def dstune_validate(config, ctx):
    _maybe_raise("dstune_validate")


@hookimpl
def dstune_model_facts(model, workload, ctx):
    _maybe_raise("dstune_model_facts")


@hookimpl
def dstune_prepare_model(model, config, ctx):
    _maybe_raise("dstune_prepare_model")
    _by_batch(config, 4, "dstune_prepare_model")


# BROKEN_IN=by_batch: each trial hook raises for one micro-batch size (8, the default, runs clean).
def _by_batch(config, size, hook):
    if WHERE == "by_batch" and config.get("batch_size") == size:
        raise RuntimeError(f"brokenplug fails in {hook}")


@hookimpl
def dstune_configure_process(config, ctx):
    _by_batch(config, 2, "dstune_configure_process")


@hookimpl
def dstune_optimizer_kwargs(config, ctx):
    _by_batch(config, 16, "dstune_optimizer_kwargs")


@hookimpl
def dstune_grad_scaler(config, ctx):
    _by_batch(config, 32, "dstune_grad_scaler")


@hookimpl
def dstune_step_context(config, ctx):
    _by_batch(config, 64, "dstune_step_context")


@hookimpl
def dstune_loader_kwargs(config, ctx):
    _by_batch(config, 128, "dstune_loader_kwargs")
'''


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    """A real installed-looking distribution on a path: module, METADATA and an entry point in group dstune."""
    return installed_plugin(tmp_path_factory.mktemp("plugins"), "brokenplug", "broken", "brokenplug", BROKEN_PLUGIN)


def _run(tmp_path: Path, plugin_path: Path, where: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{plugin_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "BROKEN_IN": where, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "dstune", "run", str(WORKLOADS / "observe.py"), "--workload", "observe",
                           "--db", str(tmp_path / "p.db"), *QUICK, *extra], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_plugin_that_fails_to_import_is_disabled_with_a_warning(tmp_path, plugin_path):
    result = _run(tmp_path, plugin_path, "import")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "plugin 'broken'" in result.stdout and "brokenplug" in result.stdout and "disabled" in result.stdout
    strict = _run(tmp_path, plugin_path, "import", "--strict-plugins")
    assert strict.returncode == 2 and "failed to load" in strict.stderr and "Traceback" not in strict.stderr


@pytest.mark.parametrize("where, message", [
    ("dstune_knobs", "plugin 'broken' failed in dstune_knobs: RuntimeError: brokenplug fails in dstune_knobs"),
    ("invalid_knob", "plugin 'broken' failed in dstune_knobs: ValueError: knob 'broken_knob': default value 3"),
    ("dstune_model_facts", "plugin 'broken' failed in dstune_model_facts: RuntimeError"),
])
def test_plugin_failing_before_trials_is_named_and_left_out(tmp_path, plugin_path, where, message):
    result = _run(tmp_path, plugin_path, where)
    assert result.returncode == 0, result.stdout + result.stderr
    assert message in " ".join(result.stdout.split()) and "disabled for this run" in result.stdout
    (options, plugins), = db_rows(tmp_path / "p.db", "select i.options, e.facts from dstune_iterations i "
                                                   "join dstune_environments e on e.id = i.environment_id")
    assert '"broken"' in options  # left out of the trial processes too
    assert db_rows(tmp_path / "p.db", "select status from dstune_trials") == [("ok",)]
    if where == "invalid_knob":  # the same path as dstune_knobs raising; spare the second run
        return
    strict = _run(tmp_path, plugin_path, where, "--strict-plugins")
    assert strict.returncode == 2, strict.stdout + strict.stderr
    text = " ".join(strict.stderr.split())
    assert message in text and "--disable-plugin broken" in text and "Traceback" not in text


def test_plugin_failing_in_a_trial_hook_is_data(tmp_path, plugin_path):
    validate = _run(tmp_path, plugin_path, "dstune_validate")
    assert validate.returncode == 0, validate.stdout + validate.stderr
    rows = db_rows(tmp_path / "p.db", "select status, error from dstune_trials")
    assert len(rows) == 20 and all(s == "invalid" and "plugin 'broken' raised in dstune_validate" in e
                                   for s, e in rows)
    assert "20 configurations in a row were refused" in " ".join(validate.stdout.split())

    (tmp_path / "p.db").unlink()
    prepare = _run(tmp_path, plugin_path, "dstune_prepare_model")
    assert prepare.returncode == 0, prepare.stdout + prepare.stderr
    (status, error), = db_rows(tmp_path / "p.db", "select status, error from dstune_trials")
    assert status == "crash" and "brokenplug fails in dstune_prepare_model" in error
    (decision,), = db_rows(tmp_path / "p.db", "select decision from dstune_iterations")
    assert decision == "kept"


def test_two_runs_share_one_sqlite_file_and_one_study(tmp_path):
    db = tmp_path / "shared.db"
    args = [sys.executable, "-m", "dstune", "run", str(WORKLOADS / "observe.py"), "--workload", "observe", "--db",
            str(db), "--study", "shared", "--trials", "5", "--check-repeats", "2", "--window-time", "0.05",
            "--windows", "2", "--disable-plugin", "compile"]
    procs = [subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, out + err
        assert "locked" not in err
    import optuna

    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{db}")
    finished = [t.number for t in study.trials if t.state.is_finished()]
    rows = [r[0] for r in db_rows(db, "select number from dstune_trials where status != 'invalid'")]
    assert len(rows) == 10 and len(set(rows)) == 10, rows  # five each, none lost, none twice
    assert set(rows) <= set(finished)
    assert db_rows(db, "select status from dstune_iterations") == [("completed",), ("completed",)]
    assert db_rows(db, "pragma integrity_check") == [("ok",)]


def test_plugin_raising_in_each_trial_hook_is_a_recorded_crash(tmp_path, plugin_path):
    result = _run(tmp_path, plugin_path, "by_batch", "--trials", "7", "--only", "batch_size")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = db_rows(tmp_path / "p.db", "select json_extract(config, '$.batch_size'), status, error from dstune_trials")
    by_batch = {batch: (status, error) for batch, status, error in rows}
    hooks = {2: "dstune_configure_process", 4: "dstune_prepare_model", 16: "dstune_optimizer_kwargs",
             32: "dstune_grad_scaler", 64: "dstune_step_context", 128: "dstune_loader_kwargs"}
    for batch, hook in hooks.items():
        assert by_batch[batch][0] == "crash" and f"brokenplug fails in {hook}" in by_batch[batch][1], by_batch
    assert by_batch[8][0] == "ok"
