"""Production behaviour of the real gateway app: signatures, tokens, limits, readiness, metrics, drain."""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET

import jwt
import orjson
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from twilio.request_validator import RequestValidator

from callscribe.bridge import EngineRouter
from callscribe.config import load_settings
from callscribe.server.app import create_app
from tests import twilio_frames as tw
from tests.asgi_server import serving
from tests.scripted_engine import ScriptedEngine

TOKEN = "12345678901234567890123456789012"
PUBLIC = "https://stt.example.com"
READ_KEY = "read-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"
JWT_SECRET = "s" * 40
KEYS = [{"key": READ_KEY, "scope": "read", "name": "screen"}, {"key": ADMIN_KEY, "scope": "admin", "name": "ops"}]


def make_client(engine: ScriptedEngine | None = None, **overrides) -> TestClient:
    settings = load_settings(None, **overrides)
    return TestClient(create_app(settings, EngineRouter(engine or ScriptedEngine()), []))


def sign(url: str, params: dict[str, str] | None = None, token: str = TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, params or {})


def metric(client: TestClient, name: str, headers: dict[str, str] | None = None, **labels: str) -> float:
    text = client.get("/metrics", headers=headers or {}).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


# --- X-Twilio-Signature ------------------------------------------------------------------------


def test_voice_webhook_refuses_forged_missing_and_wrong_url_signatures() -> None:
    form = {"CallSid": "CA1", "From": "+15550001"}
    with make_client(public_url=PUBLIC, twilio_auth_token=TOKEN) as client:
        before = metric(client, "callscribe_signature_rejections_total", kind="http")
        cases = {
            "missing": {},
            "forged": {"X-Twilio-Signature": sign(PUBLIC + "/twiml", form, token="x" * 32)},
            "wrong url": {"X-Twilio-Signature": sign("https://evil.example.com/twiml", form)},
            "other params": {"X-Twilio-Signature": sign(PUBLIC + "/twiml", {"CallSid": "CA2"})},
        }
        for name, headers in cases.items():
            r = client.post("/twiml", data=form, headers=headers)
            assert r.status_code == 403, name
        after = metric(client, "callscribe_signature_rejections_total", kind="http")
        assert after - before == len(cases)
        good = {"X-Twilio-Signature": sign(PUBLIC + "/twiml", form)}
        assert client.post("/twiml", data=form, headers=good).status_code == 200


def test_voice_webhook_behind_a_trusted_tls_proxy() -> None:
    """No PUBLIC_URL: the signed https URL is rebuilt from X-Forwarded-* of a trusted proxy only."""
    form = {"CallSid": "CA1"}
    proxied = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "stt.example.com",
        "X-Twilio-Signature": sign(PUBLIC + "/twiml", form),
    }
    with make_client(twilio_auth_token=TOKEN, trusted_proxies="*") as client:
        r = client.post("/twiml", data=form, headers=proxied)
        assert r.status_code == 200
        assert ET.fromstring(r.text).find("Start/Stream").get("url") == "wss://stt.example.com/media"
    with make_client(twilio_auth_token=TOKEN) as client:  # the same headers from an untrusted peer
        assert client.post("/twiml", data=form, headers=proxied).status_code == 403


def test_media_handshake_refuses_bad_signatures_and_accepts_via_trusted_proxy() -> None:
    with make_client(twilio_auth_token=TOKEN, trusted_proxies="*") as client:
        for headers in (
            {},
            {"X-Twilio-Signature": sign("wss://stt.example.com/media", token="y" * 32)},
            {"X-Twilio-Signature": sign("wss://elsewhere.example.com/media")},
        ):
            with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/media", headers=headers):
                pass
            assert refused.value.code == 1008
        proxied = {
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "stt.example.com",
            "X-Twilio-Signature": sign("wss://stt.example.com/media"),
        }
        with client.websocket_connect("/media", headers=proxied) as ws:
            ws.send_text(tw.connected())
        assert metric(client, "callscribe_signature_rejections_total", kind="websocket") >= 3


async def test_media_refusal_is_an_http_403_before_the_upgrade() -> None:
    settings = load_settings(None, public_url=PUBLIC, twilio_auth_token=TOKEN)
    app = create_app(settings, EngineRouter(ScriptedEngine()), [])
    async with serving(app) as hostport:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(f"ws://{hostport}/media", additional_headers={"X-Twilio-Signature": "x"}):
                pass
        assert refused.value.response.status_code == 403


# --- tokens --------------------------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_jwt(**claims) -> str:
    body = {"sub": "agent-7", "aud": "callscribe", "exp": time.time() + 300, "scope": "read"} | claims
    return jwt.encode(body, JWT_SECRET, algorithm="HS256")


def test_api_feeds_and_metrics_need_a_token_with_the_right_scope() -> None:
    with make_client(api_keys=KEYS, jwt_secret=JWT_SECRET, jwt_audience="callscribe") as client:
        assert client.get("/api/live").status_code == 401
        assert client.get("/metrics").status_code == 401
        assert client.get("/api/live", headers=bearer("not-a-key-at-all-123")).status_code == 401
        assert client.get("/api/live", headers=bearer(READ_KEY)).status_code == 200
        assert client.get("/api/live", headers=bearer(make_jwt())).status_code == 200
        assert client.get("/metrics", headers=bearer(READ_KEY)).status_code == 200
        expired = make_jwt(exp=time.time() - 3600)
        r = client.get("/api/live", headers=bearer(expired))
        assert r.status_code == 401 and "expired" in r.headers["www-authenticate"]
        r = client.get("/api/live", headers=bearer(make_jwt(aud="someone-else")))
        assert r.status_code == 401 and "audience" in r.headers["www-authenticate"]
        # read may not delete; admin passes auth (no store here: 503, not 401/403)
        assert client.delete("/api/calls/CA1", headers=bearer(READ_KEY)).status_code == 403
        assert client.delete("/api/calls/CA1", headers=bearer(make_jwt())).status_code == 403
        assert client.delete("/api/calls/CA1", headers=bearer(ADMIN_KEY)).status_code not in (401, 403)
        assert client.delete("/api/calls/CA1", headers=bearer(make_jwt(scope="admin"))).status_code not in (401, 403)
        # Twilio-facing and probe routes stay open
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        assert client.post("/twiml").status_code == 200
        assert client.get("/").status_code == 200


def test_live_feed_takes_the_token_as_a_subprotocol() -> None:
    with make_client(api_keys=KEYS) as client:
        with pytest.raises(WebSocketDisconnect), client.websocket_connect("/live"):
            pass
        with client.websocket_connect("/live", subprotocols=["bearer", READ_KEY]) as ws:
            assert ws.accepted_subprotocol == "bearer"  # never the token itself


# --- limits --------------------------------------------------------------------------------------


def stream_frames(ws, frames: int, start_seq: int = 2, start_index: int = 0) -> int:
    seq = start_seq
    for i in range(start_index, start_index + frames):
        ws.send_text(tw.media("inbound", i, bytes([1]) * 160, seq))
        seq += 1
    return seq


def read_until(ws, kind: str) -> list[dict]:
    out = []
    while True:
        event = orjson.loads(ws.receive_text())
        out.append(event)
        if event["type"] == kind:
            return out


def test_the_call_beyond_max_calls_is_refused_and_readiness_says_full() -> None:
    with make_client(max_calls=1) as client:
        assert client.get("/readyz").status_code == 200
        with client.websocket_connect("/media") as first:
            first.send_text(tw.connected())
            first.send_text(tw.start(call_sid="CA1"))
            for _ in range(50):  # the handler registers the call just after accept
                if client.get("/healthz").json()["active_calls"] == 1:
                    break
                time.sleep(0.01)
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["capacity"] == "1/1"
            with client.websocket_connect("/media") as second, pytest.raises(WebSocketDisconnect) as closed:
                second.receive_text()
            assert closed.value.code == 1013 and "capacity" in closed.value.reason
            twiml = ET.fromstring(client.post("/twiml").text)  # OVER_CAPACITY=no-stream
            assert twiml.find("Start") is None and twiml.find("Pause") is not None
            assert metric(client, "callscribe_calls_refused_total", reason="capacity") >= 2
        assert client.get("/readyz").status_code == 200


def test_over_capacity_refuse_answers_busy() -> None:
    with make_client(max_calls=1, over_capacity="refuse") as client, client.websocket_connect("/media") as ws:
        ws.send_text(tw.connected())
        for _ in range(50):
            if client.get("/healthz").json()["active_calls"] == 1:
                break
            time.sleep(0.01)
        reject = ET.fromstring(client.post("/twiml").text).find("Reject")
        assert reject is not None and reject.get("reason") == "busy"


def test_idle_stream_is_finished_and_closed() -> None:
    engine = ScriptedEngine(utterance_bytes=1600, partial_bytes=800)
    with make_client(engine, idle_timeout=0.3) as client, client.websocket_connect("/live") as live:
        with client.websocket_connect("/media") as ws:
            ws.send_text(tw.connected())
            ws.send_text(tw.start(tracks=("inbound",)))
            stream_frames(ws, 25)
            with pytest.raises(WebSocketDisconnect) as closed:
                while True:
                    ws.receive_text()
            assert closed.value.code == 1000 and closed.value.reason == "idle timeout"
        events = read_until(live, "call.ended")
    ended = events[-1]
    assert ended["reason"] == "idle_timeout"
    finals = [e for e in events if e["type"] == "transcript" and e["is_final"]]
    assert sum(e["end"] - e["start"] for e in finals) == pytest.approx(25 * 0.02)  # nothing lost


def test_call_longer_than_max_duration_is_ended() -> None:
    with make_client(max_call_duration=0.4, idle_timeout=30) as client, client.websocket_connect("/live") as live:
        with client.websocket_connect("/media") as ws:
            ws.send_text(tw.connected())
            ws.send_text(tw.start(tracks=("inbound",)))
            seq = 2
            with pytest.raises(WebSocketDisconnect) as closed:
                for i in range(200):  # paced like Twilio until the gateway hangs up
                    seq = stream_frames(ws, 1, seq, i)
                    time.sleep(0.02)
                ws.receive_text()
            assert closed.value.reason == "max duration"
        ended = read_until(live, "call.ended")[-1]
    assert ended["reason"] == "max_duration" and ended["duration"] < 2


def test_oversize_message_is_counted_and_the_call_goes_on() -> None:
    engine = ScriptedEngine(utterance_bytes=1600, partial_bytes=800)
    with make_client(engine, ws_max_message_bytes=1024) as client, client.websocket_connect("/live") as live:
        with client.websocket_connect("/media") as ws:
            ws.send_text(tw.connected())
            ws.send_text(tw.start(tracks=("inbound",)))
            seq = stream_frames(ws, 10)
            ws.send_text(tw.media("inbound", 10, bytes([1]) * 2000, seq))  # ~2.7 kB of JSON
            seq = stream_frames(ws, 10, seq + 1, 11)
            ws.send_text(tw.stop(seq=seq))
        ended = read_until(live, "call.ended")[-1]
    counters = ended["counters"]
    assert counters["malformed.oversize"] == 1
    assert counters["media_frames"] == 20  # the call went on after it


# --- metrics and drain ---------------------------------------------------------------------------


def test_metrics_scrape_parses_and_call_counters_move() -> None:
    with make_client() as client:
        before = metric(client, "callscribe_active_calls")
        with client.websocket_connect("/media") as ws:
            ws.send_text(tw.connected())
            ws.send_text(tw.start(tracks=("inbound",)))
            for _ in range(50):
                if metric(client, "callscribe_active_calls") == before + 1:
                    break
                time.sleep(0.01)
            assert metric(client, "callscribe_active_calls") == before + 1
            ws.send_text(tw.stop())
        families = {f.name for f in text_string_to_metric_families(client.get("/metrics").text)}
    assert {"callscribe_active_calls", "callscribe_calls_refused", "callscribe_frames_received"} <= families


async def test_drain_finishes_open_calls_after_the_deadline_with_their_last_finals() -> None:
    engine = ScriptedEngine(utterance_bytes=100_000, partial_bytes=800)  # finals only at finish
    settings = load_settings(None, drain_deadline=0.5)
    app = create_app(settings, EngineRouter(engine), [])
    gw = app.state.gateway
    async with serving(app) as hostport, websockets.connect(f"ws://{hostport}/live") as live:
        calls = []
        for sid in ("CA1", "CA2"):
            ws = await websockets.connect(f"ws://{hostport}/media")
            await ws.send(tw.connected())
            await ws.send(tw.start(tracks=("inbound",), call_sid=sid))
            for i in range(10):
                await ws.send(tw.media("inbound", i, bytes([1]) * 160, i + 2))
            calls.append(ws)
        for _ in range(200):  # the handlers register their calls just after accept
            if len(gw.calls) == 2:
                break
            await asyncio.sleep(0.01)
        drain = asyncio.create_task(gw.drain())
        await asyncio.sleep(0.1)
        async with websockets.connect(f"ws://{hostport}/media") as late:  # no new calls
            with pytest.raises(websockets.ConnectionClosed) as refused:
                await late.recv()
            assert refused.value.rcvd.code == 1013
        took = await drain
        assert 0.5 <= took < 5
        seen: dict[str, list[dict]] = {"CA1": [], "CA2": []}
        while sum(e["type"] == "call.ended" for evs in seen.values() for e in evs) < 2:
            event = orjson.loads(await asyncio.wait_for(live.recv(), 5))
            seen[event["call_sid"]].append(event)
        for ws in calls:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd.code == 1001
    for events in seen.values():
        finals = [e for e in events if e["type"] == "transcript" and e["is_final"]]
        assert finals and finals[-1]["end"] == pytest.approx(10 * 0.02)
        assert events[-1]["reason"] == "drained"


def test_the_command_line_does_not_import_prometheus_before_serve_chooses_its_mode() -> None:
    """``serve --workers N`` sets PROMETHEUS_MULTIPROC_DIR before the first import of the client."""
    import subprocess
    import sys

    code = "import sys, callscribe.cli as c; c.build_parser(); print('prometheus_client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
