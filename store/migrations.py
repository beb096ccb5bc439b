"""Schema migrations: bring a database written by an older dstune up to date.

Each step is written against the schema as it was (not the current models),
uses Alembic's operations, and is idempotent (it skips what is already
there), so a migration cut off half-way simply completes on the next open.
New tables need no step: ``create_all`` adds them.  Rows are never dropped.
"""

from __future__ import annotations

from typing import Callable

from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    String,
    Text,
    inspect,
)
from sqlalchemy.engine import Connection


def _add_columns(op: Operations, connection: Connection, table: str, columns: list[Column]) -> None:
    present = {c["name"] for c in inspect(connection).get_columns(table)}
    for column in columns:
        if column.name not in present:
            op.add_column(table, column)


def _to_2(op: Operations, connection: Connection) -> None:
    """Schema 2 (PDCA): the iteration's plan, check and decision."""
    _add_columns(op, connection, "dstune_iterations", [
        Column("previous_iteration_id", Integer), Column("fingerprint_diff", JSON),
        Column("incumbent_config", JSON), Column("incumbent_source", String(100)),
        Column("select_policy", String(100)), Column("decision", String(20)), Column("reason", Text),
        Column("speedup", Float), Column("speedup_low", Float), Column("speedup_high", Float),
        Column("regression", Boolean), Column("check", JSON),
    ])


def _to_3(op: Operations, connection: Connection) -> None:
    """Schema 3: the pid of the process running an iteration, to recover from one that was killed."""
    _add_columns(op, connection, "dstune_iterations", [Column("pid", Integer)])


def _to_4(op: Operations, connection: Connection) -> None:
    """Schema 4 (daemon): iteration heartbeats and the schedule an iteration ran for.

    The schedule and daemon tables are new, so ``create_all`` makes them.
    """
    _add_columns(op, connection, "dstune_iterations", [Column("heartbeat_at", DateTime(timezone=True)),
                                                      Column("schedule_id", Integer)])


BYTE_COLUMNS = {
    "dstune_iterations": ("memory_budget_bytes",),
    "dstune_trials": ("peak_memory_bytes", "peak_allocated", "peak_reserved"),
    "dstune_measurements": ("peak_memory_bytes",),
    "dstune_applied": ("peak_memory_bytes",),
}


def _to_5(op: Operations, connection: Connection) -> None:
    """Schema 5: byte counts are 64-bit, as a GPU's memory is.

    SQLite's INTEGER already holds 64 bits, so only other databases
    (PostgreSQL's INTEGER is 32-bit: 2 GiB) have their columns widened;
    widening a column that is already BIGINT changes nothing.
    """
    if connection.dialect.name == "sqlite":
        return
    present = set(inspect(connection).get_table_names())
    for table, columns in BYTE_COLUMNS.items():
        if table in present:
            for column in columns:
                op.alter_column(table, column, type_=BigInteger, existing_nullable=True)


def _to_6(op: Operations, connection: Connection) -> None:
    """Schema 6 (scale-out): trial claims and the Do deadline shared by workers; who ran a trial, on which GPU model.

    Applied rows written before name no GPU model: they hold for every
    model until that model has a newer row of its own.
    """
    present = set(inspect(connection).get_table_names())
    for table, columns in (
        ("dstune_iterations", [Column("trials_claimed", Integer, nullable=False, server_default="0"),
                               Column("do_until", DateTime(timezone=True)), Column("gpu_model", String(200))]),
        ("dstune_trials", [Column("pid", Integer), Column("gpu_model", String(200)), Column("environment_id", Integer)]),
        ("dstune_applied", [Column("gpu_model", String(200))]),  # absent before schema 2: create_all makes it
    ):
        if table in present:
            _add_columns(op, connection, table, columns)


def _to_7(op: Operations, connection: Connection) -> None:
    """Schema 7 (search): the knob values an iteration stopped proposing after they crashed."""
    _add_columns(op, connection, "dstune_iterations", [Column("learned", JSON)])


def _to_8(op: Operations, connection: Connection) -> None:
    """Schema 8 (memory model): what the Plan phase measured of each configuration's memory needs."""
    _add_columns(op, connection, "dstune_iterations", [Column("memory_model", JSON)])


STEPS: dict[int, Callable[[Operations, Connection], None]] = {2: _to_2, 3: _to_3, 4: _to_4, 5: _to_5, 6: _to_6,
                                                             7: _to_7, 8: _to_8}


def migrate(connection: Connection, found: int, target: int) -> None:
    """Run every step after schema ``found`` up to ``target``."""
    op = Operations(MigrationContext.configure(connection))
    for version in range(found + 1, target + 1):
        STEPS[version](op, connection)
