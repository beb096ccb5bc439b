"""Run one trial (or the probe) in a fresh subprocess and classify how it ended.

The child gets its own process group, so a timeout or an interrupt kills the
workload and anything it started.  Its output goes to files, not pipes, so a
workload that floods stdout cannot deadlock the parent; only the tail is kept.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATUSES = ("ok", "pruned", "oom", "crash", "timeout", "numerics", "invalid", "interrupted")
TAIL_BYTES = 4000
KILL_GRACE_S = 5.0


@dataclass
class TrialOutcome:
    """How a trial process ended, and what it measured."""

    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    exit_code: int | None = None
    signal: str | None = None
    duration_s: float = 0.0
    stderr_tail: str = ""
    payload: dict[str, Any] = field(default_factory=dict)


def _tail(path: Path, limit: int = TAIL_BYTES) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _kill_group(pgid: int, proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the group, then SIGKILL whatever is left after a grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        if wait:
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass
    try:
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:  # pragma: no cover - unkillable
        pass


def run_in_subprocess(spec: dict[str, Any], timeout_s: float, env: dict[str, str] | None = None,
                      workdir: Path | None = None) -> TrialOutcome:
    """Run ``dstune.trial_worker`` on ``spec``; kill its process group after ``timeout_s``."""
    with tempfile.TemporaryDirectory(prefix="dstune-trial-", dir=workdir) as tmp:
        tmpdir = Path(tmp)
        spec_path, result_path = tmpdir / "spec.json", tmpdir / "result.json"
        out_path, err_path = tmpdir / "stdout.log", tmpdir / "stderr.log"
        spec_path.write_text(json.dumps(spec))
        child_env = dict(os.environ)
        child_env.update(env or {})
        child_env["PYTHONUNBUFFERED"] = "1"
        started = time.perf_counter()
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dstune.trial_worker", str(spec_path), str(result_path)],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=child_env, start_new_session=True,
            )
            timed_out = False
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # Also on success or interrupt: a child the workload left behind dies with the group.
                _kill_group(proc.pid, proc)
        duration = time.perf_counter() - started
        stderr_tail = _tail(err_path)
        if timed_out:
            return TrialOutcome("timeout", error=f"no result after {timeout_s:.0f} s; process group killed",
                                duration_s=duration, stderr_tail=stderr_tail, exit_code=proc.returncode)
        return classify_exit(proc.returncode, result_path, duration, stderr_tail)


def classify_exit(returncode: int, result_path: Path, duration: float, stderr_tail: str) -> TrialOutcome:
    """Turn an exit status and an optional result file into a :class:`TrialOutcome`."""
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
    how = f"killed by {signame}" if signame else f"exited with code {returncode} without a result"
    return TrialOutcome("crash", error=f"trial process {how}", exit_code=returncode, signal=signame,
                        duration_s=duration, stderr_tail=stderr_tail)
