"""Live feeds: WebSocket /live and SSE /events — framing, headers, pings, resume without gaps or
duplicates, and slow consumers that never stall the others."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from callscribe.bridge import EngineRouter
from callscribe.config import load_settings
from callscribe.events import CallInfo, CallStarted, Track, TranscriptEvent, event_to_dict, with_event_id
from callscribe.server import feeds
from callscribe.server.app import create_app
from callscribe.server.feeds import Feed, parse_event_id
from callscribe.sinks.live import LiveHub, Subscription
from callscribe.sinks.store import StoreSink
from tests.asgi_server import serving
from tests.scripted_engine import ScriptedEngine

SID = "CA" + "f" * 32
OTHER = "CA" + "e" * 32


def transcript(n: int, *, final: bool, call_sid: str = SID, text: str | None = None) -> TranscriptEvent:
    track = Track.INBOUND if n % 2 else Track.OUTBOUND
    return TranscriptEvent(
        call_sid=call_sid,
        stream_sid="MZ1",
        track=track,
        speaker="caller" if track is Track.INBOUND else "agent",
        utterance_id=f"u{n}",
        text=text or f"utterance {n}" + ("" if final else " so far"),
        is_final=final,
        start=float(n),
        end=n + 0.8,
    )


def started(call_sid: str = SID) -> CallStarted:
    return CallStarted(CallInfo(call_sid, "MZ1", tracks=(Track.INBOUND, Track.OUTBOUND)), "scripted")


# ---------------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("raw", "parsed"), [(None, None), ("", None), (" 42 ", "0" * 18 + "42"), ("0", "0" * 20)]
)
def test_parse_event_id(raw: str | None, parsed: str | None) -> None:
    assert parse_event_id(raw) == parsed


@pytest.mark.parametrize("raw", ["abc", "1" * 21, "-1", "12 34"])
def test_parse_event_id_refuses_junk(raw: str) -> None:
    with pytest.raises(ValueError, match="not an event id"):
        parse_event_id(raw)


class FinalsList:
    """``finals_since`` over a list; ``during_query`` runs inside the query (to inject a race)."""

    def __init__(self) -> None:
        self.finals: list[dict[str, Any]] = []
        self.during_query: Any = None

    async def flush(self) -> None:
        pass

    def add(self, event: TranscriptEvent) -> None:
        self.finals.append(event_to_dict(event))

    async def finals_since(self, event_id: str, call_sid: str | None = None, limit: int = 1000) -> list[dict]:
        if self.during_query is not None:
            hook, self.during_query = self.during_query, None
            await hook()
        rows = [f for f in self.finals if f["event_id"] > event_id and call_sid in (None, f["call_sid"])]
        return rows[:limit]


async def test_feed_resume_has_no_gap_and_no_duplicate() -> None:
    hub, store = LiveHub(), FinalsList()

    async def publish(event: TranscriptEvent) -> TranscriptEvent:
        event = with_event_id(event)
        if event.is_final:
            store.add(event)
        await hub.handle(event)
        return event

    seen = await publish(transcript(1, final=True))  # the client saw this, then lost its connection
    missed = [await publish(transcript(2, final=False)), await publish(transcript(2, final=True))]
    racing: list[TranscriptEvent] = []

    async def a_final_lands_while_the_store_is_asked() -> None:
        # stored *and* queued live for the new subscriber: must be sent exactly once
        racing.append(await publish(transcript(3, final=True)))

    store.during_query = a_final_lands_while_the_store_is_asked
    async with Feed(hub, store, SID, seen.event_id) as feed:
        replayed = [item async for item in feed.missed()]
        live = await publish(transcript(4, final=False))
        got = await feed.next(timeout=1)
        with pytest.raises(TimeoutError):
            await feed.next(timeout=0.05)
    assert [r.event_id for r in replayed] == [missed[1].event_id, racing[0].event_id]
    assert {r.type for r in replayed} == {"transcript"}
    assert got.event_id == live.event_id and orjson.loads(got.payload)["text"] == "utterance 4 so far"
    assert feed.skipped == 1 and hub.watchers == 0


async def test_feed_without_resume_is_just_live_and_paginates_replay(monkeypatch) -> None:
    hub, store = LiveHub(), FinalsList()
    for n in range(7):
        store.add(with_event_id(transcript(n, final=True)))
    monkeypatch.setattr(feeds, "REPLAY_PAGE", 3)
    async with Feed(hub, store, None, "0") as feed:
        assert [orjson.loads(i.payload)["utterance_id"] async for i in feed.missed()] == [
            f"u{n}" for n in range(7)
        ]
    async with Feed(hub, store, None, None) as feed:
        assert [i async for i in feed.missed()] == []


# ---------------------------------------------------------------------------------- over HTTP


@dataclass
class Server:
    host: str
    app: Any
    store: Any

    @property
    def gw(self) -> Any:
        return self.app.state.gateway

    async def publish(self, event: Any) -> dict[str, Any]:
        """Publish through the gateway's fan-out (as a call would), wait until it is stored."""
        event = with_event_id(event)
        self.gw.fanout.publish(event)
        await self.settle()
        return orjson.loads(orjson.dumps(event_to_dict(event)))  # as a client parses it

    async def settle(self) -> None:
        for _ in range(500):
            if all(s["pending"] == 0 for s in self.gw.fanout.stats().values()):
                break
            await asyncio.sleep(0.005)
        if self.store is not None:
            await self.store.flush()


@asynccontextmanager
async def gateway(store: Any) -> AsyncIterator[Server]:
    settings = load_settings(None, sinks=[])
    sinks = [StoreSink(store)] if store is not None else []
    app = create_app(settings, EngineRouter(ScriptedEngine()), sinks, store=store)
    async with serving(app) as host:
        yield Server(host, app, store)


@pytest.fixture
async def server(store: Any) -> AsyncIterator[Server]:
    async with gateway(store) as srv:
        yield srv


class SSEReader:
    """A minimal EventSource: parses ``id``/``event``/``data`` messages and ``:`` comments."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()
        self.comments: list[str] = []

    async def next(self, timeout: float = 5) -> dict[str, str]:
        async with asyncio.timeout(timeout):
            message: dict[str, str] = {}
            async for line in self.lines:
                if not line:
                    if message:
                        return message
                elif line.startswith(":"):
                    self.comments.append(line[1:].strip())
                else:
                    field, _, value = line.partition(":")
                    message[field] = value.removeprefix(" ")
            raise EOFError("stream ended")

    async def comment(self, timeout: float = 5) -> str:
        async with asyncio.timeout(timeout):
            async for line in self.lines:
                if line.startswith(":"):
                    return line[1:].strip()
            raise EOFError("stream ended")

    async def event(self, timeout: float = 5) -> dict[str, Any]:
        while True:
            message = await self.next(timeout)
            if "data" in message:
                data = orjson.loads(message["data"])
                assert message["id"] == data["event_id"] and message["event"] == data["type"]
                return data


@asynccontextmanager
async def sse(host: str, path: str, headers: dict[str, str] | None = None) -> AsyncIterator[SSEReader]:
    async with (
        httpx.AsyncClient(base_url=f"http://{host}", timeout=10) as client,
        client.stream("GET", path, headers=headers) as response,
    ):
        yield SSEReader(response)


async def _connected(srv: Server, watchers: int) -> None:
    for _ in range(400):
        if srv.gw.live.watchers >= watchers:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{srv.gw.live.watchers} watchers, expected {watchers}")


def _summary(events: list[dict]) -> list[tuple[str, str, bool | None]]:
    return [(e["type"], e.get("utterance_id", ""), e.get("is_final")) for e in events]


async def test_sse_framing_headers_and_ping(server: Server, monkeypatch) -> None:
    monkeypatch.setattr(feeds, "PING_INTERVAL", 0.2)
    async with sse(server.host, f"/events/{SID}") as reader:
        headers = reader.response.headers
        assert headers["content-type"].startswith("text/event-stream")
        assert "no-cache" in headers["cache-control"] and headers["x-accel-buffering"] == "no"
        assert (await reader.next())["retry"] == str(feeds.SSE_RETRY_MS)
        await _connected(server, 1)
        await server.publish(started(OTHER))  # another call: not on this feed
        sent = [await server.publish(started()), await server.publish(transcript(1, final=False))]
        got = [await reader.event(), await reader.event()]
        assert got == sent
        assert await reader.comment(timeout=1) == "ping"  # after 0.2 s of silence


async def test_sse_all_calls(server: Server) -> None:
    async with sse(server.host, "/events") as reader:
        await _connected(server, 1)
        await server.publish(started(OTHER))
        await server.publish(started(SID))
        assert [(await reader.event())["call_sid"] for _ in range(2)] == [OTHER, SID]


@pytest.mark.parametrize("how", ["header", "query"])
async def test_sse_resume_sends_exactly_the_missed_finals_then_live(server: Server, how: str) -> None:
    await server.publish(started())
    seen = await server.publish(transcript(1, final=True))
    missed = [
        await server.publish(transcript(2, final=False)),  # partials are not replayed
        await server.publish(transcript(2, final=True)),
        await server.publish(transcript(3, final=True)),
        await server.publish(transcript(99, final=True, call_sid=OTHER)),  # not this call
    ]
    last = seen["event_id"]
    path, headers = (f"/events/{SID}", {"Last-Event-ID": last})
    if how == "query":
        path, headers = f"/events/{SID}?last_event_id={last}", {}
    async with sse(server.host, path, headers) as reader:
        first = [await reader.event(), await reader.event()]
        await _connected(server, 1)
        live = await server.publish(transcript(4, final=True))
        assert (await reader.event())["event_id"] == live["event_id"]
        with pytest.raises(TimeoutError):
            await reader.event(timeout=0.3)
    assert [e["event_id"] for e in first] == [missed[1]["event_id"], missed[2]["event_id"]]
    assert first[0]["text"] == "utterance 2" and first[0]["is_final"] is True


async def test_sse_bad_last_event_id(server: Server) -> None:
    async with httpx.AsyncClient(base_url=f"http://{server.host}") as client:
        r = await client.get("/events", headers={"Last-Event-ID": "yesterday"})
        assert r.status_code == 400 and "not an event id" in r.json()["detail"]
        assert (await client.get("/events?last_event_id=x")).status_code == 422


async def test_ws_resume_sends_exactly_the_missed_finals_then_live(server: Server) -> None:
    await server.publish(started())
    seen = await server.publish(transcript(1, final=True))
    missed = [await server.publish(transcript(n, final=True)) for n in (2, 3)]
    async with connect(f"ws://{server.host}/live/{SID}?last_event_id={seen['event_id']}") as ws:
        first = [orjson.loads(await ws.recv()) for _ in range(2)]
        await _connected(server, 1)
        live = [
            await server.publish(transcript(4, final=False)),
            await server.publish(transcript(4, final=True)),
        ]
        rest = [orjson.loads(await ws.recv()) for _ in range(2)]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)
    assert first == missed
    assert rest == live


async def test_ws_from_zero_replays_the_whole_call_and_refuses_junk(server: Server) -> None:
    finals = [await server.publish(transcript(n, final=True)) for n in range(3)]
    async with connect(f"ws://{server.host}/live/{SID}?last_event_id=0") as ws:
        assert [orjson.loads(await ws.recv()) for _ in range(3)] == finals
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"ws://{server.host}/live?last_event_id=soon"):
            pass
    assert refused.value.response.status_code == 403


def _small_window_socket(host: str) -> socket.socket:
    """A connected socket with a tiny receive buffer, so a client that stops reading is felt at once."""
    h, p = host.split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: sets the window
    sock.connect((h, int(p)))
    return sock


async def test_slow_consumers_do_not_stall_the_others(server: Server, monkeypatch) -> None:
    # A watcher's queue holds 200 events here (2000 by default), so cutting one off needs less data.
    subscribe = LiveHub.subscribe

    def small_queue(hub: LiveHub, call_sid: str | None = None) -> Subscription:
        sub = subscribe(hub, call_sid)
        sub.max_pending = 200
        return sub

    n_finals, text = 2000, "x" * 3000  # 6 MB: more than the server's socket buffers plus a queue
    monkeypatch.setattr(LiveHub, "subscribe", small_queue)  # for the two sluggish watchers only
    sluggish_sse = _small_window_socket(server.host)  # asks for /events, then never reads
    sluggish_sse.sendall(f"GET /events HTTP/1.1\r\nHost: {server.host}\r\n\r\n".encode())
    sluggish_ws = _small_window_socket(server.host)  # a WebSocket handshake, then it never reads
    sluggish_ws.sendall(
        f"GET /live HTTP/1.1\r\nHost: {server.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert (await asyncio.to_thread(sluggish_ws.recv, 4096)).startswith(b"HTTP/1.1 101")
    await _connected(server, 2)
    monkeypatch.undo()
    try:
        async with (
            connect(f"ws://{server.host}/live", max_size=None) as fast_ws,
            sse(server.host, "/events") as fast_sse,
        ):
            await _connected(server, 4)
            publishing = 0.0
            ids = []
            for n in range(n_finals):
                event = with_event_id(transcript(n, final=True, text=text))
                t0 = time.perf_counter()
                server.gw.fanout.publish(event)  # the audio path: must never wait
                publishing += time.perf_counter() - t0
                ids.append(event.event_id)
                if n % 20 == 0:
                    await asyncio.sleep(0.002)  # a busy call centre, not one impossible burst

            async def drain_ws() -> list[str]:
                return [orjson.loads(await fast_ws.recv())["event_id"] for _ in range(n_finals)]

            async def drain_sse() -> list[str]:
                return [(await fast_sse.event())["event_id"] for _ in range(n_finals)]

            got_ws, got_sse = await asyncio.wait_for(asyncio.gather(drain_ws(), drain_sse()), 60)
            assert got_ws == ids and got_sse == ids  # every final, in order, to the fast ones
            assert publishing < 0.5  # 2000 publishes, whoever is slow
            # the sluggish ones were let go: they hold a bounded queue, marked as overflowed, and are
            # closed (1013 / end of stream, then resume from the store) once they read again
            # (one may already be gone: its socket gave up and the hub let it go — also fine)
            sluggish = [sub for sub in server.gw.live._subs if sub.max_pending == 200]
            assert len(sluggish) <= 2
            assert all(sub.overflowed and len(sub.queue) <= 200 for sub in sluggish)
    finally:
        sluggish_sse.close()
        sluggish_ws.close()
    for _ in range(500):
        if server.gw.live.watchers == 0:
            break
        await asyncio.sleep(0.01)
    assert server.gw.live.watchers == 0
