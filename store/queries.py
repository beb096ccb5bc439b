"""Every read and write dstune makes to its tables.

Each trial is committed in its own transaction the moment it ends, so a
killed run loses at most the trial in flight.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Callable, Sequence

import optuna
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from .database import BUSY_TIMEOUT_S, first_use, open_engine
from .models import AppliedRow, EnvironmentRow, IterationRow, MeasurementRow, TrialRow, WorkloadRow, utcnow
from .schedule_queries import ScheduleQueries, as_utc


STALE_AFTER_S = 300.0  # an iteration whose heartbeat is older than this has lost its process


class Store(ScheduleQueries):
    """dstune's tables and Optuna's storage on one database URL."""

    def __init__(self, db: str | None = None) -> None:
        self.url, self.engine, self.sessions = open_engine(db)

    @property
    def shown_url(self) -> str:
        """The URL for messages, reports and status: the password replaced by ``***``."""
        return make_url(self.url).render_as_string(hide_password=True)

    def optuna_storage(self) -> optuna.storages.RDBStorage:
        """Optuna's RDB storage on the same database (its own tables, same file).

        Optuna creates its tables and stamps its version on first use, racing
        like ours when two runs start together on a fresh database.
        """
        kwargs: dict[str, Any] = {}
        if make_url(self.url).get_backend_name() == "sqlite":
            kwargs = {"connect_args": {"timeout": BUSY_TIMEOUT_S}}
        return first_use(lambda: optuna.storages.RDBStorage(self.url, engine_kwargs=kwargs))

    # -- writes ---------------------------------------------------------------

    def _get_or_create(self, find_or_add: Callable[[Session], int]) -> int:
        """Run ``find_or_add`` in a transaction, again if a concurrent run inserted the same row first."""

        def attempt() -> int:
            with self.sessions.begin() as session:
                return find_or_add(session)

        return first_use(attempt)

    def workload_id(self, name: str, source_path: str) -> int:
        def find_or_add(session: Session) -> int:
            row = session.scalar(select(WorkloadRow).where(WorkloadRow.name == name))
            if row is None:
                row = WorkloadRow(name=name, source_path=source_path)
                session.add(row)
                session.flush()
            else:
                row.source_path = source_path
            return row.id

        return self._get_or_create(find_or_add)

    def environment_id(self, fingerprint: str, facts: dict[str, Any]) -> int:
        def find_or_add(session: Session) -> int:
            row = session.scalar(select(EnvironmentRow).where(EnvironmentRow.fingerprint == fingerprint))
            if row is None:
                row = EnvironmentRow(fingerprint=fingerprint, facts=facts)
                session.add(row)
                session.flush()
            return row.id

        return self._get_or_create(find_or_add)

    def start_iteration(self, **fields: Any) -> int:
        with self.sessions.begin() as session:
            row = IterationRow(heartbeat_at=utcnow(), **fields)
            session.add(row)
            session.flush()
            return row.id

    def update_iteration(self, iteration_id: int, **fields: Any) -> None:
        with self.sessions.begin() as session:
            row = session.get(IterationRow, iteration_id)
            for key, value in fields.items():
                setattr(row, key, value)

    def finish_iteration(self, iteration_id: int, status: str, **fields: Any) -> None:
        self.update_iteration(iteration_id, status=status, ended_at=utcnow(), **fields)

    @staticmethod
    def _with_metric_columns(fields: dict[str, Any]) -> dict[str, Any]:
        metrics = fields.get("metrics") or {}
        for column in TrialRow.METRIC_COLUMNS:
            if column not in fields and metrics.get(column) is not None:
                value = metrics[column]
                fields[column] = int(value) if column in ("peak_memory_bytes", "peak_allocated", "peak_reserved",
                                                          "micro_batch", "accumulation") else value
        return fields

    def record_trial(self, iteration_id: int, **fields: Any) -> int:
        """Insert one finished trial and commit it at once."""
        with self.sessions.begin() as session:
            row = TrialRow(iteration_id=iteration_id, ended_at=utcnow(), **self._with_metric_columns(fields))
            session.add(row)
            session.flush()
            return row.id

    def begin_trial(self, iteration_id: int, **fields: Any) -> int:
        """Insert a trial as ``running`` before it starts, so a killed run leaves a trace of it."""
        with self.sessions.begin() as session:
            row = TrialRow(iteration_id=iteration_id, status="running", **fields)
            session.add(row)
            session.flush()
            return row.id

    def end_trial(self, trial_id: int, **fields: Any) -> None:
        """Record how a trial begun with :meth:`begin_trial` ended, and commit at once."""
        with self.sessions.begin() as session:
            row = session.get(TrialRow, trial_id)
            for key, value in dict(self._with_metric_columns(fields), ended_at=utcnow()).items():
                setattr(row, key, value)

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

    def record_measurement(self, iteration_id: int, **fields: Any) -> int:
        """Insert one Check-phase measurement and commit it at once."""
        metrics = fields.get("metrics") or {}
        for column in ("samples_per_s", "peak_memory_bytes", "energy_per_sample_j"):
            if column not in fields and metrics.get(column) is not None:
                fields[column] = int(metrics[column]) if column == "peak_memory_bytes" else metrics[column]
        with self.sessions.begin() as session:
            row = MeasurementRow(iteration_id=iteration_id, **fields)
            session.add(row)
            session.flush()
            return row.id

    def conclude_iteration(self, iteration_id: int, applied: dict[str, Any] | None, **fields: Any) -> None:
        """Act, atomically: the iteration's decision and (if any) the newly applied config commit together."""
        with self.sessions.begin() as session:
            row = session.get(IterationRow, iteration_id)
            for key, value in dict(fields, status="completed", phase="done", ended_at=utcnow()).items():
                setattr(row, key, value)
            if applied is not None:
                session.add(AppliedRow(workload_id=row.workload_id, iteration_id=iteration_id, **applied))

    def apply_config(self, workload: str, **fields: Any) -> int:
        """Add an applied-config row outside an iteration (a rollback)."""
        with self.sessions.begin() as session:
            workload_row = session.scalar(select(WorkloadRow).where(WorkloadRow.name == workload))
            row = AppliedRow(workload_id=workload_row.id, **fields)
            session.add(row)
            session.flush()
            return row.id

    # -- reads ----------------------------------------------------------------

    def workload_names(self) -> list[str]:
        with self.sessions() as session:
            return list(session.scalars(select(WorkloadRow.name).order_by(WorkloadRow.name)))

    def measurements(self, iteration_id: int) -> Sequence[MeasurementRow]:
        with self.sessions() as session:
            query = (select(MeasurementRow).where(MeasurementRow.iteration_id == iteration_id)
                     .order_by(MeasurementRow.id))
            return session.scalars(query).all()

    def applied(self, workload: str) -> AppliedRow | None:
        """The configuration in production for ``workload``: the newest applied row."""
        history = self.applied_history(workload, newest_first=True, limit=1)
        return history[0] if history else None

    def applied_history(self, workload: str, newest_first: bool = False, limit: int | None = None
                        ) -> Sequence[AppliedRow]:
        with self.sessions() as session:
            order = AppliedRow.id.desc() if newest_first else AppliedRow.id
            query = select(AppliedRow).join(WorkloadRow).where(WorkloadRow.name == workload).order_by(order)
            if limit is not None:
                query = query.limit(limit)
            return session.scalars(query).all()

    def last_iteration(self, workload: str, before: int | None = None, status: str = "completed") -> IterationRow | None:
        """The newest iteration of ``workload`` with that status (older than iteration ``before``, if given)."""
        with self.sessions() as session:
            query = (select(IterationRow).join(WorkloadRow)
                     .where(WorkloadRow.name == workload, IterationRow.status == status))
            if before is not None:
                query = query.where(IterationRow.id < before)
            return session.scalar(query.order_by(IterationRow.id.desc()).limit(1))

    def iteration(self, iteration_id: int) -> IterationRow | None:
        with self.sessions() as session:
            return session.get(IterationRow, iteration_id)

    def trials(self, iteration_id: int, status: str | None = None) -> Sequence[TrialRow]:
        with self.sessions() as session:
            query = select(TrialRow).where(TrialRow.iteration_id == iteration_id).order_by(TrialRow.id)
            if status is not None:
                query = query.where(TrialRow.status == status)
            return session.scalars(query).all()

    def status_counts(self, iteration_id: int) -> dict[str, int]:
        with self.sessions() as session:
            rows = session.execute(
                select(TrialRow.status, func.count()).where(TrialRow.iteration_id == iteration_id)
                .group_by(TrialRow.status)
            ).all()
            return {status: count for status, count in rows}

    def iterations_of(self, workload: str) -> Sequence[IterationRow]:
        with self.sessions() as session:
            query = (select(IterationRow).join(WorkloadRow).where(WorkloadRow.name == workload)
                     .order_by(IterationRow.id))
            return session.scalars(query).all()
