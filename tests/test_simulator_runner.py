"""The simulator's I/O half against a tiny in-test gateway (serves /media and /live/{call_sid})."""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from rich.console import Console
from twilio.request_validator import RequestValidator
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from callscribe.audio.wav import wav_to_ulaw, write_wav
from callscribe.events import CallEnded, CallInfo, CallStarted, Track, TranscriptEvent, event_to_dict
from callscribe.simulator import command
from callscribe.simulator.display import Display, final_line
from callscribe.simulator.report import (
    ReceivedEvent,
    SentFrame,
    format_report,
    latency_report,
)
from callscribe.simulator.runner import SimulatorError, live_url_for, simulate_call


def tone(seconds: float, freq: float = 440.0, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def wavs(tmp_path: Path) -> tuple[Path, Path]:
    caller, agent = tmp_path / "caller.wav", tmp_path / "agent.wav"
    write_wav(caller, tone(0.5), 16000)  # 25 frames
    write_wav(agent, tone(0.3, 300.0, 8000), 8000)  # 15 frames
    return caller, agent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeGateway:
    """Records what /media receives and publishes fake transcripts on /live/{call_sid}.

    For each track: a partial when the frame with timestamp 100 ms arrives, and a final with
    ``end`` = 0.2 s when the frame with timestamp 280 ms arrives (so ~100 ms after the audio at
    0.2 s was sent); ``call.ended`` when the media socket ends.
    """

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.port = 0
        self.received: list[tuple[float, dict]] = []  # (monotonic arrival, message)
        self.binary_frames = 0
        self.subscribers: dict[str, list[ServerConnection]] = {}
        self.close_code: int | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/media"

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/media" and self.token:
            sig = request.headers.get("X-Twilio-Signature", "")
            if not RequestValidator(self.token).validate(self.url, {}, sig):
                return connection.respond(403, "bad signature\n")
        return None

    async def handler(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request else ""
        if path.startswith("/live/"):
            self.subscribers.setdefault(path.removeprefix("/live/"), []).append(ws)
            await ws.wait_closed()
        elif path == "/media":
            await self.media(ws)

    async def publish(self, call_sid: str, event) -> None:
        for ws in self.subscribers.get(call_sid, []):
            await ws.send(orjson.dumps(event_to_dict(event)).decode())

    async def media(self, ws: ServerConnection) -> None:
        info: CallInfo | None = None
        async for raw in ws:
            if isinstance(raw, bytes):
                self.binary_frames += 1
            msg = orjson.loads(raw)
            self.received.append((time.monotonic(), msg))
            if msg["event"] == "start":
                s = msg["start"]
                tracks = tuple(Track(t) for t in s["tracks"])
                info = CallInfo(s["callSid"], s["streamSid"], s["accountSid"], tracks, s["customParameters"])
                await self.publish(info.call_sid, CallStarted(info, engine="fake"))
            elif msg["event"] == "media" and info is not None:
                track = Track(msg["media"]["track"])
                ts = int(msg["media"]["timestamp"])
                if ts in (100, 280):
                    final = ts == 280
                    await self.publish(
                        info.call_sid,
                        TranscriptEvent(
                            call_sid=info.call_sid,
                            stream_sid=info.stream_sid,
                            track=track,
                            speaker=info.speaker(track),
                            utterance_id=f"{track}-1",
                            text="hello there" if final else "hello",
                            is_final=final,
                            start=0.0,
                            end=0.2 if final else 0.1,
                        ),
                    )
            elif msg["event"] == "stop":
                break
        self.close_code = ws.close_code
        if info is not None:
            await self.publish(info.call_sid, CallEnded(info.call_sid, info.stream_sid, "stop", 0.5))

    def events(self, name: str) -> list[dict]:
        return [m for _, m in self.received if m["event"] == name]


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    gw = FakeGateway()
    async with serve(gw.handler, "127.0.0.1", 0, process_request=gw.process_request) as server:
        gw.port = _port(server)
        yield gw


def _port(server: Server) -> int:
    return next(iter(server.sockets)).getsockname()[1]


async def test_realtime_call_sends_in_order_paced_and_reports_latency(gateway: FakeGateway, wavs):
    caller, agent = wav_to_ulaw(wavs[0]), wav_to_ulaw(wavs[1])
    seen: list[ReceivedEvent] = []
    result = await simulate_call(
        gateway.url, caller, agent, params={"tenant": "acme"}, on_event=seen.append, drain_timeout=2
    )

    assert result.error is None and result.ended
    assert gateway.binary_frames == 0
    msgs = [m for _, m in gateway.received]
    assert [m["event"] for m in msgs[:2]] == ["connected", "start"] and msgs[-1]["event"] == "stop"
    assert msgs[1]["start"]["customParameters"] == {"tenant": "acme"}
    assert msgs[1]["start"]["callSid"] == result.call_sid
    assert [int(m["sequenceNumber"]) for m in msgs[1:]] == list(range(1, len(msgs)))
    media = gateway.events("media")
    inbound = [m["media"] for m in media if m["media"]["track"] == "inbound"]
    outbound = [m["media"] for m in media if m["media"]["track"] == "outbound"]
    assert [int(m["timestamp"]) for m in inbound] == list(range(0, 500, 20))
    assert [int(m["timestamp"]) for m in outbound] == list(range(0, 500, 20))  # padded to the caller
    assert b"".join(base64.b64decode(m["payload"]) for m in inbound)[: len(caller)] == caller
    assert result.frames_sent == {"inbound": 25, "outbound": 25}
    assert result.audio_seconds == pytest.approx(0.5)

    # Real-time pacing: 25 frames of 20 ms take ~0.5 s (loose: this checks behaviour, not speed).
    arrivals = [t for t, m in gateway.received if m["event"] == "media"]
    assert 0.4 <= arrivals[-1] - arrivals[0] <= 1.0
    sent = [f.sent_at for f in result.sent if f.track == "inbound"]
    gaps = np.diff(sent)
    assert 0.015 <= float(np.median(gaps)) <= 0.03

    # Every event of the call arrived, in order, also through on_event.
    types = [(e.type, e.data.get("is_final")) for e in result.events]
    assert types[0] == ("call.started", None) and types[-1] == ("call.ended", None)
    assert types.count(("transcript", False)) == 2 and types.count(("transcript", True)) == 2
    assert seen == result.events

    # Finals end at 0.2 s and are published ~100 ms after that audio was sent.
    report = result.report
    assert report.overall.count == 2 and set(report.by_speaker) == {"caller", "agent"}
    for final in report.finals:
        assert final.end == 0.2
        assert 50 <= final.latency_ms <= 400
    sent_at = next(f.sent_at for f in result.sent if f.track == "inbound" and f.end_ms == 200)
    caller_final = next(e for e in result.finals if e.data["track"] == "inbound")
    caller_latency = next(f for f in report.finals if f.speaker == "caller").latency_ms
    assert caller_latency == pytest.approx((caller_final.at - sent_at) * 1000)
    assert report.first_partial_ms is not None and 60 <= report.first_partial_ms <= 400
    assert "caller" in format_report(report) and "overall" in format_report(report)


async def test_fast_mode_does_not_pace(gateway: FakeGateway, tmp_path: Path):
    path = tmp_path / "long.wav"
    write_wav(path, tone(3.0), 16000)
    t0 = time.monotonic()
    result = await simulate_call(gateway.url, wav_to_ulaw(path), realtime=False, drain_timeout=2)
    assert time.monotonic() - t0 < 1.0
    assert result.ended and result.frames_sent == {"inbound": 150}
    assert len(gateway.events("media")) == 150
    assert result.report.overall.count == 1


async def test_dropped_frames_late_agent_and_no_stop(gateway: FakeGateway, wavs):
    caller, agent = wav_to_ulaw(wavs[0]), wav_to_ulaw(wavs[1])
    result = await simulate_call(
        gateway.url,
        caller,
        agent,
        realtime=False,
        dropped={Track.INBOUND: {3, 4}},
        agent_delay=0.1,
        send_stop=False,
        drain_timeout=2,
    )
    assert result.ended
    assert not gateway.events("stop") and gateway.close_code == 1000
    inbound = [
        int(m["media"]["timestamp"]) for m in gateway.events("media") if m["media"]["track"] == "inbound"
    ]
    assert inbound[:4] == [0, 20, 40, 100]
    outbound = [
        int(m["media"]["timestamp"]) for m in gateway.events("media") if m["media"]["track"] == "outbound"
    ]
    assert outbound[0] == 100 and outbound[-1] == 480
    assert result.frames_sent == {"inbound": 23, "outbound": 20}


async def test_signed_handshake_is_accepted_and_a_bad_one_refused(wavs):
    gw = FakeGateway(token="s3cret")
    async with serve(gw.handler, "127.0.0.1", 0, process_request=gw.process_request) as server:
        gw.port = _port(server)
        caller = wav_to_ulaw(wavs[0])
        ok = await simulate_call(gw.url, caller, realtime=False, auth_token="s3cret", drain_timeout=2)
        assert ok.ended
        with pytest.raises(SimulatorError) as err:
            await simulate_call(gw.url, caller, realtime=False, auth_token="wrong")
    msg = str(err.value)
    assert "HTTP 403" in msg and "X-Twilio-Signature" in msg and "\n" not in msg


async def test_nothing_listening_gives_a_clear_error():
    url = f"ws://127.0.0.1:{free_port()}/media"
    with pytest.raises(SimulatorError) as err:
        await simulate_call(url, b"\xff" * 320)
    assert str(err.value) == f"cannot connect to {url}: connection refused — is 'callscribe serve' running?"


async def test_missing_call_ended_is_not_waited_for_forever(wavs):
    async def silent(ws: ServerConnection) -> None:
        async for _ in ws:
            pass

    async with serve(silent, "127.0.0.1", 0) as server:
        t0 = time.monotonic()
        result = await simulate_call(
            f"ws://127.0.0.1:{_port(server)}/media", b"\xff" * 800, realtime=False, drain_timeout=0.2
        )
    assert not result.ended and result.events == [] and result.frames_sent == {"inbound": 5}
    assert time.monotonic() - t0 < 1.5


async def test_gateway_closing_the_media_socket_is_reported(wavs):
    async def closing(ws: ServerConnection) -> None:
        if ws.request and ws.request.path == "/media":
            await ws.recv()
            await ws.close(1008, "bad signature")
        else:
            await ws.wait_closed()

    async with serve(closing, "127.0.0.1", 0) as server:
        result = await simulate_call(
            f"ws://127.0.0.1:{_port(server)}/media", wav_to_ulaw(wavs[0]), drain_timeout=0.2
        )
    assert result.error is not None and "code 1008 bad signature" in result.error
    assert len(result.sent) < 25 and not result.ended


def test_live_url_for():
    assert live_url_for("ws://h:5000/media", "CA1") == "ws://h:5000/live/CA1"
    assert live_url_for("wss://h/app/media", "CA1") == "wss://h/app/live/CA1"
    assert live_url_for("ws://h:5000/twilio", "CA1") == "ws://h:5000/live/CA1"
    assert live_url_for("ws://h/media", "CA1", "ws://x/live") == "ws://x/live"
    assert live_url_for("ws://h/media", "CA1", "ws://x/live/{call_sid}") == "ws://x/live/CA1"


def _final(at: float, track: str, end: float, speaker: str = "caller") -> ReceivedEvent:
    data = {"type": "transcript", "call_sid": "CA1", "track": track, "speaker": speaker}
    return ReceivedEvent(at, {**data, "is_final": True, "end": end, "utterance_id": "u", "text": "x"})


def test_latency_maps_end_to_the_frame_carrying_it():
    # frames of one track sent at 100 + slot; slot 2 (40–60 ms) was dropped
    sent = [SentFrame("inbound", i, i * 20, i * 20 + 20, 100.0 + i) for i in (0, 1, 3, 4)]
    events = [
        ReceivedEvent(
            100.5, {"type": "transcript", "call_sid": "CA1", "track": "inbound", "is_final": False}
        ),
        _final(110.0, "inbound", 0.04),  # exactly the end of frame 1 → frame 1
        _final(110.0, "inbound", 0.041),  # inside frame 2 (dropped) → frame 3, the next sent
        _final(110.0, "inbound", 9.0),  # beyond the audio → the last frame
        _final(110.0, "outbound", 0.01, "agent"),  # no audio on that track
    ]
    report = latency_report(sent, events)
    assert [f.latency_ms for f in report.finals] == pytest.approx([9000, 7000, 6000])
    assert report.unmatched == 1
    assert report.overall.count == 3 and report.overall.max_ms == pytest.approx(9000)
    assert report.overall.p50_ms == pytest.approx(7000)
    assert report.overall.p95_ms == pytest.approx(8800)
    assert report.first_partial_ms == pytest.approx(500)
    assert report.first_final_ms == pytest.approx(10000)
    assert "not counted" in format_report(report)
    empty = latency_report([], [])
    assert empty.overall.count == 0 and "–" in format_report(empty)


def test_plain_display_prints_finals_only(capsys):
    with Display() as d:  # stdout is not a terminal here
        assert not d.rich
        d.progress(0.5, 1.0)
        d.event(ReceivedEvent(1.0, {"type": "transcript", "is_final": False, "text": "hel"}))
        d.event(_final(2.0, "inbound", 3.4))
    assert capsys.readouterr().out == "[caller 0.0–3.4s] x\n"
    assert final_line({"speaker": "agent", "start": 1.23, "end": 3.45, "text": "hi"}) == "[agent 1.2–3.5s] hi"


def test_terminal_display_updates_partials_in_place():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=80)
    with Display(console=console, out=buf) as d:
        assert d.rich
        d.progress(0.2, 1.0)
        partial = {"type": "transcript", "is_final": False, "utterance_id": "u", "speaker": "caller"}
        d.event(ReceivedEvent(1.0, {**partial, "start": 0.0, "text": "hel"}))
        d.event(ReceivedEvent(1.1, {**partial, "start": 0.0, "text": "hello"}))
        assert list(d._partials.values()) == ["[caller 0.0s…] hello"]
        d.event(_final(2.0, "inbound", 3.4))
        assert d._partials == {}
    assert "[caller 0.0–3.4s] x" in buf.getvalue()


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(argv)


async def test_cli_runs_a_call_and_writes_the_report(gateway: FakeGateway, wavs, tmp_path: Path, capsys):
    report = tmp_path / "report.json"
    args = _args(
        str(wavs[0]), str(wavs[1]), "--url", gateway.url, "--fast", "--json",
        "--report-json", str(report), "--param", "tenant=acme", "--drop-frames", "agent:2,5-6",
    )  # fmt: skip
    assert await asyncio.to_thread(command.run, args) == 0
    out = capsys.readouterr()
    lines = [orjson.loads(line) for line in out.out.splitlines()]
    assert lines[0]["type"] == "call.started" and lines[-1]["type"] == "call.ended"
    assert "overall" in out.err
    data = orjson.loads(report.read_bytes())
    assert data["ended"] and data["frames_sent"] == {"inbound": 23, "outbound": 22}
    assert data["latency"]["overall"]["count"] == 2
    assert gateway.events("start")[0]["start"]["customParameters"] == {"tenant": "acme"}


def test_cli_reports_a_refused_connection_in_one_line(wavs, capsys):
    url = f"ws://127.0.0.1:{free_port()}/media"
    assert command.run(_args(str(wavs[0]), "--url", url)) == 1
    err = capsys.readouterr().err
    assert err == f"error: cannot connect to {url}: connection refused — is 'callscribe serve' running?\n"


def test_cli_reports_an_unreadable_wav(tmp_path: Path, capsys):
    assert command.run(_args(str(tmp_path / "missing.wav"))) == 1
    assert capsys.readouterr().err.startswith("error: cannot read ")


def test_cli_argument_parsing():
    args = _args("a.wav", "--param", "x=1=2", "--drop-frames", "1,caller:3-4", "--no-stop", "--no-pad")
    assert args.param == [("x", "1=2")] and not args.send_stop and not args.pad
    assert command._dropped(args.drop_frames, [Track.INBOUND, Track.OUTBOUND]) == {
        Track.INBOUND: {1, 3, 4},
        Track.OUTBOUND: {1},
    }
    with pytest.raises(SystemExit):
        _args("a.wav", "--param", "novalue")
    with pytest.raises(SystemExit):
        _args("a.wav", "--drop-frames", "bogus:1")
