"""What every group of store queries shares: the session factory, and one way to insert or update a row.

Each write runs in its own transaction and commits before it returns, so a
killed process loses at most the write in flight.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from .models import Base

Row = TypeVar("Row", bound=Base)


class Tables:
    """The base of :class:`dstune.store.Store` and its query mixins."""

    sessions: sessionmaker[Session]

    def _insert(self, row: Base) -> int:
        """Insert ``row`` and commit; its new id."""
        with self.sessions.begin() as session:
            session.add(row)
            session.flush()
            return int(row.id)  # type: ignore[attr-defined]

    def _update(self, model: type[Row], row_id: int, **fields: Any) -> Row | None:
        """Set ``fields`` on row ``row_id`` of ``model`` and commit; the row, or None when there is none."""
        with self.sessions.begin() as session:
            row = session.get(model, row_id)
            if row is not None:
                for key, value in fields.items():
                    setattr(row, key, value)
            return row
