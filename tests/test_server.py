"""The ASGI gateway with a scripted engine: TwiML, signatures, /media → engine → /live, refusals."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import orjson
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from twilio.request_validator import RequestValidator

from callscribe.bridge import EngineRouter
from callscribe.config import load_settings
from callscribe.events import Track
from callscribe.server.app import create_app
from callscribe.sinks.jsonl import JsonLinesSink
from tests import twilio_frames as tw
from tests.scripted_engine import ScriptedEngine

TOKEN = "12345678901234567890123456789012"
PUBLIC = "https://stt.example.com"


def make_client(engine: ScriptedEngine | None = None, tmp_path=None, **overrides) -> TestClient:
    settings = load_settings(None, **overrides)
    sinks = [JsonLinesSink(str(tmp_path / "events.jsonl"))] if tmp_path else []
    app = create_app(settings, EngineRouter(engine or ScriptedEngine()), sinks)
    return TestClient(app)


def test_twiml_streams_both_tracks_and_keeps_the_call_up() -> None:
    with make_client(public_url=PUBLIC, stream_parameters={"tenant": "acme"}) as client:
        r = client.post("/twiml", data={"From": "+15550001", "To": "+15550002", "CallSid": "CA1"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(r.text)
    stream = root.find("Start/Stream")
    assert stream is not None
    assert stream.get("url") == "wss://stt.example.com/media"
    assert stream.get("track") == "both_tracks" and stream.get("name") == "callscribe"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params == {"tenant": "acme", "from": "+15550001", "to": "+15550002"}
    assert root.find("Pause").get("length") == "3600"


@pytest.mark.parametrize(
    ("cont", "tag", "text"),
    [
        ("dial:+15550100", "Dial", "+15550100"),
        ("redirect:https://x.test/next", "Redirect", "https://x.test/next"),
    ],
)
def test_twiml_continuation(cont: str, tag: str, text: str) -> None:
    with make_client(twiml_continue=cont) as client:
        r = client.get("/twiml")
    root = ET.fromstring(r.text)
    assert root.find(tag).text == text
    assert root.find("Start/Stream").get("url") == "ws://testserver/media"


def test_twiml_signature_is_checked_when_a_token_is_set() -> None:
    form = {"CallSid": "CA1", "From": "+1555"}
    good = RequestValidator(TOKEN).compute_signature(PUBLIC + "/twiml", form)
    with make_client(public_url=PUBLIC, twilio_auth_token=TOKEN) as client:
        assert client.post("/twiml", data=form).status_code == 403
        assert client.post("/twiml", data=form, headers={"X-Twilio-Signature": "bad"}).status_code == 403
        assert client.post("/twiml", data=form, headers={"X-Twilio-Signature": good}).status_code == 200


def test_media_handshake_signature() -> None:
    url = "wss://stt.example.com/media"
    with make_client(public_url=PUBLIC, twilio_auth_token=TOKEN) as client:
        with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/media"):
            pass
        assert refused.value.code == 1008
        for signed in (url, url + "/"):  # Twilio's docs: also try the trailing-slash form
            sig = RequestValidator(TOKEN).compute_signature(signed, {})
            with client.websocket_connect("/media", headers={"X-Twilio-Signature": sig}) as ws:
                ws.send_text(tw.connected())


def stream_call(client: TestClient, frames: int, *, with_stop: bool = True, junk: bool = False) -> None:
    with client.websocket_connect("/media") as ws:
        ws.send_text(tw.connected())
        ws.send_text(tw.start(tenant="acme"))
        seq = 2
        for i in range(frames):
            ws.send_text(tw.media("inbound", i, bytes([1]) * 160, seq))
            ws.send_text(tw.media("outbound", i, bytes([2]) * 160, seq + 1))
            seq += 2
            if junk and i == 3:
                ws.send_text("{not json")
                ws.send_bytes(b"\x00binary")
                ws.send_text('{"event": "media", "media": {"payload": "???"}}')
        if with_stop:
            ws.send_text(tw.stop(seq=seq))


def read_live(ws, until: str = "call.ended") -> list[dict]:
    out = []
    while True:
        event = orjson.loads(ws.receive_text())
        out.append(event)
        if event["type"] == until:
            return out


@pytest.mark.parametrize("with_stop", [True, False])
def test_audio_flows_to_the_engine_and_transcripts_to_live(tmp_path, with_stop: bool) -> None:
    engine = ScriptedEngine(utterance_bytes=8000, partial_bytes=1600)
    with make_client(engine, tmp_path) as client, client.websocket_connect(f"/live/{tw.CALL_SID}") as live:
        stream_call(client, frames=125, with_stop=with_stop, junk=True)  # 2.5 s per track
        events = read_live(live)
    session = engine.sessions[0]
    assert session.started and session.finished
    assert bytes(session.received[Track.INBOUND]) == bytes([1]) * 20_000
    assert bytes(session.received[Track.OUTBOUND]) == bytes([2]) * 20_000
    types = [e["type"] for e in events]
    assert types[0] == "call.started" and types[-1] == "call.ended"
    assert events[0]["custom_parameters"] == {"tenant": "acme"}
    finals = [e for e in events if e["type"] == "transcript" and e["is_final"]]
    # 20000 bytes per track = two full 8000-byte utterances + the 4000-byte tail flushed at finish
    assert [f["text"] for f in finals if f["speaker"] == "caller"] == [
        "inbound bytes 0-8000",
        "inbound bytes 8000-16000",
        "inbound bytes 16000-20000",
    ]
    assert {f["speaker"] for f in finals if f["track"] == "outbound"} == {"agent"}
    partial_ids = {e["utterance_id"] for e in events if e["type"] == "transcript" and not e["is_final"]}
    assert partial_ids <= {f["utterance_id"] for f in finals}
    ended = events[-1]
    assert ended["reason"] == ("stop" if with_stop else "closed")
    assert ended["counters"]["media_frames"] == 250
    assert ended["counters"]["malformed"] == 3
    assert ended["duration"] == pytest.approx(2.5)
    lines = [orjson.loads(x) for x in (tmp_path / "events.jsonl").read_bytes().splitlines()]

    # the file sink got the same call events and finals, in order (it may lose partials, never finals)
    def kept(evs: list[dict]) -> list[tuple]:
        return [(e["type"], e.get("text")) for e in evs if e["type"] != "transcript" or e["is_final"]]

    assert kept(lines) == kept(events)


def test_live_all_calls_sees_every_call(tmp_path) -> None:
    with make_client(ScriptedEngine(), tmp_path) as client, client.websocket_connect("/live") as live:
        stream_call(client, frames=10)
        events = read_live(live)
    assert events[0]["type"] == "call.started" and events[-1]["call_sid"] == tw.CALL_SID


def test_call_beyond_capacity_is_refused_cleanly() -> None:
    engine = ScriptedEngine(capacity=0)
    with make_client(engine) as client, client.websocket_connect("/live") as live:
        with client.websocket_connect("/media") as ws:
            ws.send_text(tw.connected())
            ws.send_text(tw.start())
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_text()
            assert closed.value.code == 1013
        error = orjson.loads(live.receive_text())
    assert error["type"] == "call.error" and error["code"] == "capacity"


def test_healthz() -> None:
    with make_client() as client:
        body = client.get("/healthz").json()
    assert body["status"] == "ok" and body["engines"] == [{"engine": "scripted"}]
    assert body["signature_check"] is False
