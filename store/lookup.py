"""Opening the store a reading command names, without ever creating one.

:mod:`dstune.config_file` decides *which* store (and stays free of
SQLAlchemy, since the planning and daemon processes read it first); this
opens it for the commands that only read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from dstune.config_file import find_settings, resolve_db
from dstune.errors import UsageError

if TYPE_CHECKING:
    from .queries import Store


def open_existing_store(db: str | None, start: Path | None = None) -> "Store":
    """The store a reading command uses (:func:`resolve_db`), never created: a missing one is a usage error that
    names every place looked, in order, and ``DSTUNE_CONFIG`` (production's way round the store)."""
    from .database import StoreMissing
    from .queries import Store

    settings = find_settings(start or Path.cwd())
    try:
        return Store(resolve_db(db, start), create=False)
    except StoreMissing as exc:
        env = os.environ.get("DSTUNE_DB")
        file_db = settings.values.get("db")
        places = [f"--db {db}" if db else "--db (not given)"]
        if not db:
            places.append(f"DSTUNE_DB={env}" if env else "DSTUNE_DB (not set)")
        if not (db or env):
            places.append(f"{settings.origin('db')}: db = {file_db}" if file_db is not None else
                          f"{settings.path} (no db key)" if settings.path else "a config file (none found)")
        if not (db or env) and file_db is None:
            places.append(f"./dstune.db ({Path.cwd() / 'dstune.db'})")
        places_text = "; ".join(places)
        raise UsageError(
            f"{exc} (looked, in order, at {places_text}). Nothing was created. Point --db or DSTUNE_DB at the store a "
            "`dstune run` wrote, run from the folder that holds its dstune.db, or set DSTUNE_CONFIG to a file "
            "from `dstune export` to use a configuration without a store.") from None
