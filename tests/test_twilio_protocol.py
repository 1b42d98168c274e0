"""The Twilio Media Streams state machine, driven with plain messages (no sockets)."""

from __future__ import annotations

import base64

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callscribe.events import Track
from callscribe.protocol.twilio import (
    Audio,
    Connected,
    Dtmf,
    Malformed,
    Mark,
    Started,
    State,
    Stopped,
    TwilioStream,
)

CALL, STREAM = "CA" + "0" * 32, "MZ" + "1" * 32


def msg(event: str, seq: int | None = None, **body: object) -> str:
    out: dict[str, object] = {"event": event}
    if seq is not None:
        out["sequenceNumber"] = str(seq)
    if event != "connected":
        out["streamSid"] = STREAM
    out.update(body)
    return orjson.dumps(out).decode()


def start(tracks: list[str] | None = None, **extra: object) -> str:
    body = {
        "accountSid": "AC" + "2" * 32,
        "streamSid": STREAM,
        "callSid": CALL,
        "tracks": tracks or ["inbound", "outbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"tenant": "acme"},
    }
    body.update(extra)
    return msg("start", 1, start=body)


def media(track: str, ts: int, payload: bytes, chunk: int = 1, seq: int = 2) -> str:
    b64 = base64.b64encode(payload).decode()
    return msg(
        "media", seq, media={"track": track, "chunk": str(chunk), "timestamp": str(ts), "payload": b64}
    )


def started_stream(tracks: list[str] | None = None) -> TwilioStream:
    s = TwilioStream()
    assert isinstance(s.receive(msg("connected", protocol="Call", version="1.0.0"))[0], Connected)
    s.receive(start(tracks))
    return s


def audio_of(events: list) -> list[Audio]:
    return [e for e in events if isinstance(e, Audio)]


def test_every_event_in_order() -> None:
    s = TwilioStream(speakers={Track.INBOUND: "customer", Track.OUTBOUND: "rep"})
    (ev,) = s.receive(msg("connected", protocol="Call", version="1.0.0"))
    assert ev == Connected("Call", "1.0.0")
    (ev,) = s.receive(start())
    assert isinstance(ev, Started)
    assert ev.call.call_sid == CALL and ev.call.stream_sid == STREAM
    assert ev.call.tracks == (Track.INBOUND, Track.OUTBOUND)
    assert ev.call.custom_parameters == {"tenant": "acme"}
    assert ev.call.speaker(Track.OUTBOUND) == "rep"
    (ev,) = s.receive(media("inbound", 0, b"\x01" * 160))
    assert ev == Audio(Track.INBOUND, b"\x01" * 160, 0, 0)
    (ev,) = s.receive(msg("dtmf", 4, dtmf={"track": "inbound_track", "digit": "5"}))
    assert ev == Dtmf("inbound_track", "5")
    (ev,) = s.receive(msg("mark", 5, mark={"name": "greeting"}))
    assert ev == Mark("greeting")
    (ev,) = s.receive(msg("stop", 6, stop={"accountSid": "AC", "callSid": CALL}))
    assert ev == Stopped("stop")
    assert s.state is State.STOPPED
    assert s.close() == []  # already stopped: closing adds nothing


def test_counters_are_strings_and_both_tracks_interleave() -> None:
    s = started_stream()
    out = []
    for i in range(5):
        out += s.receive(media("inbound", i * 20, bytes([i]) * 160, chunk=2 * i + 1, seq=2 + 2 * i))
        out += s.receive(media("outbound", i * 20, bytes([100 + i]) * 160, chunk=2 * i + 2, seq=3 + 2 * i))
    inbound = b"".join(a.data for a in audio_of(out) if a.track is Track.INBOUND)
    outbound = b"".join(a.data for a in audio_of(out) if a.track is Track.OUTBOUND)
    assert inbound == b"".join(bytes([i]) * 160 for i in range(5))
    assert outbound == b"".join(bytes([100 + i]) * 160 for i in range(5))
    assert s.counters.media_frames == 10 and s.counters.gaps == 0
    assert s.duration() == pytest.approx(0.1)


def test_gap_is_filled_with_silence_so_the_clock_never_drifts() -> None:
    s = started_stream(["inbound"])
    s.receive(media("inbound", 0, b"\x01" * 160))
    (ev,) = s.receive(media("inbound", 100, b"\x02" * 160))  # frames at 20..80 ms were lost
    assert ev.offset == 160 and ev.filled == 4 * 160
    assert ev.data == b"\xff" * 640 + b"\x02" * 160
    assert s.clocks[Track.INBOUND].position == 120 * 8
    assert s.counters.gaps == 1 and s.counters.gap_bytes == 640


def test_late_starting_track_is_padded_from_time_zero() -> None:
    s = started_stream()
    s.receive(media("inbound", 0, b"\x01" * 160))
    (ev,) = s.receive(media("outbound", 3000, b"\x02" * 160))
    assert ev.offset == 0 and ev.filled == 3000 * 8
    assert s.counters.gaps == 0 and s.counters.leading_fill_bytes == 24_000


def test_small_timestamp_jitter_is_not_a_gap() -> None:
    s = started_stream(["inbound"])
    s.receive(media("inbound", 0, b"\x01" * 160))
    (ev,) = s.receive(media("inbound", 23, b"\x02" * 160))
    assert ev.filled == 0 and ev.offset == 160


def test_duplicate_and_late_frames_are_dropped_and_counted() -> None:
    s = started_stream(["inbound"])
    for i in range(3):
        s.receive(media("inbound", i * 20, b"\x01" * 160))
    assert s.receive(media("inbound", 40, b"\x01" * 160)) == []  # exact duplicate
    assert s.receive(media("inbound", 0, b"\x01" * 160)) == []  # late
    assert s.counters.duplicates == 2
    (ev,) = s.receive(media("inbound", 40, b"\x03" * 320))  # overlaps by one frame: keep the rest
    assert ev.data == b"\x03" * 160 and ev.offset == 480
    assert s.clocks[Track.INBOUND].position == 640


def test_payload_size_comes_from_the_payload_not_a_constant() -> None:
    s = started_stream(["inbound"])
    s.receive(media("inbound", 0, b"\x01" * 80))  # 10 ms
    (ev,) = s.receive(media("inbound", 10, b"\x01" * 400))  # 50 ms
    assert ev.offset == 80 and ev.filled == 0


def test_socket_closed_without_stop_is_a_stop() -> None:
    s = started_stream()
    assert s.close() == [Stopped("closed")]
    assert s.close() == []
    assert TwilioStream().close() == []  # never started: nothing to stop


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("not json", "invalid_json"),
        (b"\x00\x01binary", "binary"),
        ("[1, 2]", "not_object"),
        ('{"event": "hangup"}', "unknown_event"),
        ('{"no": "event"}', "unknown_event"),
        (
            '{"event": "media", "media": {"track": "inbound", "timestamp": "0", "payload": "AAAA"}}',
            "media_before_start",
        ),
    ],
)
def test_bad_input_before_start(message: str | bytes, kind: str) -> None:
    s = TwilioStream()
    (ev,) = s.receive(message)
    assert isinstance(ev, Malformed) and ev.kind == kind
    assert s.counters.malformed[kind] == 1
    assert s.state is State.AWAITING_START  # the call goes on


@pytest.mark.parametrize(
    ("media_body", "kind"),
    [
        ({"track": "inbound", "timestamp": "0", "payload": "not base64!!"}, "bad_base64"),
        ({"track": "inbound", "timestamp": "zero", "payload": "AAAA"}, "bad_media"),
        ({"track": "inbound", "payload": "AAAA"}, "bad_media"),
        ({"track": "inbound", "timestamp": "0"}, "bad_media"),
        ({"track": "sideways", "timestamp": "0", "payload": "AAAA"}, "unknown_track"),
        ({"track": "inbound", "timestamp": "0", "payload": ""}, "empty_payload"),
        ({"track": "inbound", "timestamp": "-20", "payload": "AAAA"}, "bad_media"),
    ],
)
def test_bad_media_is_counted_and_the_stream_goes_on(media_body: dict, kind: str) -> None:
    s = started_stream()
    (ev,) = s.receive(msg("media", 3, media=media_body))
    assert isinstance(ev, Malformed) and ev.kind == kind
    (good,) = s.receive(media("inbound", 0, b"\x05" * 160))
    assert isinstance(good, Audio)


def test_oversized_frame_and_wrong_format_are_reported() -> None:
    s = TwilioStream(max_frame_bytes=320)
    s.receive(msg("connected"))
    evs = s.receive(start(mediaFormat={"encoding": "audio/l16", "sampleRate": 16000, "channels": 1}))
    assert isinstance(evs[0], Started) and isinstance(evs[1], Malformed) and evs[1].kind == "media_format"
    (ev,) = s.receive(media("inbound", 0, b"\x00" * 400))
    assert ev.kind == "frame_too_large"


def test_clock_jump_is_not_filled() -> None:
    s = TwilioStream(max_gap_ms=1000)
    s.receive(start(["inbound"]))
    s.receive(media("inbound", 0, b"\x01" * 160))
    evs = s.receive(media("inbound", 50_000, b"\x02" * 160))
    assert isinstance(evs[0], Malformed) and evs[0].kind == "clock_jump"
    assert evs[1].offset == 160 and evs[1].filled == 0


def test_second_start_and_missing_fields() -> None:
    s = started_stream()
    (ev,) = s.receive(start())
    assert ev.kind == "duplicate_start"
    t = TwilioStream()
    (ev,) = t.receive(msg("start", 1, start={"streamSid": STREAM}))
    assert ev.kind == "bad_start" and t.state is State.AWAITING_START


def test_start_without_custom_parameters_or_tracks() -> None:
    s = TwilioStream()
    (ev,) = s.receive(msg("start", 1, start={"streamSid": STREAM, "callSid": CALL}))
    assert ev.call.custom_parameters == {} and ev.call.tracks == (Track.INBOUND,)


def test_counters_report() -> None:
    s = started_stream()
    s.receive("garbage")
    s.receive(media("inbound", 0, b"\x01" * 160))
    d = s.counters.as_dict()
    assert d["media_frames"] == 1 and d["malformed"] == 1 and d["malformed.invalid_json"] == 1


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=64),
            st.text(max_size=64),
            st.builds(
                lambda ev, body: orjson.dumps({"event": ev, **body}).decode(),
                st.sampled_from(["connected", "start", "media", "dtmf", "mark", "stop", "other"]),
                st.dictionaries(
                    st.sampled_from(["start", "media", "dtmf", "mark", "stop", "streamSid"]), _json_values
                ),
            ),
            st.builds(
                lambda ts, payload, track: media(track, ts, payload),
                st.integers(min_value=-100, max_value=10**7),
                st.binary(max_size=400),
                st.sampled_from(["inbound", "outbound", "both"]),
            ),
        ),
        max_size=25,
    )
)
def test_no_input_crashes_the_parser(messages: list[str | bytes]) -> None:
    s = TwilioStream()
    s.receive(start())
    for m in messages:
        for ev in s.receive(m):
            if isinstance(ev, Audio):
                assert ev.offset >= 0 and len(ev.data) > 0
    for track, clock in s.clocks.items():
        assert clock.position >= 0, track
    s.close()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["inbound", "outbound"]), st.integers(0, 5000)), max_size=60))
def test_track_audio_is_always_contiguous(frames: list[tuple[str, int]]) -> None:
    s = started_stream()
    seen = {Track.INBOUND: 0, Track.OUTBOUND: 0}
    for track, ts in frames:
        for ev in s.receive(media(track, ts, b"\x07" * 160)):
            if isinstance(ev, Audio):
                assert ev.offset == seen[ev.track]
                seen[ev.track] += len(ev.data)
    assert seen == {t: c.position for t, c in s.clocks.items()}
