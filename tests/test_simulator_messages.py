"""The pure half of the simulator: the exact messages a fake Twilio sends (protocols.md §1.3–1.4)."""

from __future__ import annotations

import base64
import re

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from callscribe.events import Track
from callscribe.simulator.messages import (
    FRAME_BYTES,
    CallIds,
    Scenario,
    plan_call,
    split_frames,
    twilio_signature,
)

IN, OUT = Track.INBOUND, Track.OUTBOUND


def audio(frames: int, fill: int = 0x10, extra: int = 0) -> bytes:
    return bytes([fill]) * (frames * FRAME_BYTES + extra)


def media(plan, track: Track | None = None) -> list[dict]:
    msgs = [m for m in plan.messages() if m["event"] == "media"]
    return [m for m in msgs if track is None or m["media"]["track"] == str(track)]


def test_connected_and_start_have_every_field():
    ids = CallIds.new()
    plan = plan_call(Scenario(audio(2), audio(2), ids=ids, params={"tenant": "acme"}))
    assert plan.connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert plan.start == {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": ids.account_sid,
            "streamSid": ids.stream_sid,
            "callSid": ids.call_sid,
            "tracks": ["inbound", "outbound"],
            "customParameters": {"tenant": "acme"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
        "streamSid": ids.stream_sid,
    }
    assert re.fullmatch(r"AC[0-9a-f]{32}", ids.account_sid)
    assert re.fullmatch(r"CA[0-9a-f]{32}", ids.call_sid)
    assert re.fullmatch(r"MZ[0-9a-f]{32}", ids.stream_sid)
    assert plan_call(Scenario(audio(1))).start["start"]["tracks"] == ["inbound"]
    assert plan_call(Scenario(audio(1))).start["start"]["customParameters"] == {}


def test_one_track_media_and_stop():
    caller = bytes(range(256)) * 2  # 512 bytes: 3 full frames + 32 bytes
    plan = plan_call(Scenario(caller))
    msgs = list(plan.messages())
    assert [m["event"] for m in msgs] == ["connected", "start", "media", "media", "media", "media", "stop"]
    frames = media(plan)
    assert [m["sequenceNumber"] for m in frames] == ["2", "3", "4", "5"]
    assert [m["media"]["chunk"] for m in frames] == ["1", "2", "3", "4"]
    assert [m["media"]["timestamp"] for m in frames] == ["0", "20", "40", "60"]
    assert all(m["media"]["track"] == "inbound" and m["streamSid"] == plan.ids.stream_sid for m in frames)
    payloads = [base64.b64decode(m["media"]["payload"]) for m in frames]
    assert all(len(p) == 160 for p in payloads)
    assert b"".join(payloads)[: len(caller)] == caller
    assert payloads[-1][32:] == b"\xff" * 128  # last frame padded with μ-law silence
    assert msgs[-1] == {
        "event": "stop",
        "sequenceNumber": "6",
        "stop": {"accountSid": plan.ids.account_sid, "callSid": plan.ids.call_sid},
        "streamSid": plan.ids.stream_sid,
    }
    assert plan.duration_ms == 80


def test_every_counter_is_a_json_string():
    plan = plan_call(Scenario(audio(3), audio(2), drop_rate=0.3, seed=1))
    for msg in plan.messages():
        wire = orjson.loads(orjson.dumps(msg))
        if msg["event"] != "connected":
            assert isinstance(wire["sequenceNumber"], str)
        if msg["event"] == "media":
            assert all(isinstance(wire["media"][k], str) for k in ("chunk", "timestamp", "payload"))
    fmt = plan.start["start"]["mediaFormat"]
    assert isinstance(fmt["sampleRate"], int) and isinstance(fmt["channels"], int)


def test_both_tracks_interleave_frame_by_frame_and_shorter_track_is_padded():
    plan = plan_call(Scenario(audio(4, 0x01), audio(2, 0x02)))
    frames = media(plan)
    assert [(m["media"]["track"], m["media"]["timestamp"]) for m in frames] == [
        ("inbound", "0"),
        ("outbound", "0"),
        ("inbound", "20"),
        ("outbound", "20"),
        ("inbound", "40"),
        ("outbound", "40"),
        ("inbound", "60"),
        ("outbound", "60"),
    ]
    # sequenceNumber is socket-wide, chunk per track
    assert [int(m["sequenceNumber"]) for m in frames] == list(range(2, 10))
    assert [m["media"]["chunk"] for m in media(plan, OUT)] == ["1", "2", "3", "4"]
    assert [m["media"]["chunk"] for m in media(plan, IN)] == ["1", "2", "3", "4"]
    out_payloads = [base64.b64decode(m["media"]["payload"]) for m in media(plan, OUT)]
    assert out_payloads[:2] == [b"\x02" * 160] * 2 and out_payloads[2:] == [b"\xff" * 160] * 2
    assert plan.stop is not None and plan.stop["sequenceNumber"] == "10"


def test_without_padding_the_shorter_track_ends():
    plan = plan_call(Scenario(audio(2), audio(4), pad=False))
    assert [m["media"]["timestamp"] for m in media(plan, IN)] == ["0", "20"]
    assert [m["media"]["timestamp"] for m in media(plan, OUT)] == ["0", "20", "40", "60"]
    assert [int(m["sequenceNumber"]) for m in media(plan)] == list(range(2, 8))


def test_dropped_frames_make_timestamps_jump():
    plan = plan_call(Scenario(audio(6), audio(6), dropped={IN: {2, 3}, OUT: {5}}))
    assert [m["media"]["timestamp"] for m in media(plan, IN)] == ["0", "20", "80", "100"]
    assert [m["media"]["timestamp"] for m in media(plan, OUT)] == ["0", "20", "40", "60", "80"]
    # what Twilio never sent has no chunk or sequence number either
    assert [m["media"]["chunk"] for m in media(plan, IN)] == ["1", "2", "3", "4"]
    assert [int(m["sequenceNumber"]) for m in media(plan)] == list(range(2, 11))
    assert [f.index for f in plan.frames if f.track == IN] == [0, 1, 4, 5]


def test_random_drops_are_repeatable_with_a_seed():
    def kept(seed: int) -> list[int]:
        return [f.timestamp_ms for f in plan_call(Scenario(audio(500), drop_rate=0.2, seed=seed)).frames]

    assert kept(7) == kept(7)
    assert kept(7) != kept(8)
    assert 300 < len(kept(7)) < 480


def test_late_agent_starts_at_its_delay():
    plan = plan_call(Scenario(audio(5), audio(2), agent_delay=0.06))
    assert [m["media"]["timestamp"] for m in media(plan, OUT)] == ["60", "80"]
    assert [m["media"]["chunk"] for m in media(plan, OUT)] == ["1", "2"]
    assert [(m["media"]["track"], m["media"]["timestamp"]) for m in media(plan)][3:] == [
        ("inbound", "60"),
        ("outbound", "60"),
        ("inbound", "80"),
        ("outbound", "80"),
    ]
    # an agent that outlasts the caller extends the call; the caller is padded
    longer = plan_call(Scenario(audio(2), audio(2), agent_delay=0.1))
    assert longer.duration_ms == 140
    assert [m["media"]["timestamp"] for m in media(longer, IN)][-1] == "120"


def test_no_stop():
    plan = plan_call(Scenario(audio(2), send_stop=False))
    assert plan.stop is None
    assert [m["event"] for m in plan.messages()][-1] == "media"


def test_split_frames():
    assert split_frames(b"") == []
    assert split_frames(b"\x00" * 160) == [b"\x00" * 160]
    assert split_frames(b"\x00" * 161) == [b"\x00" * 160, b"\x00" + b"\xff" * 159]


@pytest.mark.parametrize("url", ["ws://127.0.0.1:8765/media", "wss://stt.example.com/twilio"])
def test_signature_validates_with_twilio(url: str):
    sig = twilio_signature(url, "s3cret")
    assert RequestValidator("s3cret").validate(url, {}, sig)
    assert not RequestValidator("other").validate(url, {}, sig)
    assert not RequestValidator("s3cret").validate(url + "/x", {}, sig)


@given(
    st.integers(0, 30),
    st.one_of(st.none(), st.integers(0, 30)),
    st.sets(st.integers(0, 40), max_size=10),
    st.floats(0, 0.3),
    st.booleans(),
)
def test_plan_invariants(n_in: int, n_out: int | None, drops: set[int], delay: float, pad: bool):
    agent = None if n_out is None else audio(n_out, extra=7)
    plan = plan_call(
        Scenario(audio(n_in), agent, dropped={IN: drops, OUT: drops}, agent_delay=delay, pad=pad)
    )
    assert [f.sequence for f in plan.frames] == list(range(2, len(plan.frames) + 2))
    for track in plan.tracks:
        mine = [f for f in plan.frames if f.track == track]
        assert [f.chunk for f in mine] == list(range(1, len(mine) + 1))
        ts = [f.timestamp_ms for f in mine]
        assert ts == sorted(set(ts)) and all(t % 20 == 0 and t < plan.duration_ms for t in ts)
        assert not {f.index for f in mine} & drops
    # slots never go backwards across tracks
    assert [f.timestamp_ms for f in plan.frames] == sorted(f.timestamp_ms for f in plan.frames)
