"""Every read and write dstune makes to its tables.

Each trial is committed in its own transaction the moment it ends, so a
killed run loses at most the trial in flight.
"""

from __future__ import annotations

from typing import Any, Sequence

import optuna
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from .database import BUSY_TIMEOUT_S, open_engine
from .models import EnvironmentRow, IterationRow, TrialRow, WorkloadRow, utcnow


class Store:
    """dstune's tables and Optuna's storage on one database URL."""

    def __init__(self, db: str | None = None) -> None:
        self.url, self.engine, self.sessions = open_engine(db)

    def optuna_storage(self) -> optuna.storages.RDBStorage:
        """Optuna's RDB storage on the same database (its own tables, same file)."""
        kwargs: dict[str, Any] = {}
        if make_url(self.url).get_backend_name() == "sqlite":
            kwargs = {"connect_args": {"timeout": BUSY_TIMEOUT_S}}
        return optuna.storages.RDBStorage(self.url, engine_kwargs=kwargs)

    # -- writes ---------------------------------------------------------------

    def workload_id(self, name: str, source_path: str) -> int:
        with self.sessions.begin() as session:
            row = session.scalar(select(WorkloadRow).where(WorkloadRow.name == name))
            if row is None:
                row = WorkloadRow(name=name, source_path=source_path)
                session.add(row)
                session.flush()
            else:
                row.source_path = source_path
            return row.id

    def environment_id(self, fingerprint: str, facts: dict[str, Any]) -> int:
        with self.sessions.begin() as session:
            row = session.scalar(select(EnvironmentRow).where(EnvironmentRow.fingerprint == fingerprint))
            if row is None:
                row = EnvironmentRow(fingerprint=fingerprint, facts=facts)
                session.add(row)
                session.flush()
            return row.id

    def start_iteration(self, **fields: Any) -> int:
        with self.sessions.begin() as session:
            row = IterationRow(**fields)
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

    def record_trial(self, iteration_id: int, **fields: Any) -> int:
        """Insert one finished trial and commit it at once."""
        metrics = fields.get("metrics") or {}
        for column in TrialRow.METRIC_COLUMNS:
            if column not in fields and metrics.get(column) is not None:
                value = metrics[column]
                fields[column] = int(value) if column in ("peak_memory_bytes", "peak_allocated", "peak_reserved",
                                                          "micro_batch", "accumulation") else value
        with self.sessions.begin() as session:
            row = TrialRow(iteration_id=iteration_id, ended_at=utcnow(), **fields)
            session.add(row)
            session.flush()
            return row.id

    # -- reads ----------------------------------------------------------------

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
