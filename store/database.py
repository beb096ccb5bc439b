"""Open a store: the engine, the schema, SQLite's WAL mode and busy timeout.

SQLite is the embedded default (``./dstune.db``); any SQLAlchemy URL works,
PostgreSQL being the multi-host store.  A file that is not a database, or one
written by a newer dstune, is refused with a clear error and left untouched.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Callable, TypeVar

from sqlalchemy import create_engine, event, inspect, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DatabaseError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.orm import Session, sessionmaker

from dstune.errors import UsageError

from .models import SCHEMA_VERSION, Base, Meta

DEFAULT_DB = "./dstune.db"
BUSY_TIMEOUT_S = 60


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def resolve_url(db: str | None) -> str:
    """``--db`` beats ``DSTUNE_DB`` beats ``./dstune.db``; a bare path means SQLite."""
    value = db or os.environ.get("DSTUNE_DB") or DEFAULT_DB
    if "://" not in value:
        value = "sqlite:///" + str(Path(value).expanduser())
    try:
        parsed = make_url(value)
        if parsed.drivername == "postgresql" and _installed("psycopg") and not _installed("psycopg2"):
            # SQLAlchemy's default PostgreSQL driver is psycopg2; dstune installs psycopg 3 (`dstune[postgres]`).
            value = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        make_url(value).get_dialect()
    except NoSuchModuleError:
        raise UsageError(
            f"database URL {value!r} names a database SQLAlchemy does not know (or whose driver is not "
            "installed). Use a file path, sqlite:///path.db or postgresql://user@host/dbname."
        ) from None
    except (ArgumentError, ValueError):
        raise UsageError(
            f"database URL {value!r} is not a valid SQLAlchemy URL. Use a file path, sqlite:///path.db "
            "or postgresql://user@host/dbname."
        ) from None
    return value


def _sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _on_sqlite_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


class StoreMissing(UsageError):
    """A command that only reads found no SQLite file where the store should be (it never creates one)."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"no dstune store at {path}")
        self.path = path


def make_engine(url: str, create: bool = True) -> Engine:
    path = _sqlite_path(url)
    if path is not None and not create and not path.exists():
        raise StoreMissing(path)
    if path is not None:
        if not path.parent.exists():
            raise UsageError(
                f"database {path}: folder {path.parent} does not exist. Create it or choose another --db."
            )
        if not path.exists():
            try:
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            except OSError as exc:
                raise UsageError(
                    f"database {path} cannot be created ({exc.strerror}). Choose a writable folder with --db."
                ) from None
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})
        event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    return create_engine(url, pool_pre_ping=True)


T = TypeVar("T")
SETUP_ATTEMPTS = 3


def lost_setup_race(exc: Exception) -> bool:
    """Whether ``exc`` is another process having created the same table or row first, or writing it now.

    SQLite in WAL mode refuses at once, without waiting out the busy timeout, a
    transaction that read before another process's write and then writes
    itself ("database is locked"): six runs opening a fresh store together on
    a loaded 2-core CI host met it in Optuna's version stamp.
    """
    # PostgreSQL reports a table created meanwhile as DuplicateTable, a ProgrammingError; SQLite as OperationalError.
    return isinstance(exc, IntegrityError) or (
        isinstance(exc, (OperationalError, ProgrammingError)) and "already exists" in str(exc)) or (
        isinstance(exc, OperationalError) and "database is locked" in str(exc))


def first_use(setup: Callable[[], T]) -> T:
    """Run a database's first-time setup (tables, version stamps), again if a concurrent process won the race.

    Table creation checks, then creates: two runs opening a fresh database
    together both find nothing and both create, and the second is refused
    (table already exists, or a duplicate version row).  The retry finds what
    the first one made.
    """
    for attempt in range(SETUP_ATTEMPTS):
        try:
            return setup()
        except (IntegrityError, OperationalError, ProgrammingError) as exc:
            if attempt == SETUP_ATTEMPTS - 1 or not lost_setup_race(exc):
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def _create_tables(engine: Engine) -> None:
    Base.metadata.create_all(engine)
    with Session(engine) as session, session.begin():
        meta = session.get(Meta, "schema_version")
        if meta is None:
            session.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
        elif int(meta.value) < SCHEMA_VERSION:
            meta.value = str(SCHEMA_VERSION)


def init_schema(engine: Engine, url: str) -> None:
    """Create missing tables, migrate older schemas; refuse databases from a newer schema."""
    where = _sqlite_path(url) or make_url(url).render_as_string(hide_password=True)
    try:
        tables = set(inspect(engine).get_table_names())
        found = SCHEMA_VERSION
        if "dstune_meta" in tables:
            with Session(engine) as session:
                row = session.scalar(select(Meta).where(Meta.key == "schema_version"))
                found = int(row.value) if row else SCHEMA_VERSION
            if found > SCHEMA_VERSION:
                raise UsageError(
                    f"database {where} was written by a newer dstune (schema {found}; this dstune knows "
                    f"{SCHEMA_VERSION}). Upgrade dstune, or point --db at another database."
                )
            if found < SCHEMA_VERSION:
                from .migrations import migrate

                with engine.begin() as connection:
                    migrate(connection, found, SCHEMA_VERSION)
        first_use(lambda: _create_tables(engine))
    except (DatabaseError, OperationalError) as exc:
        reason = str(exc.orig) if getattr(exc, "orig", None) is not None else str(exc)
        raise UsageError(
            f"database {where} cannot be opened: {reason}. If it is not a dstune database, choose another "
            "--db; nothing was written to it."
        ) from None


def open_engine(db: str | None, create: bool = True) -> tuple[str, Engine, sessionmaker[Session]]:
    """The engine of the store at ``db``; with ``create=False`` a missing SQLite file raises :class:`StoreMissing`."""
    url = resolve_url(db)
    engine = make_engine(url, create)
    init_schema(engine, url)
    return url, engine, sessionmaker(engine, expire_on_commit=False)
