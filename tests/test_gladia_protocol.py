"""Gladia live v2 without I/O: init body, message parsing, REST errors, transcript → event."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from callscribe.config import Settings
from callscribe.events import CallInfo, Track
from callscribe.fakes.gladia import validate_init
from callscribe.protocol import gladia as proto

CALL = CallInfo("CA123", "MZ456", account_sid="AC789", tracks=(Track.INBOUND, Track.OUTBOUND))


def make_settings(**kw: object) -> Settings:
    return Settings(_env_file=None, gladia_api_key="secret", **kw)  # type: ignore[call-arg]


def test_init_body_is_explicit_and_valid() -> None:
    body = proto.build_init_body(make_settings(gladia_partials=False), CALL, channels=2)
    assert body["encoding"] == "wav/ulaw" and body["bit_depth"] == 8 and body["sample_rate"] == 8000
    assert body["channels"] == 2 and body["model"] == "solaria-1"
    assert body["endpointing"] == 0.3 and body["maximum_duration_without_endpointing"] == 15
    assert body["language_config"] == {"languages": ["en"], "code_switching": False}
    mc = body["messages_config"]
    assert len(mc) == 9 and all(isinstance(v, bool) for v in mc.values())
    assert mc["receive_partial_transcripts"] is False
    assert mc["receive_acknowledgments"] is True  # lossless resume needs them
    assert mc["receive_final_transcripts"] and mc["receive_speech_events"] and mc["receive_lifecycle_events"]
    assert mc["receive_errors"]
    meta = body["custom_metadata"]
    assert (meta["call_sid"], meta["stream_sid"], meta["account_sid"]) == ("CA123", "MZ456", "AC789")
    assert validate_init(orjson.loads(orjson.dumps(body))) == []


def test_init_body_languages_and_partials() -> None:
    body = proto.build_init_body(make_settings(gladia_languages=["en", "fr"]), CALL, channels=1)
    assert body["language_config"] == {"languages": ["en", "fr"], "code_switching": True}
    assert body["messages_config"]["receive_partial_transcripts"] is True
    assert body["channels"] == 1


def test_urls_region_only_on_post_and_key_header() -> None:
    s = make_settings(gladia_api_url="https://api.gladia.io/", gladia_region="us-west")
    assert proto.init_url(s) == "https://api.gladia.io/v2/live?region=us-west"
    assert proto.session_url(s, "abc") == "https://api.gladia.io/v2/live/abc"
    assert proto.init_url(make_settings()) == "https://api.gladia.io/v2/live"
    assert proto.headers(s)["x-gladia-key"] == "secret"
    assert proto.init_url(make_settings(gladia_api_url="wss://eu.example")) == "https://eu.example/v2/live"


def test_channel_tracks() -> None:
    assert proto.channel_tracks(CALL) == (Track.INBOUND, Track.OUTBOUND)
    both_reversed = CallInfo("CA", "MZ", tracks=(Track.OUTBOUND, Track.INBOUND))
    assert proto.channel_tracks(both_reversed) == (Track.INBOUND, Track.OUTBOUND)
    assert proto.channel_tracks(CallInfo("CA", "MZ", tracks=(Track.OUTBOUND,))) == (Track.OUTBOUND,)


def test_parse_init_response() -> None:
    init = proto.parse_init_response(b'{"id":"i","created_at":"t","url":"wss://x/v2/live?token=1"}')
    assert init == proto.InitResponse(id="i", url="wss://x/v2/live?token=1", created_at="t")
    for bad in (b"nope", b"[]", b'{"id":"i"}'):
        with pytest.raises(ValueError):
            proto.parse_init_response(bad)


def msg(**kw: object) -> str:
    return orjson.dumps({"session_id": "S", "created_at": "2025-01-01T00:00:00.000Z", **kw}).decode()


TRANSCRIPT = msg(
    type="transcript",
    data={
        "id": "01_00000003",
        "is_final": True,
        "utterance": {
            "text": " Hello world",
            "start": 0.188,
            "end": 1.284,
            "language": "en",
            "confidence": 1,
            "channel": 1,
            "words": [
                {"word": " Hello", "start": 0.188, "end": 0.735, "confidence": 1},
                {"word": " world", "start": 0.736, "end": 1.284, "confidence": 0.9},
            ],
        },
    },
)


def test_parse_transcript() -> None:
    m = proto.parse_message(TRANSCRIPT)
    assert isinstance(m, proto.TranscriptMessage)
    assert m.id == "01_00000003" and m.is_final and m.session_id == "S"
    assert m.utterance.channel == 1 and m.utterance.language == "en" and m.utterance.confidence == 1.0
    assert [w.word for w in m.utterance.words] == [" Hello", " world"]


def test_parse_every_other_type() -> None:
    p = proto.parse_message
    assert p(msg(type="speech_start", data={"time": 1.24, "channel": 0.0})) == proto.SpeechStart("S", 1.24, 0)
    assert p(msg(type="speech_end", data={"time": 3.1, "channel": 1})) == proto.SpeechEnd("S", 3.1, 1)
    ack = p(
        msg(
            type="audio_chunk",
            acknowledged=True,
            error=None,
            data={"byte_range": [0, 4096], "time_range": [0.0, 0.256]},
        )
    )
    assert ack == proto.AudioChunkAck("S", True, (0, 4096), (0.0, 0.256))
    nack = p(msg(type="audio_chunk", acknowledged=False, data=None, error={"message": "bad"}))
    assert nack == proto.AudioChunkAck("S", False, None, None, "bad")
    stop = p(
        msg(
            type="stop_recording",
            acknowledged=True,
            error=None,
            data={"recording_duration": 12.34, "recording_left_to_process": 0.5},
        )
    )
    assert stop == proto.StopRecordingAck("S", True, 12.34, 0.5)
    stop2 = p(
        msg(
            type="stop_recording",
            acknowledged=False,
            data=None,
            error={"status_code": 409, "exception": "ConflictError", "message": "Recording already stopped"},
        )
    )
    assert isinstance(stop2, proto.StopRecordingAck) and stop2.error == "Recording already stopped"
    for kind in ("start_session", "start_recording", "end_session"):
        assert p(msg(type=kind)) == proto.Lifecycle("S", kind)
    end_rec = p(msg(type="end_recording", data={"recording_duration": 2.0}))
    assert end_rec == proto.Lifecycle("S", "end_recording", {"recording_duration": 2.0})
    post = p(msg(type="post_final_transcript", data={"metadata": {}}))
    assert post == proto.PostProcessing("S", "post_final_transcript", {"metadata": {}})
    err = p(msg(type="error", data={"code": "session_timeout", "message": "too quiet"}))
    assert err == proto.ErrorMessage("S", "session_timeout", "too quiet")


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1, 2]",
        '{"type": "translation", "data": {}}',
        '{"no": "type"}',
        '{"type": "transcript", "data": {"utterance": "oops"}}',
        '{"type": "transcript", "data": []}',
        b'{"type": "brand_new"}',
    ],
)
def test_unknown_and_malformed_are_kept(raw: str | bytes) -> None:
    m = proto.parse_message(raw)
    assert isinstance(m, proto.UnknownMessage)
    assert m.raw == (raw.decode() if isinstance(raw, bytes) else raw)


@given(st.text(max_size=200) | st.binary(max_size=200))
def test_parse_never_raises(raw: str | bytes) -> None:
    proto.parse_message(raw)


@given(
    st.dictionaries(
        st.sampled_from(["type", "data", "session_id", "acknowledged", "error"]),
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats()
        | st.text(max_size=5)
        | st.lists(st.integers(), max_size=3)
        | st.dictionaries(
            st.sampled_from(["utterance", "byte_range", "time", "channel", "id"]), st.integers()
        ),
    )
)
def test_parse_never_raises_on_odd_shapes(obj: dict[str, object]) -> None:
    proto.parse_message(json.dumps(obj))


def test_rest_errors() -> None:
    e401 = proto.parse_rest_error(401, b'{"message":"Invalid key"}')
    assert (e401.code, e401.retryable) == ("gladia.unauthorized", False)
    assert "GLADIA_API_KEY" in e401.message and "Invalid key" in e401.message
    body = orjson.dumps(
        {
            "message": "Invalid parameter(s). See validation_errors for more details.",
            "request_id": "G-1",
            "validation_errors": [
                "encoding must be one of the following values: wav/pcm",
                {"loc": ["body", "channels"], "msg": "too big"},
            ],
        }
    )
    e400 = proto.parse_rest_error(400, body)
    assert (e400.code, e400.retryable, e400.request_id) == ("gladia.bad_request", False, "G-1")
    assert "encoding must be one of" in e400.message and "channels: too big" in e400.message
    e429 = proto.parse_rest_error(429, b"")
    assert (e429.code, e429.retryable) == ("gladia.rate_limited", True)
    e503 = proto.parse_rest_error(503, b"<html>busy</html>")
    assert (e503.code, e503.retryable) == ("gladia.server_error", True) and "busy" in e503.message


def test_transcript_to_event() -> None:
    m = proto.parse_message(TRANSCRIPT)
    assert isinstance(m, proto.TranscriptMessage)
    ev = proto.to_transcript_event(m, CALL, proto.channel_tracks(CALL))
    assert ev.track is Track.OUTBOUND and ev.speaker == "agent"
    assert ev.utterance_id == "outbound:01_00000003"
    assert ev.text == "Hello world" and ev.is_final
    assert (ev.start, ev.end) == (0.188, 1.284)
    assert [w.word for w in ev.words] == ["Hello", "world"] and ev.words[1].confidence == 0.9
    assert ev.engine == "gladia" and ev.call_sid == "CA123" and ev.stream_sid == "MZ456"
    single = CallInfo("CA", "MZ", tracks=(Track.INBOUND,), speakers={Track.INBOUND: "customer"})
    ev0 = proto.to_transcript_event(m, single, proto.channel_tracks(single))
    assert ev0.track is Track.INBOUND and ev0.speaker == "customer"  # out-of-range channel → channel 0
