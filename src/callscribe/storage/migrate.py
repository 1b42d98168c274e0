"""Applies the Alembic migrations in code (no alembic.ini): idempotent and safe when processes race.

Two instances starting at once serialise on a lock taken *before* Alembic reads the current
revision, so the second one finds the schema at head and does nothing:
PostgreSQL ``pg_advisory_xact_lock`` (migrations are transactional there), SQLite ``BEGIN IMMEDIATE``
(the database write lock; waits up to the connection's busy timeout).
"""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

SCRIPT_LOCATION = Path(__file__).with_name("migrations")
# Any constant shared by every callscribe process: "callscri" as a big-endian int64.
ADVISORY_LOCK_KEY = int.from_bytes(b"callscri", "big") & 0x7FFF_FFFF_FFFF_FFFF


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Autogenerate filter: the full-text objects (FTS5 table and its shadow tables, the tsvector
    index) are created by hand in the migrations and have no model."""
    return not (name or "").startswith("utterances_fts") and name != "ix_utterances_text_fts"


def alembic_config() -> Config:
    """An Alembic config pointing at the packaged migrations."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION).replace("%", "%%"))
    cfg.set_main_option("path_separator", "os")
    return cfg


def _upgrade(connection: Connection, revision: str) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)


# Alembic keeps the running migration in module globals (alembic.context, alembic.op): two upgrades
# interleaving in one process, even on different databases, would trip over each other.
_local_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the database at ``engine`` to ``revision`` under the migration lock, in one transaction."""
    lock = _local_locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock, engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
        elif conn.dialect.name == "sqlite":
            # The driver does not BEGIN before DDL; take the write lock ourselves (commit ends it).
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
        await conn.run_sync(_upgrade, revision)
        await conn.commit()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at (None before the first migration)."""
    from alembic.runtime.migration import MigrationContext

    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
