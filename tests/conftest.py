"""Shared fixtures: run one real trial of a test workload in a real subprocess."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from dstune.compile_cache import compile_cache_env
from dstune.context import TuneContext
from dstune.knobs import default_config
from dstune.plugin_calls import applicable_knobs
from dstune.plugin_manager import plugin_manager
from dstune.run.options import RunOptions, trial_spec
from dstune.run.plan import probe
from dstune.trial.launch import run_in_subprocess
from dstune.trial.measure_settings import MeasureSettings
from dstune.trial.numerics import GuardSettings
from dstune.trial.records import TrialOutcome


def _idle_cores(sample_s: float = 1.0) -> int:
    """How many of this machine's cores nothing else was using over ``sample_s`` (from /proc/stat)."""
    def times() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, all

    cores = os.cpu_count() or 1
    try:
        idle0, total0 = times()
        time.sleep(sample_s)
        idle1, total1 = times()
    except OSError:
        return cores
    busy = 1.0 - (idle1 - idle0) / max(1, total1 - total0)
    return max(1, min(cores, round(cores * (1.0 - busy))))


# On a busy machine every trial, check and script the tests start inherits one intra-op thread per idle core.
# With PyTorch's default of one thread per core, a process spinning on one of the CI machine's two cores made
# each parallel region wait for the descheduled thread, and trials ran 4-5x slower (docs/RELIABILITY.md). On a
# quiet machine PyTorch's default stands: one thread cost some tests 60% more time there.  Under pytest-xdist
# the idle cores are shared out among the workers (pytest_configure below), for the same reason.
_IDLE = _idle_cores() if "OMP_NUM_THREADS" not in os.environ else None
if _IDLE is not None and _IDLE < (os.cpu_count() or 1):
    os.environ["OMP_NUM_THREADS"] = str(_IDLE)
# A thread count the tests' trials do not get by default: the thread knobs' tests set it, so they can fail.
OTHER_THREADS = 1 if int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads()) > 1 else 2

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
WORKLOADS = Path(__file__).resolve().parent / "workloads"
FAST = MeasureSettings(windows=2, window_s=0.05, min_warmup_steps=1, max_warmup_s=2.0)

_probes: dict[tuple[str, str | None, tuple[str, ...]], dict[str, Any]] = {}


MAX_WORKERS = 2  # the CI machine's cores: more workers than cores only wait on each other


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (the default in pyproject.toml): one worker per core, at most two.  None on a machine with a
    GPU, whose tests time one device, nor with ``-s`` (no workers: the tests run in the main process)."""
    if torch.cuda.is_available() or config.option.capture == "no":
        return 0
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


MACHINE_LOCK = "DSTUNE_TEST_MACHINE_LOCK"  # the file the workers share the machine through (exclusive tests)


def pytest_configure(config: pytest.Config) -> None:
    """In the main process of a run with workers: give each worker its share of the idle cores as its trials'
    thread count, and a lock file for the tests that need the machine to themselves (the workers inherit the
    environment when they start, after this hook)."""
    config.addinivalue_line("markers", "exclusive: measures how busy the machine is, or needs it quiet enough for "
                            "timing; under pytest-xdist it runs while no other test does")
    workers = getattr(config.option, "numprocesses", None) or 0
    if workers > 1 and "PYTEST_XDIST_WORKER" not in os.environ:
        if _IDLE is not None:
            os.environ["OMP_NUM_THREADS"] = str(max(1, _IDLE // workers))
        fd, path = tempfile.mkstemp(prefix="dstune-tests-", suffix=".lock")
        os.close(fd)
        os.environ[MACHINE_LOCK] = path


def pytest_unconfigure(config: pytest.Config) -> None:
    path = os.environ.get(MACHINE_LOCK)
    if path and "PYTEST_XDIST_WORKER" not in os.environ:
        for leftover in (Path(path), Path(path + ".gate")):
            leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def _machine_share(exclusive: bool) -> Iterator[None]:
    """Hold the machine shared (most tests) or alone (``exclusive``) while a test runs, across workers.

    A reader-writer lock on a file: an exclusive test first takes the gate, so
    the other worker starts no new test, then waits for the one it is running
    to end.  Without workers there is nothing to share.
    """
    path = os.environ.get(MACHINE_LOCK)
    if not path:
        yield
        return
    with open(path + ".gate", "a") as gate, open(path, "a") as machine:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(machine, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            if not exclusive:
                fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(machine, fcntl.LOCK_UN)
            if exclusive:
                fcntl.flock(gate, fcntl.LOCK_UN)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Every test's setup, call and teardown (a session fixture it starts included) under the machine lock."""
    with _machine_share(exclusive=item.get_closest_marker("exclusive") is not None):
        yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _own_lock_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's runs lock their device in a folder of their own (no test waits on another's lock)."""
    monkeypatch.setenv("DSTUNE_LOCK_DIR", str(tmp_path_factory.mktemp("locks")))


def probed(file: Path, workload: str | None, disabled: tuple[str, ...] = ()) -> dict[str, Any]:
    key = (str(file), workload, disabled)
    if key not in _probes:
        _probes[key] = probe(RunOptions(workload_file=file, workload_name=workload, disabled_plugins=disabled))
    return _probes[key]


class TrialHarness:
    """Runs single trials of a test workload with chosen knob values, as ``dstune run`` would."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.count = 0

    def context(self, file: Path, workload: str | None) -> TuneContext:
        return TuneContext.from_dict(probed(file, workload)["ctx"])

    def run(self, file: Path, workload: str | None, timeout_s: float = 120.0,
            measure: MeasureSettings = FAST, numerics: GuardSettings | None = None,
            prune_below: float | None = None, **overrides: Any) -> tuple[TrialOutcome, dict[str, Any] | None]:
        info = probed(file, workload)
        ctx = TuneContext.from_dict(info["ctx"])
        knobs = applicable_knobs(plugin_manager().pm, ctx)
        config = default_config(knobs)
        config.update(overrides)
        self.count += 1
        observe = self.tmp_path / f"observe-{self.count}.json"
        options = RunOptions(workload_file=file, workload_name=workload, measure=measure)
        env = {"DSTUNE_OBSERVE": str(observe), **compile_cache_env(ctx.workload)}
        spec = trial_spec(options, info["ctx"], config, numerics, prune_below)
        outcome = run_in_subprocess(spec, timeout_s=timeout_s, env=env)
        facts = json.loads(observe.read_text()) if observe.exists() else None
        return outcome, facts


@pytest.fixture
def trials(tmp_path: Path) -> TrialHarness:
    return TrialHarness(tmp_path)


def db_rows(db: Path, query: str, *args: object) -> list[tuple]:
    """Rows of a query on a run's SQLite file, read as any other SQLite client would."""
    with sqlite3.connect(db) as conn:
        return conn.execute(query, args).fetchall()


def parallel_seconds(rows: list[tuple]) -> float:
    """Seconds during which trials on different GPUs ran at once; rows are (gpu, started_at, ended_at) from SQLite."""
    from datetime import datetime

    spans = [(gpu, datetime.fromisoformat(a).timestamp(), datetime.fromisoformat(b).timestamp()) for gpu, a, b in rows]
    return sum(max(0.0, min(b1, b2) - max(a1, a2)) for i, (g1, a1, b1) in enumerate(spans)
               for g2, a2, b2 in spans[i + 1:] if g1 != g2)


# What only a process of its own sees: its import path, and the fork server's start (which a run in this process
# shares with the runs before it).  The long-lived commands get one too.
OWN_PROCESS_ENV = ("PYTHONPATH", "DSTUNE_PRELOAD", "DSTUNE_START_METHOD")
OWN_PROCESS_COMMANDS = ("daemon", "worker", "dashboard")


def run_cli(*args: str, cwd: Path, timeout: float = 600, env: dict[str, str] | None = None,
            own_process: bool = False) -> subprocess.CompletedProcess[str]:
    """The real ``dstune`` command, as ``python -m dstune ARGS`` run in ``cwd`` with ``env`` added.

    In this test process unless ``own_process`` (or an environment or command
    that needs one, above): its trials are forked from this process's fork
    server, which has imported torch once for every run of the test worker.
    Each run in a fresh process started a fork server of its own, 92 of them in
    the suite, a quarter of its CPU time on two cores (``docs/RELIABILITY.md``).
    """
    if own_process or args[0] in OWN_PROCESS_COMMANDS or any(name in (env or {}) for name in OWN_PROCESS_ENV):
        full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
        return subprocess.run([sys.executable, "-m", "dstune", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, env=full_env)
    return _cli_here(args, cwd, timeout, env or {})


def _cli_here(args: tuple[str, ...], cwd: Path, timeout: float, env: dict[str, str]
              ) -> subprocess.CompletedProcess[str]:
    """``dstune ARGS`` in this process, its state (directory, environment, signal handlers, arguments, the error
    console's width) put back after; a run past ``timeout`` ends the test worker with every thread's stack."""
    import faulthandler
    import io
    import signal
    import traceback

    from dstune.cli import main
    from dstune.cli.app import err_console

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd, saved_argv, saved_width = dict(os.environ), os.getcwd(), sys.argv, err_console.width
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    os.environ.update({"COLUMNS": "200", **env})
    os.chdir(cwd)
    sys.argv = ["dstune", *args]
    err_console.width = 200
    code = 0
    faulthandler.dump_traceback_later(timeout, exit=True, file=sys.__stderr__)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except Exception:  # noqa: BLE001 - as a process would: the traceback on stderr, exit 1
        err.write(traceback.format_exc())
        code = 1
    finally:
        faulthandler.cancel_dump_traceback_later()
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        err_console.width = saved_width
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return subprocess.CompletedProcess([sys.executable, "-m", "dstune", *args], code, out.getvalue(), err.getvalue())


def run_paced_slower_after_its_trial(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``dstune run`` of tests/workloads/paced.py with one trial, whose two check rounds run 1.6x slower than it
    (another job started on the host between them).  The memory model is off: its probe would train first and
    take the full-pace turn from the trial (on the H200 the trial and the check then both ran slowed)."""
    env = {"DSTUNE_TEST_SLOWDOWN": "0.6", "DSTUNE_TEST_SLOW_AFTER": str(tmp_path / "starts")}
    return run_cli("run", str(WORKLOADS / "paced.py"), "--db", str(tmp_path / "slower.db"), "--trials", "1",
                   "--only", "batch_size", "--check-repeats", "2", "--budget", "2m", "--memory-model", "off",
                   cwd=tmp_path, env=env)


def cli_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``dstune ARGS`` in this process (the quick commands; a run or a daemon gets a process of its own).

    Returns the exit code, stdout, and stderr with its line wrapping undone.
    """
    from dstune.cli import main

    argv, sys.argv = sys.argv, ["dstune", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


QUICK_RUN = ("--window-time", "0.05", "--windows", "3", "--max-warmup", "2", "--disable-plugin", "compile")


@pytest.fixture(scope="session")
def weekly_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """Three real iterations of the observe workload, its source changed before the third.

    Several tests read this history (history, show, export, rollback, the
    report, Optuna's view of the studies); each copies the database first
    with :func:`copy_store`, so none sees another's writes.
    Returns the database, the workload file, and each run's stdout.
    """
    folder = tmp_path_factory.mktemp("weekly")
    workload = folder / "observe.py"
    workload.write_text((WORKLOADS / "observe.py").read_text())
    db = folder / "weekly.db"
    args = ("run", str(workload), "--workload", "observe", "--db", str(db), "--trials", "3", "--check-repeats", "3",
            *QUICK_RUN)
    outputs = []
    for week in range(3):
        if week == 2:  # the workload's source changed between the 2nd and 3rd iteration
            workload.write_text(workload.read_text() + "\n# tweaked\n")
        result = run_cli(*args, cwd=folder)
        assert result.returncode == 0, result.stdout + result.stderr
        outputs.append(result.stdout)
    return db, workload, outputs


def copy_store(source: Path, target: Path) -> Path:
    """A consistent copy of a SQLite store (SQLite's backup API, so the WAL is included)."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    return target


def installed_plugin(root: Path, distribution: str, entry_point: str, module: str, source: str) -> Path:
    """A real installed-looking distribution under ``root``: the module, METADATA and an entry point in group
    ``dstune``.  Put ``root`` on PYTHONPATH and dstune loads it as it loads any third-party plugin."""
    (root / f"{module}.py").write_text(source)
    dist = root / f"{distribution}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[dstune]\n{entry_point} = {module}\n")
    return root
