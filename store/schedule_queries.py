"""Reads and writes of the daemon's tables: schedules, daemons and heartbeats.

Two daemons may share one database.  A due schedule is claimed with one
conditional UPDATE (``claimed_by IS NULL``), so it runs once even when both
see it due at the same moment; a claim whose daemon stopped beating is
released by the next daemon that starts.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Callable, Sequence

from sqlalchemy import select, update

from dstune.utc import as_utc, utcnow

from .models import DaemonRow, ScheduleRow
from .tables import Tables


class ScheduleQueries(Tables):
    """Mixed into :class:`dstune.store.Store`."""

    # -- schedules --------------------------------------------------------------

    def add_schedule(self, **fields: Any) -> int:
        return self._insert(ScheduleRow(**fields))

    def schedules(self) -> Sequence[ScheduleRow]:
        with self.sessions() as session:
            return session.scalars(select(ScheduleRow).order_by(ScheduleRow.id)).all()

    def schedule(self, schedule_id: int) -> ScheduleRow | None:
        with self.sessions() as session:
            return session.get(ScheduleRow, schedule_id)

    def update_schedule(self, schedule_id: int, **fields: Any) -> bool:
        return self._update(ScheduleRow, schedule_id, **fields) is not None

    def remove_schedule(self, schedule_id: int) -> bool:
        """Delete a schedule; its iterations stay (they keep its id in ``schedule_id``)."""
        with self.sessions.begin() as session:
            row = session.get(ScheduleRow, schedule_id)
            if row is None:
                return False
            session.delete(row)
            return True

    def claim_due_schedule(self, daemon_id: int, host: str, gpu: str | None, now: datetime) -> ScheduleRow | None:
        """Claim the most overdue enabled schedule of ``host`` for ``gpu``; None if nothing is due.

        A daemon serving a GPU takes schedules pinned to that GPU and those
        pinned to none; one serving no particular GPU takes only the latter.
        """
        with self.sessions() as session:
            query = (select(ScheduleRow.id).where(ScheduleRow.enabled.is_(True), ScheduleRow.host == host,
                                                  ScheduleRow.claimed_by.is_(None), ScheduleRow.next_due_at <= now)
                     .order_by(ScheduleRow.next_due_at, ScheduleRow.id))
            query = query.where(ScheduleRow.gpu.is_(None) | (ScheduleRow.gpu == gpu)) if gpu is not None \
                else query.where(ScheduleRow.gpu.is_(None))
            candidates = list(session.scalars(query))
        for schedule_id in candidates:
            with self.sessions.begin() as session:
                won = session.execute(
                    update(ScheduleRow).where(ScheduleRow.id == schedule_id, ScheduleRow.claimed_by.is_(None))
                    .values(claimed_by=daemon_id, claimed_at=now)).rowcount
            if won:
                return self.schedule(schedule_id)
        return None

    def finish_schedule_run(self, schedule_id: int, daemon_id: int, *, result: str, next_due_at: datetime | None,
                            iteration_id: int | None, error: str | None, counted: bool = True) -> None:
        """Release a claim and record how the run ended; ``next_due_at=None`` leaves the due time as it was."""
        with self.sessions.begin() as session:
            row = session.get(ScheduleRow, schedule_id)
            if row is None or row.claimed_by != daemon_id:  # removed meanwhile, or the claim was taken over
                return
            row.claimed_by, row.claimed_at = None, None
            row.last_run_at, row.last_result, row.last_error = utcnow(), result, error
            if iteration_id is not None:
                row.last_iteration_id = iteration_id
            if counted:
                row.runs += 1
            if next_due_at is not None:
                row.next_due_at = next_due_at

    # -- daemons ----------------------------------------------------------------

    def register_daemon(self, host: str, pid: int, gpu: str | None) -> int:
        return self._insert(DaemonRow(host=host, pid=pid, gpu=gpu, status="running"))

    def daemon_heartbeat(self, daemon_id: int, **fields: Any) -> None:
        with self.sessions.begin() as session:
            session.execute(update(DaemonRow).where(DaemonRow.id == daemon_id)
                            .values(heartbeat_at=utcnow(), **fields))

    def stop_daemon(self, daemon_id: int, status: str = "stopped") -> None:
        with self.sessions.begin() as session:
            session.execute(update(DaemonRow).where(DaemonRow.id == daemon_id)
                            .values(status=status, stopped_at=utcnow(), schedule_id=None, note=None))

    def daemons(self) -> Sequence[DaemonRow]:
        with self.sessions() as session:
            return session.scalars(select(DaemonRow).order_by(DaemonRow.id)).all()

    def recover_dead_daemons(self, host: str, alive: Callable[[int], bool], stale_after_s: float) -> list[int]:
        """Mark daemons that stopped beating as dead and release the schedules they had claimed.

        A daemon is dead when its heartbeat is older than ``stale_after_s``, or
        when it ran on ``host`` and its process is gone.  Returns their ids.
        """
        cutoff = utcnow() - timedelta(seconds=stale_after_s)
        dead = []
        with self.sessions.begin() as session:
            for row in session.scalars(select(DaemonRow).where(DaemonRow.status == "running")):
                gone = (row.host == host and not alive(row.pid)) or as_utc(row.heartbeat_at) < cutoff
                if gone:
                    row.status, row.stopped_at = "dead", utcnow()
                    row.note = "stopped beating without a clean shutdown; found by a later daemon"
                    dead.append(row.id)
            if dead:
                session.execute(update(ScheduleRow).where(ScheduleRow.claimed_by.in_(dead))
                                .values(claimed_by=None, claimed_at=None))
        return dead
