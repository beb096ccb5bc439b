"""Every read and write dstune makes to its tables.

Each trial is committed in its own transaction the moment it ends, so a
killed run loses at most the trial in flight.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Callable, Sequence

import optuna
from sqlalchemy import func, or_, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from dstune.utc import as_utc, utcnow

from .database import BUSY_TIMEOUT_S, first_use, open_engine
from .models import AppliedRow, EnvironmentRow, IterationRow, MeasurementRow, TrialRow, WorkloadRow
from .schedule_queries import ScheduleQueries

STALE_AFTER_S = 300.0  # an iteration whose heartbeat is older than this has lost its process


class Store(ScheduleQueries):
    """dstune's tables and Optuna's storage on one database URL."""

    def __init__(self, db: str | None = None) -> None:
        self.url, self.engine, self.sessions = open_engine(db)

    @property
    def shown_url(self) -> str:
        """The URL for messages, reports and status: the password replaced by ``***``."""
        return make_url(self.url).render_as_string(hide_password=True)

    def optuna_storage(self, heartbeat_s: int | None = None, grace_s: int | None = None,
                       on_stale: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None
                       ) -> optuna.storages.RDBStorage:
        """Optuna's RDB storage on the same database (its own tables, same file).

        With ``heartbeat_s``, running trials are expected to beat that often;
        Optuna's ``fail_stale_trials`` fails one silent for ``grace_s`` and
        calls ``on_stale`` with it.  Optuna creates its tables and stamps its
        version on first use, racing like ours when two runs start together
        on a fresh database.
        """
        kwargs: dict[str, Any] = {}
        if make_url(self.url).get_backend_name() == "sqlite":
            kwargs = {"connect_args": {"timeout": BUSY_TIMEOUT_S}}
        return first_use(lambda: optuna.storages.RDBStorage(
            self.url, engine_kwargs=kwargs, heartbeat_interval=heartbeat_s, grace_period=grace_s,
            heartbeat_stale_trial_callback=on_stale))

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

    def mark_stale(self, study_name: str, number: int, why: str) -> int | None:
        """Mark the running trial ``number`` of the study's iteration as ``stale``; its row id, or None."""
        with self.sessions.begin() as session:
            row = session.scalar(
                select(TrialRow).join(IterationRow).where(IterationRow.study_name == study_name,
                                                          TrialRow.number == number, TrialRow.status == "running"))
            if row is None:
                return None
            row.status, row.ended_at = "stale", utcnow()
            row.error = f"{why} (it ran on {row.host}, pid {row.pid}, GPU {row.gpu or '-'})"
            return row.id

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

    def applied(self, workload: str, gpu_model: str | None = None) -> AppliedRow | None:
        """The configuration in production for ``workload``: the newest applied row.

        With ``gpu_model``, the newest one measured on that model or naming
        no model (written before schema 6, which holds for every model).
        """
        with self.sessions() as session:
            query = (select(AppliedRow).join(WorkloadRow).where(WorkloadRow.name == workload)
                     .order_by(AppliedRow.id.desc()).limit(1))
            if gpu_model is not None:
                query = query.where(or_(AppliedRow.gpu_model == gpu_model, AppliedRow.gpu_model.is_(None)))
            return session.scalar(query)

    def applied_models(self, workload: str) -> list[str | None]:
        """The GPU models ``workload`` has an applied configuration for (None: rows from before schema 6)."""
        with self.sessions() as session:
            query = (select(AppliedRow.gpu_model).join(WorkloadRow).where(WorkloadRow.name == workload)
                     .distinct())
            return sorted(session.scalars(query).all(), key=lambda m: (m is None, m or ""))

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

    def iteration_of_study(self, study_name: str) -> IterationRow | None:
        """The newest iteration whose Optuna study is ``study_name`` (what a worker joins)."""
        with self.sessions() as session:
            return session.scalar(select(IterationRow).where(IterationRow.study_name == study_name)
                                  .order_by(IterationRow.id.desc()).limit(1))

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
