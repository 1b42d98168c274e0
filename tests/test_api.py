"""The REST API over a real Store (SQLite and PostgreSQL), fed by calls streamed through /media."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from websockets.asyncio.client import connect

from callscribe.bridge import EngineRouter
from callscribe.config import load_settings
from callscribe.events import CallError, CallInfo, CallStarted, Track
from callscribe.server.app import create_app
from callscribe.server.retention import purge_old_calls, retention_loop
from callscribe.sinks.store import StoreSink
from tests import twilio_frames as tw
from tests.asgi_server import serving
from tests.scripted_engine import ScriptedEngine

BOTH = tw.CALL_SID  # caller and agent
SOLO = "CA" + "d" * 32  # the caller alone


@dataclass
class Api:
    client: httpx.AsyncClient
    host: str
    app: Any
    store: Any

    async def settle(self) -> None:
        """Wait until every call drained, every sink caught up and the store committed."""
        gw = self.app.state.gateway
        for _ in range(1000):
            if not gw.calls and all(s["pending"] == 0 for s in gw.fanout.stats().values()):
                break
            await asyncio.sleep(0.01)
        await self.store.flush()


async def stream_call(host: str, call_sid: str, tracks: tuple[str, ...], frames: int = 125) -> None:
    """A Twilio call over /media: 2.5 s per track of the scripted engine's 'speech'."""
    async with connect(f"ws://{host}/media") as ws:
        await ws.send(tw.connected())
        await ws.send(tw.start(tracks=tracks, call_sid=call_sid))
        seq = 2
        for i in range(frames):
            for track in tracks:
                await ws.send(tw.media(track, i, bytes([1]) * 160, seq))
                seq += 1
        await ws.send(tw.stop(call_sid=call_sid, seq=seq))


@pytest.fixture
async def api(store: Any) -> AsyncIterator[Api]:
    settings = load_settings(None, sinks=[])
    app = create_app(settings, EngineRouter(ScriptedEngine()), [StoreSink(store)], store=store)
    async with serving(app) as host, httpx.AsyncClient(base_url=f"http://{host}") as client:
        yield Api(client, host, app, store)


@pytest.fixture
async def calls(api: Api) -> Api:
    await stream_call(api.host, BOTH, ("inbound", "outbound"))
    await stream_call(api.host, SOLO, ("inbound",), frames=60)
    await api.settle()
    return api


async def test_list_calls_and_filters(calls: Api) -> None:
    c = calls.client
    body = (await c.get("/api/calls")).json()
    assert body["total"] == 2 and body["limit"] == 50 and body["offset"] == 0
    assert [i["call_sid"] for i in body["items"]] == [SOLO, BOTH]  # newest first
    both = body["items"][1]
    assert both["status"] == "ended" and both["duration"] == pytest.approx(2.5)
    assert both["speakers"] == {"inbound": "caller", "outbound": "agent"}

    async def sids(**params: Any) -> list[str]:
        r = await c.get("/api/calls", params=params)
        assert r.status_code == 200, r.text
        return [i["call_sid"] for i in r.json()["items"]]

    assert await sids(speaker="agent") == [BOTH]
    assert await sids(q="outbound") == [BOTH]  # full text: only the agent's track says it
    assert await sids(q="inbound bytes") == [SOLO, BOTH]
    assert await sids(q="nobody said this") == []
    assert await sids(status="ended") == [SOLO, BOTH]
    assert await sids(status="live") == []
    assert await sids(limit=1, offset=1) == [BOTH]
    hour = timedelta(hours=1)
    assert await sids(since=(datetime.now(UTC) - hour).isoformat()) == [SOLO, BOTH]
    assert await sids(since=(datetime.now(UTC) + hour).isoformat()) == []
    assert await sids(until=(datetime.now(UTC) - hour).isoformat()) == []
    page = (await c.get("/api/calls", params={"limit": 1})).json()
    assert page["total"] == 2 and len(page["items"]) == 1


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 501},
        {"offset": -1},
        {"since": "yesterday"},
        {"since": "2030-01-02", "until": "2030-01-01"},
    ],
)
async def test_list_calls_refuses_bad_parameters(api: Api, params: dict) -> None:
    r = await api.client.get("/api/calls", params=params)
    assert r.status_code == 422 and "detail" in r.json()


async def test_one_call_and_404(calls: Api) -> None:
    r = await calls.client.get(f"/api/calls/{BOTH}")
    assert r.status_code == 200
    call = r.json()
    assert call["call_sid"] == BOTH and call["utterance_count"] == 6 and call["engine"] == "scripted"
    missing = await calls.client.get("/api/calls/CAnope")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "call 'CAnope' not found"}
    for path in ("/transcript", "/events", "/transcript.srt"):
        assert (await calls.client.get(f"/api/calls/CAnope{path}")).status_code == 404


async def test_transcript_formats(calls: Api) -> None:
    c = calls.client
    body = (await c.get(f"/api/calls/{BOTH}/transcript")).json()
    assert body["call"]["call_sid"] == BOTH
    said = [(u["speaker"], u["text"]) for u in body["utterances"]]
    # speaking order; at the same time, in the order the engine gave them
    assert said[:2] == [("caller", "inbound bytes 0-8000"), ("agent", "outbound bytes 0-8000")]
    assert len(said) == 6 and all(u["event_id"] for u in body["utterances"])

    txt = await c.get(f"/api/calls/{BOTH}/transcript", params={"format": "txt"})
    assert txt.headers["content-type"] == "text/plain; charset=utf-8"
    assert txt.text.splitlines()[0] == "[00:00:00.000 - 00:00:01.000] Caller: inbound bytes 0-8000"

    srt = await c.get(f"/api/calls/{BOTH}/transcript", params={"format": "srt"})
    assert srt.headers["content-type"].startswith("application/x-subrip")
    assert f'filename="{BOTH}.srt"' in srt.headers["content-disposition"]
    assert srt.text.startswith("1\n00:00:00,000 --> 00:00:01,000\nCaller: inbound bytes 0-8000\n\n2\n")
    assert "6\n00:00:02,000 --> 00:00:02,500\nAgent: outbound bytes 16000-20000\n" in srt.text

    vtt = await c.get(f"/api/calls/{BOTH}/transcript", params={"format": "vtt"})
    assert vtt.headers["content-type"] == "text/vtt; charset=utf-8"
    assert vtt.text.startswith(
        "WEBVTT\n\n1\n00:00:00.000 --> 00:00:01.000\n<v Caller>inbound bytes 0-8000</v>\n"
    )

    # the same by Accept and by suffix
    by_accept = await c.get(f"/api/calls/{BOTH}/transcript", headers={"Accept": "text/vtt"})
    assert by_accept.text == vtt.text
    assert (await c.get(f"/api/calls/{BOTH}/transcript.srt")).text == srt.text
    assert (await c.get(f"/api/calls/{BOTH}/transcript.txt")).text == txt.text
    bad = await c.get(f"/api/calls/{BOTH}/transcript", params={"format": "docx"})
    assert bad.status_code == 422


async def test_call_events(calls: Api) -> None:
    gw = calls.app.state.gateway
    gw.fanout.publish(CallError(BOTH, tw.STREAM_SID, "engine.start", "it broke", retrying=True))
    await calls.settle()
    events = (await calls.client.get(f"/api/calls/{BOTH}/events")).json()
    assert [(e["type"], e["code"], e["message"]) for e in events] == [
        ("call.error", "engine.start", "it broke")
    ]
    assert events[0]["event_id"].isdigit()
    assert (await calls.client.get(f"/api/calls/{SOLO}/events")).json() == []


async def test_delete_call(calls: Api) -> None:
    c = calls.client
    r = await c.delete(f"/api/calls/{SOLO}")
    assert r.status_code == 204 and r.content == b""
    assert (await c.get(f"/api/calls/{SOLO}")).status_code == 404
    assert (await calls.store.utterances(SOLO)) == []
    again = await c.delete(f"/api/calls/{SOLO}")
    assert again.status_code == 404 and "not found" in again.json()["detail"]
    assert [i["call_sid"] for i in (await c.get("/api/calls")).json()["items"]] == [BOTH]


async def test_without_a_store_the_api_says_so() -> None:
    app = create_app(load_settings(None, sinks=[]), EngineRouter(ScriptedEngine()), [])
    async with serving(app) as host, httpx.AsyncClient(base_url=f"http://{host}") as c:
        r = await c.get("/api/calls")
        assert r.status_code == 503 and "storage is not configured" in r.json()["detail"]
        assert (await c.get("/api/live")).json() == []


async def test_live_calls_lists_calls_in_progress(api: Api) -> None:
    async with connect(f"ws://{api.host}/media") as ws:
        await ws.send(tw.connected())
        await ws.send(tw.start())
        await ws.send(tw.media("inbound", 0, bytes(160), 2))
        for _ in range(200):
            live = (await api.client.get("/api/live")).json()
            if live:
                break
            await asyncio.sleep(0.01)
        assert live == [
            {
                "call_sid": BOTH,
                "stream_sid": tw.STREAM_SID,
                "tracks": ["inbound", "outbound"],
                "speakers": {"inbound": "caller", "outbound": "agent"},
                "audio_seconds": 0.02,
            }
        ]
        await ws.send(tw.stop())
    await api.settle()
    assert (await api.client.get("/api/live")).json() == []


async def test_openapi_document_is_valid(api: Api) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    validate(spec)
    paths = spec["paths"]
    for path in (
        "/api/calls",
        "/api/calls/{call_sid}",
        "/api/calls/{call_sid}/transcript",
        "/api/calls/{call_sid}/events",
        "/events",
        "/events/{call_sid}",
    ):
        assert path in paths, path
    params = {p["name"]: p for p in paths["/api/calls"]["get"]["parameters"]}
    assert params["limit"]["schema"]["maximum"] == 500
    assert params["since"]["schema"]["anyOf"][0]["format"] == "date-time"
    listing = paths["/api/calls"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert listing == {"$ref": "#/components/schemas/CallList"}
    assert set(paths["/api/calls/{call_sid}"]["delete"]["responses"]) >= {"204", "404"}
    transcript = paths["/api/calls/{call_sid}/transcript"]["get"]["responses"]["200"]["content"]
    assert set(transcript) == {"application/json", "text/plain", "application/x-subrip", "text/vtt"}
    assert "text/event-stream" in paths["/events"]["get"]["responses"]["200"]["content"]
    assert "/" not in paths  # the page is not an API operation


async def test_retention_deletes_old_calls_at_start_and_on_schedule(store: Any, caplog) -> None:
    def call(sid: str, days_ago: float) -> CallStarted:
        info = CallInfo(sid, "MZ1", tracks=(Track.INBOUND,))
        return CallStarted(info, "scripted", at=time.time() - days_ago * 86400)

    store.submit(call("CAold", 40))
    store.submit(call("CAnew", 1))
    await store.flush()
    assert await retention_loop(store, 0) is None  # 0 = keep everything: returns at once
    task = asyncio.create_task(retention_loop(store, 30, interval=0.05))
    try:
        for _ in range(200):
            if await store.get_call("CAold") is None:
                break
            await asyncio.sleep(0.01)
        assert await store.get_call("CAold") is None and await store.get_call("CAnew") is not None
        store.submit(call("CAlater", 31))  # arrives later: the next sweep takes it
        await store.flush()
        for _ in range(200):
            if await store.get_call("CAlater") is None:
                break
            await asyncio.sleep(0.01)
        assert await store.get_call("CAlater") is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_failed_sweep_is_logged_not_fatal(caplog) -> None:
    class Down:
        async def delete_older_than(self, days: int) -> int:
            raise ConnectionError("database is down")

    with caplog.at_level(logging.ERROR):
        assert await purge_old_calls(Down(), 7) == 0
    assert "retention" in caplog.text and "database is down" in caplog.text
