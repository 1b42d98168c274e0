"""A sink that hands events to the :class:`~callscribe.storage.Store` (which batches and retries)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from callscribe.events import Event
from callscribe.sinks.base import Sink

if TYPE_CHECKING:
    from callscribe.storage import Store


class StoreSink(Sink):
    """``handle`` only queues (``Store.submit`` is O(1)); the store keeps finals, never partials.

    The store is shared with the API, so its owner (the Gateway) starts and closes it, after the
    fan-out has closed, so that the last events get written.
    """

    name = "store"

    def __init__(self, store: Store) -> None:
        self.store = store

    async def handle(self, event: Event) -> None:
        self.store.submit(event)
