"""Run one trial (or the probe) in a fresh subprocess and classify how it ended.

The child gets its own process group, so a timeout or an interrupt kills the
workload and anything it started.  Its output goes to files, not pipes, so a
workload that floods stdout cannot deadlock the parent; only the tail is kept.

How children start: by default they are forked from a fork server, a clean
interpreter started once per ``dstune`` process that has imported torch and
nothing else (no CUDA, no thread pools, no workload).  Each trial is a new
process forked from that same clean state, so nothing leaks from one trial to
the next, yet it skips the seconds that importing torch costs.  That matters
because the Check phase re-measures configurations in many fresh processes.
``DSTUNE_START_METHOD=exec`` starts each child as a new interpreter instead
(``python -m dstune.trial.process``), for platforms where forking after
importing torch is not safe.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path
from typing import Any, Callable

from dstune.devices.processes import die_with_parent
from dstune.errors import UsageError
from dstune.units import format_bytes

from .distributed import SAFE_ENV
from .records import TrialOutcome, TrialSpec
from .workload_imports import preload_env

TAIL_BYTES = 4000
KILL_GRACE_S = 5.0


def _tail(path: Path, limit: int = TAIL_BYTES) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


START_METHODS = ("forkserver", "exec")


def start_method() -> str:
    method = os.environ.get("DSTUNE_START_METHOD", "forkserver")
    if method not in START_METHODS:
        raise UsageError(f"DSTUNE_START_METHOD={method!r} is not one of {', '.join(START_METHODS)}; "
                         "unset it to use the default (forkserver).")
    return method


def _kill_group(pgid: int, wait: Callable[[float], bool]) -> None:
    """SIGTERM the group, then SIGKILL whatever is left after a grace period.

    ``wait(seconds)`` waits for the leader to exit and says whether it has.
    """
    for sig, grace in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):  # no such group yet (setsid not reached): the leader alone
            try:
                os.kill(pgid, sig)
            except ProcessLookupError:
                return
        if grace:
            wait(grace)
    wait(KILL_GRACE_S)


CANCEL_POLL_S = 0.2


def _wait_ending(wait: Callable[[float], bool], timeout_s: float, cancel: threading.Event | None) -> str:
    """Wait for the child: ``done``, ``timeout``, or ``cancelled`` (when ``cancel`` is set first)."""
    if cancel is None:
        return "done" if wait(timeout_s) else "timeout"
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout"
        if wait(min(left, CANCEL_POLL_S)):
            return "done"
        if cancel.is_set():
            return "cancelled"


def _forkserver() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["dstune.trial.preload"])
    return context


def start_early(workload_file: Path | None = None) -> None:
    """Start the fork server now, so that it imports torch, and the installed modules ``workload_file``
    imports, while the caller does its own imports (:mod:`dstune.trial.workload_imports`)."""
    if start_method() != "forkserver":
        return
    _forkserver()
    preload = preload_env(workload_file)
    saved = {name: os.environ.get(name) for name in preload}
    os.environ.update(preload)  # the server starts with this process's environment
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _forked_child(spec_path: str, result_path: str, out_path: str, err_path: str, env: dict[str, str]) -> None:
    """Runs in the forked child: become a process group, redirect output, apply env, run the worker.

    Its parent is the fork server, which exits when the dstune process does; the
    child is then killed too.
    """
    os.setsid()
    die_with_parent()
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        opened = os.open(path, flags, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.reconfigure(write_through=True)  # type: ignore[union-attr]
    os.environ.clear()
    os.environ.update(env)
    # A forkserver child inherits "forkserver" as its default start method; a
    # workload (DataLoader workers) must see the platform's default, as in a plain script.
    multiprocessing.set_start_method(None, force=True)
    from dstune.trial.process import main, write_result

    from . import workload_imports

    if workload_imports.CUDA_BY is not None:  # the fork server's CUDA context is no use to a forked process
        write_result(result_path, {"status": "usage_error", "error": (
            f"importing {workload_imports.CUDA_BY} (imported by the workload file) initialised CUDA in dstune's "
            "fork server, so no trial forked from it can use the GPU. Run with DSTUNE_PRELOAD=off, which leaves the "
            "workload's imports to each trial, or DSTUNE_START_METHOD=exec.")})
        sys.exit(2)
    sys.exit(main([spec_path, result_path]))


def _start_without_main(process: multiprocessing.process.BaseProcess) -> None:
    """Start ``process`` so that it does not re-import the caller's ``__main__`` script.

    multiprocessing re-runs the parent's main module in every child so that
    pickled functions defined there resolve; a trial needs none of that, and a
    caller's script (or ``python -`` reading stdin) must not run again.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        process.start()
    finally:
        sys.modules["__main__"] = main


def _run_forked(paths: list[str], env: dict[str, str], timeout_s: float,
                cancel: threading.Event | None) -> tuple[int | None, str]:
    process = _forkserver().Process(target=_forked_child, args=(*paths, env), daemon=False)
    _start_without_main(process)

    def wait(seconds: float) -> bool:
        process.join(seconds)
        return process.exitcode is not None

    try:
        ending = _wait_ending(wait, timeout_s, cancel)
    finally:
        # Also on success or interrupt: a child the workload left behind dies with the group.
        _kill_group(process.pid, wait)
    return process.exitcode, ending


def _run_exec(paths: list[str], env: dict[str, str], timeout_s: float,
              cancel: threading.Event | None) -> tuple[int | None, str]:
    spec_path, result_path, out_path, err_path = paths
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dstune.trial.process", spec_path, result_path],
            stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
            preexec_fn=die_with_parent,
        )

        def wait(seconds: float) -> bool:
            try:
                proc.wait(timeout=seconds)
                return True
            except subprocess.TimeoutExpired:
                return False

        try:
            ending = _wait_ending(wait, timeout_s, cancel)
        finally:
            _kill_group(proc.pid, wait)
    return proc.returncode, ending


def run_in_subprocess(spec: TrialSpec, timeout_s: float, env: dict[str, str] | None = None,
                      workdir: Path | None = None, cancel: threading.Event | None = None) -> TrialOutcome:
    """Run ``dstune.trial.process`` on ``spec``; kill its process group after ``timeout_s``.

    Setting ``cancel`` (from another thread: a run with several GPU slots
    being interrupted) kills it too, and the trial is ``interrupted``.
    """
    with tempfile.TemporaryDirectory(prefix="dstune-trial-", dir=workdir) as tmp:
        tmpdir = Path(tmp)
        spec_path, result_path = tmpdir / "spec.json", tmpdir / "result.json"
        out_path, err_path = tmpdir / "stdout.log", tmpdir / "stderr.log"
        spec_path.write_text(spec.to_json())
        child_env = dict(os.environ)
        child_env.update(env or {})
        child_env["PYTHONUNBUFFERED"] = "1"
        child_env.update(SAFE_ENV)  # NVLink multicast off in every trial, whatever the caller's environment says
        paths = [str(spec_path), str(result_path), str(out_path), str(err_path)]
        runner = _run_forked if start_method() == "forkserver" else _run_exec
        started, kills = time.perf_counter(), oom_kills()
        returncode, ending = runner(paths, child_env, timeout_s, cancel)
        duration = time.perf_counter() - started
        stderr_tail = _tail(err_path)
        if ending == "cancelled":
            return TrialOutcome("interrupted", error="dstune run was interrupted during this trial",
                                duration_s=duration, stderr_tail=stderr_tail, exit_code=returncode)
        if ending == "timeout":
            return TrialOutcome("timeout", error=f"no result after {timeout_s:.0f} s; process group killed",
                                duration_s=duration, stderr_tail=stderr_tail, exit_code=returncode,
                                payload=_cut_short(result_path))
        after = oom_kills()
        return classify_exit(returncode, result_path, duration, stderr_tail,
                             oom_killed=kills is not None and after is not None and after > kills)


def _cut_short(result_path: Path) -> dict[str, Any]:
    """What a process killed at its time had written as it went (the memory probe's points so far), or nothing."""
    try:
        written = json.loads(result_path.read_text())
    except (OSError, ValueError):
        return {}
    points = written.get("points") if isinstance(written, dict) else None
    return {"points": points} if isinstance(points, list) else {}


def oom_kills() -> int | None:
    """How many processes the kernel's out-of-memory killer has ended since boot (Linux), or None where unknown.

    A trial that exhausts the host's memory does not raise: the kernel sends it
    SIGKILL.  That counter moving while the trial ran, with the trial killed by
    SIGKILL that dstune did not send, tells an out-of-memory end from a crash.
    """
    try:
        with open("/proc/vmstat", encoding="ascii") as stats:
            for line in stats:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _host_memory() -> str:
    try:
        return format_bytes(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError):
        return "its memory"


def classify_exit(returncode: int | None, result_path: Path, duration: float, stderr_tail: str,
                  oom_killed: bool = False) -> TrialOutcome:
    """Turn an exit status and an optional result file into a :class:`TrialOutcome`; ``oom_killed``: the kernel's
    out-of-memory killer ended a process while this one ran."""
    signame = None
    if returncode is not None and returncode < 0:
        try:
            signame = signal.Signals(-returncode).name
        except ValueError:
            signame = f"signal {-returncode}"
    if result_path.exists():
        payload = json.loads(result_path.read_text())
        return TrialOutcome(
            status=payload.get("status", "crash"), metrics=payload.get("metrics") or {},
            error=payload.get("error"), exit_code=returncode, signal=signame, duration_s=duration,
            stderr_tail=stderr_tail, payload=payload,
        )
    if signame == "SIGKILL" and oom_killed:
        return TrialOutcome("oom", error=(
            f"trial process killed by SIGKILL from the kernel's out-of-memory killer after {duration:.0f} s: the host "
            f"({_host_memory()}) ran out of memory. Give trials a smaller micro-batch or a --memory-budget under "
            "the host's free memory, or free memory on the host"), exit_code=returncode, signal=signame,
            duration_s=duration, stderr_tail=stderr_tail)
    how = f"killed by {signame}" if signame else f"exited with code {returncode} without a result"
    return TrialOutcome("crash", error=f"trial process {how}", exit_code=returncode, signal=signame,
                        duration_s=duration, stderr_tail=stderr_tail)
