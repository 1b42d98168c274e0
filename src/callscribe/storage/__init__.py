"""Storage of calls, finals and call events (SQLite by default, PostgreSQL by URL). See :class:`Store`."""

from __future__ import annotations

from callscribe.storage.store import Store

__all__ = ["Store"]
