"""``dstune daemon``: run due schedules, one iteration at a time, for months, unattended.

Each due schedule runs as a child ``dstune run`` process (its own session,
so a terminal's Ctrl-C reaches only the daemon), with the daemon's idle gate
and the device lock.  A child cannot take the daemon down, and the daemon
stays small however many workloads it has tuned.  The child's output goes
to the daemon's log, one line at a time, prefixed with the schedule.

State lives in the store, not in the daemon: schedules, their claims, the
daemon's heartbeat.  That is what makes the failure cases simple:

- SIGTERM or SIGINT: the child is told to stop (it records the trial in
  flight and the iteration as interrupted), killed if it has not exited
  within the grace period, and the daemon exits 0.  The schedule's due time
  stays where it was, so the run happens again when a daemon next starts.
- SIGKILL (or power loss): the next daemon finds the dead daemon (no
  heartbeat, or its pid gone on this host), releases its claims and marks
  its iteration and trials interrupted; the schedule is due, and runs.
- Missed runs: ``next_due_at`` advances from the time a run ends, so a host
  that was down for three weeks runs a weekly schedule once, not three times.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import Any

from dstune.config_file import resolve_db
from dstune.devices.lock import resolve_device
from dstune.devices.processes import die_with_parent, process_alive
from dstune.errors import EXIT_DEFERRED, EXIT_INTERRUPTED, EXIT_OK, EXIT_REGRESSION, EXIT_USAGE
from dstune.heartbeat import Heartbeat
from dstune.utc import as_utc

from .schedules import next_due
from .settings import DaemonSettings

log = logging.getLogger("dstune.daemon")

TAIL_LINES = 30


def _seconds(value: float) -> str:
    return f"{value:g}s"


class Daemon:
    def __init__(self, settings: DaemonSettings) -> None:
        from dstune.store import Store

        self.settings = settings
        self.store = Store(resolve_db(settings.db))
        self.host = socket.gethostname()
        self.stopping = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None
        self.daemon_id = 0

    # -- signals and heartbeat -------------------------------------------------------

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if not self.stopping.is_set():
            log.info("%s received: stopping", signal.Signals(signum).name)
        self.stopping.set()

    # -- the loop ----------------------------------------------------------------

    def run(self) -> int:
        settings = self.settings
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        device = resolve_device(settings.gpu)
        self.daemon_id = self.store.register_daemon(self.host, os.getpid(), settings.gpu)
        log.info("daemon %d (pid %d) on %s serving %s; store %s", self.daemon_id, os.getpid(), self.host,
                 device.label, self.store.shown_url)
        self._recover()
        heartbeat = Heartbeat(lambda: self.store.daemon_heartbeat(self.daemon_id), settings.heartbeat_s,
                              f"daemon {self.daemon_id}").start()
        if settings.metrics_port is not None:
            from .prometheus import serve_metrics

            port = serve_metrics(self.store, settings.metrics_addr, settings.metrics_port)
            log.info("metrics on http://%s:%d/metrics", settings.metrics_addr, port)
        try:
            while not self.stopping.is_set():
                schedule = self.store.claim_due_schedule(self.daemon_id, self.host, settings.gpu,
                                                         datetime.now(timezone.utc))
                if schedule is not None:
                    self._run_schedule(schedule)
                    continue
                if settings.once:
                    break
                self.stopping.wait(self._sleep_s())
        finally:
            heartbeat.stop()
            self.store.stop_daemon(self.daemon_id)
            log.info("daemon %d stopped", self.daemon_id)
        return EXIT_OK

    def _sleep_s(self) -> float:
        """Until the next due schedule of this host, at most ``poll_s`` (new schedules appear in the store)."""
        now = datetime.now(timezone.utc)
        dues = [as_utc(s.next_due_at) for s in self.store.schedules()
                if s.enabled and s.host == self.host and s.claimed_by is None]
        soonest = min((d for d in dues if d is not None), default=None)
        if soonest is None:
            return self.settings.poll_s
        return min(self.settings.poll_s, max(0.05, (soonest - now).total_seconds()))

    def _recover(self) -> None:
        dead = self.store.recover_dead_daemons(self.host, process_alive, self.settings.stale_after_s)
        for daemon_id in dead:
            log.warning("daemon %d stopped without a clean shutdown; its claimed schedules are due again", daemon_id)
        for iteration_id in self.store.recover_stale(self.host, process_alive):
            log.warning("iteration %d was left running by a dstune process that died; marked interrupted "
                        "(its finished trials are kept)", iteration_id)

    # -- one run -----------------------------------------------------------------

    def _command(self, schedule: Any) -> list[str]:
        gate = self.settings.gate
        command = [sys.executable, "-m", "dstune", "run", schedule.workload_file,  # the store: DSTUNE_DB
                   "--schedule-id", str(schedule.id), "--lock-timeout", _seconds(gate.max_delay_s)]
        if gate.window_s > 0:
            command += ["--wait-idle", "--idle-window", _seconds(gate.window_s), "--idle-util", f"{gate.max_util:g}",
                        "--max-delay", _seconds(gate.max_delay_s)]
        return command + list(schedule.run_args)  # the schedule's own options come last and win

    def _run_schedule(self, schedule: Any) -> None:
        settings = self.settings
        # The store goes by environment, not argv, so its password is not in `ps` or the log.
        env = dict(os.environ, PYTHONUNBUFFERED="1", DSTUNE_DB=self.store.url)
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # NVML's and CUDA's index N are then one GPU
        gpu = schedule.gpu or settings.gpu
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        command = self._command(schedule)
        log.info("schedule %d due (%s): %s", schedule.id, schedule.cron, " ".join(command[2:]))
        started = datetime.now(timezone.utc) - timedelta(seconds=1)
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.store.daemon_heartbeat(self.daemon_id, schedule_id=schedule.id, note=f"running schedule {schedule.id}")
        try:
            self.child = child = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True, preexec_fn=lambda: die_with_parent(signal.SIGTERM))
        except OSError as exc:
            self._finish(schedule, "failed", f"could not start dstune run: {exc}", None, due_next=True)
            return
        reader = threading.Thread(target=self._forward, args=(child, schedule.id, tail), daemon=True)
        reader.start()
        stop_sent = None
        while child.poll() is None:
            if self.stopping.is_set():
                if stop_sent is None:
                    log.info("stopping schedule %d's run (pid %d)", schedule.id, child.pid)
                    child.send_signal(signal.SIGTERM)
                    stop_sent = time.monotonic()
                elif time.monotonic() - stop_sent > settings.stop_grace_s:
                    log.warning("run of schedule %d did not stop within %.0f s: killed", schedule.id,
                                settings.stop_grace_s)
                    try:
                        os.killpg(child.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            try:
                child.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
        reader.join(timeout=2)
        self.child = None
        iteration = self.store.iteration_of_process(self.host, child.pid, started)
        if stop_sent is not None and iteration is not None and iteration.status == "running":
            self.store.recover_stale(self.host, process_alive)  # it was killed before it could record itself
            iteration = self.store.iteration(iteration.id)
        self._conclude(schedule, child.returncode, iteration, list(tail), stopped=stop_sent is not None)
        self.store.daemon_heartbeat(self.daemon_id, schedule_id=None, note=None)

    def _forward(self, child: subprocess.Popen[bytes], schedule_id: int, tail: deque[str]) -> None:
        assert child.stdout is not None
        for raw in child.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                tail.append(line)
                log.info("schedule %d | %s", schedule_id, line)

    def _conclude(self, schedule: Any, code: int, iteration: Any, tail: list[str], stopped: bool) -> None:
        iteration_id = iteration.id if iteration is not None else None
        error = "\n".join(tail[-10:]) or None
        if code in (EXIT_OK, EXIT_REGRESSION) and iteration is not None and iteration.status == "completed":
            result = iteration.decision or iteration.status  # done, even if a stop signal came just after
            if iteration.regression:
                result += ", regression"
            self._finish(schedule, result, None, iteration_id, due_next=True)
        elif stopped or code in (EXIT_INTERRUPTED, -signal.SIGTERM, -signal.SIGKILL):
            # Not the schedule's fault: due again as it was, at the next start.
            self._finish(schedule, "interrupted", None, iteration_id, due_next=False, counted=False)
        elif code == EXIT_DEFERRED:
            retry = datetime.now(timezone.utc) + timedelta(seconds=self.settings.retry_after_s)
            due = min(retry, next_due(schedule.cron, schedule.timezone, datetime.now(timezone.utc)))
            log.warning("schedule %d deferred (device busy); next try %s", schedule.id, f"{due:%Y-%m-%d %H:%M} UTC")
            self._finish(schedule, "deferred", error, iteration_id, due_at=due, counted=False)
        else:
            what = "refused its input" if code == EXIT_USAGE else f"failed (exit {code})"
            log.error("run of schedule %d %s:\n%s", schedule.id, what, error or "(no output)")
            self._finish(schedule, "error" if code == EXIT_USAGE else "failed", error, iteration_id, due_next=True)

    def _finish(self, schedule: Any, result: str, error: str | None, iteration_id: int | None, *,
                due_next: bool = False, due_at: datetime | None = None, counted: bool = True) -> None:
        if due_next:
            due_at = next_due(schedule.cron, schedule.timezone, datetime.now(timezone.utc))
        self.store.finish_schedule_run(schedule.id, self.daemon_id, result=result, next_due_at=due_at,
                                       iteration_id=iteration_id, error=error, counted=counted)
        log.info("schedule %d: %s%s%s", schedule.id, result,
                 f" (iteration {iteration_id})" if iteration_id else "",
                 f"; next due {due_at:%Y-%m-%d %H:%M} UTC" if due_at else "; due again at the next start")
