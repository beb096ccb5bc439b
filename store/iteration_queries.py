"""The queries of iterations: their life (start, heartbeat, claims, conclusion, recovery) and their reads.

An iteration row is the record of one ``dstune run``; the Do phase's
processes share their trial count and deadline through it, the daemon and
``dstune status`` read who is running, and Prometheus counts the outcomes.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Callable, Sequence

from sqlalchemy import func, select, update

from dstune.utc import as_utc, utcnow

from .models import AppliedRow, IterationRow, TrialRow, WorkloadRow
from .tables import Tables

STALE_AFTER_S = 300.0  # an iteration whose heartbeat is older than this has lost its process


class IterationQueries(Tables):
    """Mixed into :class:`dstune.store.Store`."""

    # -- writes ---------------------------------------------------------------

    def start_iteration(self, **fields: Any) -> int:
        return self._insert(IterationRow(heartbeat_at=utcnow(), **fields))

    def update_iteration(self, iteration_id: int, **fields: Any) -> None:
        self._update(IterationRow, iteration_id, **fields)

    def finish_iteration(self, iteration_id: int, status: str, **fields: Any) -> None:
        self.update_iteration(iteration_id, status=status, ended_at=utcnow(), **fields)

    def recover_stale(self, host: str, alive: Callable[[int], bool], stale_after_s: float = STALE_AFTER_S
                      ) -> list[int]:
        """Mark running iterations whose process is gone as interrupted, with their running trials.

        Gone: on ``host`` with no live process of its pid, or (any host) no
        heartbeat for ``stale_after_s``.  Returns the ids of the iterations recovered.
        """
        recovered = []
        cutoff = utcnow() - timedelta(seconds=stale_after_s)
        with self.sessions.begin() as session:
            for iteration in session.scalars(select(IterationRow).where(IterationRow.status == "running")).all():
                beat = as_utc(iteration.heartbeat_at)
                if iteration.host == host and iteration.pid is not None and not alive(iteration.pid):
                    why = f"the dstune process (pid {iteration.pid} on {host}) ended"
                elif beat is not None and beat < cutoff:
                    why = (f"the dstune process (pid {iteration.pid} on {iteration.host}) stopped beating "
                           f"at {beat:%Y-%m-%d %H:%M:%S} UTC")
                else:
                    continue
                iteration.status, iteration.ended_at = "interrupted", utcnow()
                iteration.error = (f"{why} without finishing the {iteration.phase} phase; recovered by a later "
                                   "run; nothing was promoted")
                for trial in session.scalars(select(TrialRow).where(
                        TrialRow.iteration_id == iteration.id, TrialRow.status == "running")):
                    trial.status, trial.ended_at = "interrupted", utcnow()
                    trial.error = "the dstune process died while this trial ran"
                recovered.append(iteration.id)
        return recovered

    def claim_trial(self, iteration_id: int, limit: int) -> int | None:
        """Take one of the iteration's ``limit`` trials for this process: its number (1-based), or None.

        One conditional UPDATE, so processes on several hosts never take more
        than ``limit`` between them; None once all are taken or the Do phase
        has ended.
        """
        with self.sessions.begin() as session:
            return session.execute(
                update(IterationRow)
                .where(IterationRow.id == iteration_id, IterationRow.trials_claimed < limit,
                       IterationRow.phase == "do", IterationRow.status == "running")
                .values(trials_claimed=IterationRow.trials_claimed + 1)
                .returning(IterationRow.trials_claimed)
            ).scalar()

    def release_claim(self, iteration_id: int) -> None:
        """Give back a claim that ran no trial (the search had nothing new to offer)."""
        with self.sessions.begin() as session:
            session.execute(update(IterationRow).where(IterationRow.id == iteration_id, IterationRow.trials_claimed > 0)
                            .values(trials_claimed=IterationRow.trials_claimed - 1))

    def conclude_iteration(self, iteration_id: int, applied: dict[str, Any] | None, **fields: Any) -> None:
        """Act, atomically: the iteration's decision and (if any) the newly applied config commit together."""
        with self.sessions.begin() as session:
            row = session.get(IterationRow, iteration_id)
            for key, value in dict(fields, status="completed", phase="done", ended_at=utcnow()).items():
                setattr(row, key, value)
            if applied is not None:
                session.add(AppliedRow(workload_id=row.workload_id, iteration_id=iteration_id, **applied))

    def iteration_heartbeat(self, iteration_id: int) -> None:
        with self.sessions.begin() as session:
            session.execute(update(IterationRow).where(IterationRow.id == iteration_id)
                            .values(heartbeat_at=utcnow()))

    def iteration_of_process(self, host: str, pid: int, since: datetime) -> IterationRow | None:
        """The newest iteration that process ``pid`` on ``host`` started after ``since``."""
        with self.sessions() as session:
            return session.scalar(select(IterationRow).where(
                IterationRow.host == host, IterationRow.pid == pid, IterationRow.started_at >= since)
                .order_by(IterationRow.id.desc()).limit(1))

    def running_iterations(self) -> Sequence[tuple[IterationRow, int]]:
        """Iterations marked running, each with its number of finished trials."""
        with self.sessions() as session:
            rows = session.scalars(select(IterationRow).where(IterationRow.status == "running")
                                   .order_by(IterationRow.id)).all()
            out = []
            for row in rows:
                done = session.scalar(select(func.count()).select_from(TrialRow).where(
                    TrialRow.iteration_id == row.id, TrialRow.status != "running")) or 0
                out.append((row, int(done)))
            return out

    def recent_problems(self, limit: int = 5) -> Sequence[IterationRow]:
        """The newest iterations that failed, were interrupted or deferred."""
        with self.sessions() as session:
            return session.scalars(select(IterationRow).where(
                IterationRow.status.in_(("failed", "interrupted", "deferred")))
                .order_by(IterationRow.id.desc()).limit(limit)).all()

    # -- reads ----------------------------------------------------------------

    def last_iteration(self, workload: str, before: int | None = None, status: str = "completed") -> IterationRow | None:
        """The newest iteration of ``workload`` with that status (older than iteration ``before``, if given)."""
        with self.sessions() as session:
            query = (select(IterationRow).join(WorkloadRow)
                     .where(WorkloadRow.name == workload, IterationRow.status == status))
            if before is not None:
                query = query.where(IterationRow.id < before)
            return session.scalar(query.order_by(IterationRow.id.desc()).limit(1))

    def iteration_of_study(self, study_name: str) -> IterationRow | None:
        """The newest iteration whose Optuna study is ``study_name`` (what a worker joins)."""
        with self.sessions() as session:
            return session.scalar(select(IterationRow).where(IterationRow.study_name == study_name)
                                  .order_by(IterationRow.id.desc()).limit(1))

    def iteration(self, iteration_id: int) -> IterationRow | None:
        with self.sessions() as session:
            return session.get(IterationRow, iteration_id)

    def iteration_number(self, iteration_id: int) -> int:
        """The iteration's place among its workload's iterations, from 1: what users read and give (``--to N``)."""
        with self.sessions() as session:
            workload_id = select(IterationRow.workload_id).where(IterationRow.id == iteration_id).scalar_subquery()
            return int(session.scalar(select(func.count()).select_from(IterationRow).where(
                IterationRow.workload_id == workload_id, IterationRow.id <= iteration_id)) or 0)

    def iterations_of(self, workload: str) -> Sequence[IterationRow]:
        with self.sessions() as session:
            query = (select(IterationRow).join(WorkloadRow).where(WorkloadRow.name == workload)
                     .order_by(IterationRow.id))
            return session.scalars(query).all()

    # -- metrics ------------------------------------------------------------------

    def iteration_results(self) -> list[tuple[str, str, int]]:
        """(workload, result, count): result is the decision of completed iterations, else their status."""
        with self.sessions() as session:
            rows = session.execute(
                select(WorkloadRow.name, IterationRow.status, IterationRow.decision, func.count())
                .join(WorkloadRow).group_by(WorkloadRow.name, IterationRow.status, IterationRow.decision)).all()
        counts: dict[tuple[str, str], int] = {}
        for name, status, decision, count in rows:
            key = (name, decision if status == "completed" and decision else status)
            counts[key] = counts.get(key, 0) + count
        return [(name, result, count) for (name, result), count in sorted(counts.items())]

    def trial_counts(self) -> list[tuple[str, str, int]]:
        """(workload, status, count) over every trial in the database."""
        with self.sessions() as session:
            rows = session.execute(
                select(WorkloadRow.name, TrialRow.status, func.count()).select_from(TrialRow)
                .join(IterationRow, TrialRow.iteration_id == IterationRow.id).join(WorkloadRow)
                .group_by(WorkloadRow.name, TrialRow.status).order_by(WorkloadRow.name, TrialRow.status)).all()
        return [(name, status, count) for name, status, count in rows]
