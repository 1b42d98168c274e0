"""Live feeds: WebSocket ``/live`` and Server-Sent Events ``/events``, all calls or one, resumable.

A client that reconnects with the last event id it saw (WS ``?last_event_id=``; SSE the
``Last-Event-ID`` header or ``?last_event_id=``) first gets the finals it missed from the store,
then the live stream. The hub subscription is taken *before* the store is asked, so nothing falls
between the two, and live events whose id is not after the last id already sent are skipped, so
nothing arrives twice. Delivery to each watcher goes through its own :class:`Subscription`: a slow
watcher loses partials (never finals) and is cut off past its limit; it never slows the audio path
or the other watchers. A cut-off SSE client reconnects by itself and resumes from the store.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, HTTPException, Query, Request, WebSocket
from fastapi.responses import StreamingResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from callscribe.server.auth import accept_subprotocol
from callscribe.sinks.live import LiveHub, Subscription

log = logging.getLogger(__name__)

PING_INTERVAL = 15.0  # seconds of silence before an SSE comment ping (proxies drop idle streams)
SSE_RETRY_MS = 2000  # how soon an EventSource reconnects after the stream ends
REPLAY_PAGE = 1000  # finals fetched from the store per query while catching up
FLUSH_TIMEOUT = 1.0  # how long a resume waits for the store's buffered writes

CLOSE_POLICY_VIOLATION = 1008
CLOSE_TRY_AGAIN_LATER = 1013

_EVENT_ID = re.compile(r"\d{1,20}")

SSE_HEADERS = {
    "Cache-Control": "no-cache, no-store, no-transform",
    "X-Accel-Buffering": "no",  # nginx: pass each event through, do not buffer the stream
}


def parse_event_id(value: str | None) -> str | None:
    """A client's last event id, zero-padded to the 20 digits ids are compared as; ``None`` when blank.

    Raises ``ValueError`` when it is not an event id.
    """
    value = (value or "").strip()
    if not value:
        return None
    if not _EVENT_ID.fullmatch(value):
        raise ValueError(f"not an event id: {value[:40]!r} (expected up to 20 digits)")
    return value.zfill(20)


class FeedOverflow(Exception):
    """The watcher fell too far behind; it was cut off and may reconnect (and resume)."""


@dataclass(frozen=True, slots=True)
class FeedItem:
    event_id: str
    type: str
    payload: bytes  # the event as JSON, as /live sends it


def _item(payload: bytes) -> FeedItem:
    # A parse per event per watcher (a few µs): the hub hands out bytes, the feed needs id and type.
    data = orjson.loads(payload)
    return FeedItem(str(data.get("event_id") or ""), str(data.get("type") or "message"), payload)


class Feed:
    """One watcher: the finals it missed (from the store), then the live hub, without duplicates.

    Use as ``async with Feed(...) as feed``: entering subscribes to the hub; iterate
    :meth:`missed` once, then call :meth:`next` until the watcher goes away.
    """

    def __init__(self, hub: LiveHub, store: Any, call_sid: str | None, last_event_id: str | None) -> None:
        self.hub = hub
        self.store = store
        self.call_sid = call_sid
        # Live events at or before this id were seen by the client or replayed to it.
        self.floor = last_event_id
        self.replayed = 0
        self.skipped = 0
        self._sub: Subscription | None = None

    async def __aenter__(self) -> Feed:
        self._sub = self.hub.subscribe(self.call_sid)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sub is not None:
            self.hub.unsubscribe(self._sub)

    async def missed(self) -> AsyncIterator[FeedItem]:
        """Stored finals after the client's last event id, oldest first (nothing without a store).

        When the store cannot answer, the watcher still gets the live stream (the miss is logged).
        """
        if self.floor is None or self.store is None:
            return
        # A final the client saw live may still sit in the store's write buffer (the hub is
        # faster): wait briefly for it to be committed, so the query sees all it should.
        with suppress(TimeoutError):
            await asyncio.wait_for(self.store.flush(), FLUSH_TIMEOUT)
        after = self.floor
        while True:
            try:
                rows = await self.store.finals_since(after, call_sid=self.call_sid, limit=REPLAY_PAGE)
            except Exception:
                log.exception(
                    "feed of %s: cannot replay finals after %s", self.call_sid or "all calls", after
                )
                return
            for row in rows:
                event_id = str(row.get("event_id") or "")
                if event_id <= after:  # the store's "since" is exclusive, but be sure
                    continue
                after = event_id
                self.floor = max(self.floor, event_id)
                self.replayed += 1
                yield FeedItem(event_id, str(row.get("type") or "transcript"), orjson.dumps(row))
            if len(rows) < REPLAY_PAGE:
                return

    async def next(self, timeout: float | None = None) -> FeedItem:
        """The next live event. Raises ``TimeoutError`` after ``timeout`` s idle, ``FeedOverflow``."""
        assert self._sub is not None, "use Feed as an async context manager"
        while True:
            # Cancelling Subscription.next on timeout is safe: it only pops after its wait ends.
            payload = await asyncio.wait_for(self._sub.next(), timeout)
            if payload is None:
                raise FeedOverflow
            item = _item(payload)
            if self.floor is not None and item.event_id and item.event_id <= self.floor:
                self.skipped += 1  # replayed from the store, or seen before the reconnect
                continue
            return item


def _feed(request: Request | WebSocket, call_sid: str | None, last_event_id: str | None) -> Feed:
    gw = request.app.state.gateway
    return Feed(gw.live, gw.store, call_sid, last_event_id)


# ---------------------------------------------------------------------------------- WebSocket


async def _wait_disconnect(ws: WebSocket) -> None:
    """Returns when the watcher goes away (anything it sends is ignored: the feed is read-only)."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return


async def watch_ws(ws: WebSocket, call_sid: str | None) -> None:
    """Serve one ``/live`` watcher: missed finals, then live events as JSON text messages."""
    try:
        last = parse_event_id(ws.query_params.get("last_event_id"))
    except ValueError:
        await ws.close(code=CLOSE_POLICY_VIOLATION)  # before accept: the handshake gets a 403
        return
    await ws.accept(subprotocol=accept_subprotocol(ws))
    async with _feed(ws, call_sid, last) as feed:
        hangup = asyncio.create_task(_wait_disconnect(ws))
        try:
            async for item in feed.missed():
                if hangup.done():
                    return
                await ws.send_text(item.payload.decode())
            while True:
                nxt = asyncio.create_task(feed.next())
                done, _ = await asyncio.wait({nxt, hangup}, return_when=asyncio.FIRST_COMPLETED)
                if hangup in done:
                    nxt.cancel()
                    return
                try:
                    item = nxt.result()
                except FeedOverflow:
                    await ws.close(code=CLOSE_TRY_AGAIN_LATER, reason="too slow: events were dropped")
                    return
                await ws.send_text(item.payload.decode())
        except (WebSocketDisconnect, RuntimeError):
            return
        finally:
            hangup.cancel()
            if ws.application_state is WebSocketState.CONNECTED:
                with suppress(Exception):
                    await ws.close()


# ---------------------------------------------------------------------------------- SSE


def sse_frame(item: FeedItem) -> bytes:
    """One SSE message; the JSON payload is a single line (orjson never writes newlines)."""
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (item.event_id.encode(), item.type.encode(), item.payload)


async def sse_stream(feed: Feed, ping_interval: float | None = None) -> AsyncIterator[bytes]:
    """The ``text/event-stream`` body for one watcher; ends when it is cut off (it then resumes)."""
    async with feed:
        yield b"retry: %d\n\n" % SSE_RETRY_MS
        async for item in feed.missed():
            yield sse_frame(item)
        while True:
            try:
                item = await feed.next(timeout=ping_interval or PING_INTERVAL)
            except TimeoutError:
                yield b": ping\n\n"
                continue
            except FeedOverflow:
                log.info("SSE watcher of %s too slow: cut off", feed.call_sid or "all calls")
                return
            yield sse_frame(item)


# ---------------------------------------------------------------------------------- routes

router = APIRouter(tags=["live"])

LastEventIdQuery = Annotated[
    str | None,
    Query(
        pattern=r"^\d{1,20}$",
        description="Resume after this event id: the finals missed since are sent first.",
    ),
]
LastEventIdHeader = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        description="Sent by EventSource on reconnect; takes precedence over ?last_event_id.",
    ),
]
_SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "An endless `text/event-stream`: `id:` event id, `event:` type, `data:` JSON.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    400: {"description": "Last-Event-ID is not an event id."},
}


def _sse_response(
    request: Request, call_sid: str | None, query: str | None, header: str | None
) -> StreamingResponse:
    try:
        last = parse_event_id(header) or parse_event_id(query)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    return StreamingResponse(
        sse_stream(_feed(request, call_sid, last)), media_type="text/event-stream", headers=SSE_HEADERS
    )


@router.get("/events", response_class=StreamingResponse, responses=_SSE_RESPONSE)
async def events_all(
    request: Request, last_event_id: LastEventIdQuery = None, last_event_id_header: LastEventIdHeader = None
) -> StreamingResponse:
    """Every event of every call as Server-Sent Events."""
    return _sse_response(request, None, last_event_id, last_event_id_header)


@router.get("/events/{call_sid}", response_class=StreamingResponse, responses=_SSE_RESPONSE)
async def events_call(
    request: Request,
    call_sid: str,
    last_event_id: LastEventIdQuery = None,
    last_event_id_header: LastEventIdHeader = None,
) -> StreamingResponse:
    """Every event of one call (it may not have started yet) as Server-Sent Events."""
    return _sse_response(request, call_sid, last_event_id, last_event_id_header)


@router.websocket("/live")
async def live_all(ws: WebSocket) -> None:
    """Every event of every call, as JSON text messages (``?last_event_id=`` to resume)."""
    await watch_ws(ws, None)


@router.websocket("/live/{call_sid}")
async def live_call(ws: WebSocket, call_sid: str) -> None:
    """Every event of one call (it may not have started yet), as JSON text messages."""
    await watch_ws(ws, call_sid)
