"""The one small interface every transcript destination implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

from callscribe.events import Event


class Sink(ABC):
    """A destination for events. ``handle`` may be slow: the fan-out gives each sink its own queue."""

    name: str = "sink"

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open files or connections. Called once before the first event."""

    @abstractmethod
    async def handle(self, event: Event) -> None:
        """Deliver one event. Raising is logged and counted; the event is not retried here."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release. Called once at shutdown, after the last event."""
