"""Alembic environment of callscribe's store.

:func:`callscribe.storage.migrate.upgrade` runs it with an open connection (``config.attributes
["connection"]``) already holding the migration lock. Run by hand (``alembic revision --autogenerate``
with ``-x url=…`` or ``DATABASE_URL``), it opens its own async engine.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from callscribe.storage.migrate import include_object
from callscribe.storage.models import Base

target_metadata = Base.metadata


def run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
        include_object=include_object,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(run_with)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("callscribe migrations run online only (Store.start() applies them)")

connection = context.config.attributes.get("connection")
if connection is not None:
    run_with(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get(
        "DATABASE_URL", "sqlite+aiosqlite:///callscribe.db"
    )
    asyncio.run(_run_standalone(url))
