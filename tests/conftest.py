"""Shared fixtures: databases for the store, on SQLite and on a real PostgreSQL.

PostgreSQL: the server at ``CALLSCRIBE_TEST_PG`` (a SQLAlchemy URL of any database on it, for
example ``postgresql+asyncpg://postgres@127.0.0.1:5432/test``), else 127.0.0.1:5432 as user
``postgres`` then ``root`` (trust auth, as .ci/run and the dev machines have it). Each test gets a
fresh database, ``CREATE``d for it and dropped ``WITH (FORCE)`` afterwards; tests that need it are
skipped, saying why, when no server answers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import URL, make_url

from callscribe.storage import Store

PG_ENV = "CALLSCRIBE_TEST_PG"
_pg_server: list[URL | str] = []  # memo: the server URL that answered, or why none did


def _pg_candidates() -> list[URL]:
    if os.environ.get(PG_ENV):
        return [make_url(os.environ[PG_ENV]).set(drivername="postgresql+asyncpg")]
    base = URL.create("postgresql+asyncpg", host="127.0.0.1", port=5432, database="test")
    return [base.set(username=user) for user in ("postgres", "root")]


async def _pg_admin() -> tuple[asyncpg.Connection, URL]:
    """A connection to the test server (for CREATE/DROP DATABASE), or skip the test."""
    if _pg_server and isinstance(_pg_server[0], str):
        pytest.skip(_pg_server[0])
    candidates = [_pg_server[0]] if _pg_server else _pg_candidates()
    errors = []
    for url in candidates:
        assert isinstance(url, URL)
        try:
            conn = await asyncpg.connect(
                host=url.host,
                port=url.port or 5432,
                user=url.username,
                password=url.password,
                database=url.database or "postgres",
                timeout=5,
            )
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            errors.append(f"{url.username}@{url.host}:{url.port}: {exc}")
            continue
        _pg_server[:] = [url]
        return conn, url
    _pg_server[:] = [f"PostgreSQL not reachable (set {PG_ENV} to a server URL): " + "; ".join(errors)]
    pytest.skip(str(_pg_server[0]))


@asynccontextmanager
async def fresh_pg_database() -> AsyncIterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped on exit."""
    admin, server = await _pg_admin()
    name = f"callscribe_test_{uuid.uuid4().hex[:16]}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for this test (``postgresql+asyncpg://…``); skips without a server."""
    async with fresh_pg_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file in this test's temporary directory (``sqlite+aiosqlite:///…``)."""
    return f"sqlite+aiosqlite:///{tmp_path / 'callscribe.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database, once per backend."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'callscribe.db'}"
    else:
        async with fresh_pg_database() as url:
            yield url


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    """A started :class:`Store` on a fresh database, once per backend (fast batches and retries)."""
    s = Store.from_url(db_url, batch_delay=0.005, retry_max_delay=0.2)
    await s.start()
    try:
        yield s
    finally:
        await s.close(timeout=5)
