"""Retention: delete calls older than ``RETENTION_DAYS`` at start, then every hour."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)

RETENTION_INTERVAL = 3600.0  # seconds between sweeps


async def purge_old_calls(store: Any, days: int) -> int:
    """Delete calls older than ``days`` days; the number deleted (0 on failure, which is logged)."""
    try:
        deleted = int(await store.delete_older_than(days))
    except Exception:
        log.exception("retention: deleting calls older than %d days failed; will retry", days)
        return 0
    if deleted:
        log.info("retention: deleted %d call(s) older than %d days", deleted, days)
    return deleted


async def retention_loop(store: Any, days: int, *, interval: float = RETENTION_INTERVAL) -> None:
    """Sweep now and then every ``interval`` s until cancelled; nothing to do when ``days`` <= 0.

    Start it in the app's lifespan (``asyncio.create_task``) and cancel it on shutdown. A failed
    sweep (database down) is logged and retried at the next interval, never fatal.
    """
    if days <= 0 or store is None:
        return
    while True:
        await purge_old_calls(store, days)
        await asyncio.sleep(interval)
