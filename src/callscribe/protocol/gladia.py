"""Gladia live v2, without I/O: the init request, typed server messages, REST errors.

Nothing here opens a socket or awaits; :mod:`callscribe.engines.gladia` moves the bytes. See
``protocols.md`` §2 for every field. Parsing never raises: a message we cannot read becomes an
:class:`UnknownMessage` that keeps the raw text, so a new Gladia message type never breaks a call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import orjson

from callscribe.config import Settings
from callscribe.events import CallInfo, Track, TranscriptEvent, Word

LIVE_PATH = "/v2/live"
MAX_FRAME_BYTES = 1024 * 1024  # the server closes with 1009 above this


# --------------------------------------------------------------------------------------------- request


def _rest_base(settings: Settings) -> str:
    # GLADIA_API_URL may be given as ws(s)://; the REST routes live on the matching http(s) origin
    url = settings.gladia_api_url.rstrip("/")
    for ws, http in (("wss://", "https://"), ("ws://", "http://")):
        if url.startswith(ws):
            return http + url[len(ws) :]
    return url


def init_url(settings: Settings) -> str:
    """The ``POST /v2/live`` URL; ``?region=`` only here, never on other routes (§2.2)."""
    url = _rest_base(settings) + LIVE_PATH
    if settings.gladia_region:
        url += "?" + urlencode({"region": settings.gladia_region})
    return url


def session_url(settings: Settings, session_id: str) -> str:
    """``GET``/``DELETE`` URL of one live session."""
    return f"{_rest_base(settings)}{LIVE_PATH}/{session_id}"


def headers(settings: Settings) -> dict[str, str]:
    key = settings.gladia_api_key.get_secret_value() if settings.gladia_api_key else ""
    return {"x-gladia-key": key, "content-type": "application/json"}


def channel_tracks(call: CallInfo) -> tuple[Track, ...]:
    """Track of each Gladia channel: inbound → 0, outbound → 1; a one-track stream uses channel 0."""
    if Track.INBOUND in call.tracks and Track.OUTBOUND in call.tracks:
        return (Track.INBOUND, Track.OUTBOUND)
    return (call.tracks[0] if call.tracks else Track.INBOUND,)


def build_init_body(settings: Settings, call: CallInfo, channels: int) -> dict[str, Any]:
    """The JSON body of ``POST /v2/live`` for Twilio μ-law audio.

    Every setting whose documented default is disputed (§2.3 caveat) or which governs what reaches
    us (``messages_config``) is sent explicitly. Acknowledgments are always on: they drive the
    resend buffer that makes a reconnect lossless.
    """
    languages = list(settings.gladia_languages)
    return {
        "encoding": "wav/ulaw",
        "bit_depth": 8,
        "sample_rate": 8000,
        "channels": channels,
        "model": settings.gladia_model,
        "endpointing": settings.gladia_endpointing,
        "maximum_duration_without_endpointing": settings.gladia_max_duration_without_endpointing,
        "language_config": {"languages": languages, "code_switching": len(languages) != 1},
        "messages_config": {
            "receive_partial_transcripts": settings.gladia_partials,
            "receive_final_transcripts": True,
            "receive_speech_events": True,
            "receive_pre_processing_events": False,
            "receive_realtime_processing_events": False,
            "receive_post_processing_events": False,
            "receive_acknowledgments": True,
            "receive_errors": True,
            "receive_lifecycle_events": True,
        },
        "custom_metadata": {
            "call_sid": call.call_sid,
            "stream_sid": call.stream_sid,
            "account_sid": call.account_sid,
            "tracks": [str(t) for t in channel_tracks(call)][:channels],
            "client": "callscribe",
        },
    }


@dataclass(frozen=True, slots=True)
class InitResponse:
    """``201`` of ``POST /v2/live``: the session id and its WebSocket URL (opaque, reused on resume)."""

    id: str
    url: str
    created_at: str = ""


def parse_init_response(body: bytes) -> InitResponse:
    """Raises ``ValueError`` when the body lacks ``id``/``url`` (a broken proxy, not Gladia)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"init response is not JSON: {body[:200]!r}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("url"), str) or not data.get("id"):
        raise ValueError(f"init response lacks id/url: {body[:200]!r}")
    return InitResponse(id=str(data["id"]), url=data["url"], created_at=str(data.get("created_at") or ""))


# --------------------------------------------------------------------------------------------- REST errors


@dataclass(frozen=True, slots=True)
class RestError:
    """A failed REST call, ready to report: a stable ``code``, a message that says what to do."""

    status: int
    code: str
    message: str
    retryable: bool
    request_id: str = ""


_STATUS_CODES = {
    400: ("gladia.bad_request", "Gladia rejected the session settings"),
    401: ("gladia.unauthorized", "Gladia refused the API key (check GLADIA_API_KEY)"),
    403: ("gladia.forbidden", "Gladia does not allow this key here (feature or region; check GLADIA_REGION)"),
    408: ("gladia.timeout", "Gladia timed out creating the session"),
    413: ("gladia.bad_request", "Gladia found the request too large"),
    422: ("gladia.bad_request", "Gladia rejected the session settings"),
    429: ("gladia.rate_limited", "Gladia concurrency or rate limit reached (free tier: 1 live session)"),
}
_RETRYABLE = {408, 413, 429}


def _validation_text(item: Any) -> str:
    if isinstance(item, dict):
        loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
        msg = str(item.get("msg") or item.get("message") or item)
        return f"{loc}: {msg}" if loc else msg
    return str(item)


def parse_rest_error(status: int, body: bytes) -> RestError:
    """Turn any non-2xx response of the Gladia REST API into a :class:`RestError`."""
    code, summary = _STATUS_CODES.get(status, ("gladia.server_error", "Gladia server error"))
    if status >= 500:
        code, summary = "gladia.server_error", "Gladia server error"
    try:
        data = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        data = {"message": body[:200].decode("utf-8", "replace")}
    if not isinstance(data, dict):
        data = {"message": str(data)}
    detail = str(data.get("message") or "").strip()
    errors = data.get("validation_errors") or []
    if isinstance(errors, list) and errors:
        detail = (detail + " " if detail else "") + "; ".join(_validation_text(e) for e in errors)
    message = f"{summary} (HTTP {status})" + (f": {detail}" if detail else "")
    return RestError(
        status=status,
        code=code,
        message=message,
        retryable=status in _RETRYABLE or status >= 500,
        request_id=str(data.get("request_id") or ""),
    )


# --------------------------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class GladiaWord:
    word: str
    start: float
    end: float
    confidence: float | None = None


@dataclass(frozen=True, slots=True)
class Utterance:
    text: str
    start: float
    end: float
    channel: int = 0
    language: str | None = None
    confidence: float | None = None
    words: tuple[GladiaWord, ...] = ()


@dataclass(frozen=True, slots=True)
class TranscriptMessage:
    session_id: str
    id: str
    is_final: bool
    utterance: Utterance


@dataclass(frozen=True, slots=True)
class SpeechStart:
    session_id: str
    time: float
    channel: int


@dataclass(frozen=True, slots=True)
class SpeechEnd:
    session_id: str
    time: float
    channel: int


@dataclass(frozen=True, slots=True)
class AudioChunkAck:
    """``byte_range``/``time_range`` count from the start of the session (they survive reconnects)."""

    session_id: str
    acknowledged: bool
    byte_range: tuple[int, int] | None
    time_range: tuple[float, float] | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class StopRecordingAck:
    session_id: str
    acknowledged: bool
    recording_duration: float | None = None
    recording_left_to_process: float | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """``start_session``/``start_recording``/``end_recording``/``end_session``."""

    session_id: str
    kind: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PostProcessing:
    """``post_transcript``/``post_final_transcript``/``post_summarization``/``post_chapterization``."""

    session_id: str
    kind: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ErrorMessage:
    """``type: "error"`` (not in the official schema, §2.6): treat as a session-level failure."""

    session_id: str
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class UnknownMessage:
    """Anything else (add-ons, new types, malformed JSON): kept, logged, never fatal."""

    type: str
    raw: str


GladiaMessage = (
    TranscriptMessage
    | SpeechStart
    | SpeechEnd
    | AudioChunkAck
    | StopRecordingAck
    | Lifecycle
    | PostProcessing
    | ErrorMessage
    | UnknownMessage
)

LIFECYCLE_TYPES = frozenset({"start_session", "start_recording", "end_recording", "end_session"})
POST_TYPES = frozenset(
    {"post_transcript", "post_final_transcript", "post_summarization", "post_chapterization"}
)


def _float(value: Any, default: float = 0.0) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _opt_float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _error_text(error: Any) -> str | None:
    if error is None:
        return None
    if isinstance(error, dict):
        return str(error.get("message") or error.get("exception") or error)
    return str(error)


def _pair(value: Any, cast: type) -> tuple[Any, Any] | None:
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, (int, float)) for v in value)
    ):
        return (cast(value[0]), cast(value[1]))
    return None


def _utterance(data: dict[str, Any]) -> Utterance:
    words = tuple(
        GladiaWord(
            word=str(w.get("word", "")),
            start=_float(w.get("start")),
            end=_float(w.get("end")),
            confidence=_opt_float(w.get("confidence")),
        )
        for w in data.get("words") or ()
        if isinstance(w, dict)
    )
    language = data.get("language")
    return Utterance(
        text=str(data.get("text") or ""),
        start=_float(data.get("start")),
        end=_float(data.get("end")),
        channel=int(_float(data.get("channel"))),
        language=language if isinstance(language, str) else None,
        confidence=_opt_float(data.get("confidence")),
        words=words,
    )


def _parse(msg: dict[str, Any], raw: str) -> GladiaMessage:
    kind = msg.get("type")
    sid = str(msg.get("session_id") or "")
    data = msg.get("data") if isinstance(msg.get("data"), dict) else {}
    if kind == "transcript" and isinstance(data.get("utterance"), dict):
        return TranscriptMessage(
            session_id=sid,
            id=str(data.get("id", "")),
            is_final=bool(data.get("is_final")),
            utterance=_utterance(data["utterance"]),
        )
    if kind in ("speech_start", "speech_end"):
        cls = SpeechStart if kind == "speech_start" else SpeechEnd
        return cls(session_id=sid, time=_float(data.get("time")), channel=int(_float(data.get("channel"))))
    if kind == "audio_chunk" and "acknowledged" in msg:
        return AudioChunkAck(
            session_id=sid,
            acknowledged=bool(msg.get("acknowledged")),
            byte_range=_pair(data.get("byte_range"), int),
            time_range=_pair(data.get("time_range"), float),
            error=_error_text(msg.get("error")),
        )
    if kind == "stop_recording" and "acknowledged" in msg:
        return StopRecordingAck(
            session_id=sid,
            acknowledged=bool(msg.get("acknowledged")),
            recording_duration=_opt_float(data.get("recording_duration")),
            recording_left_to_process=_opt_float(data.get("recording_left_to_process")),
            error=_error_text(msg.get("error")),
        )
    if kind in LIFECYCLE_TYPES:
        return Lifecycle(session_id=sid, kind=kind, data=data)
    if kind in POST_TYPES:
        return PostProcessing(session_id=sid, kind=kind, data=data)
    if kind == "error":
        source = data or (msg.get("error") if isinstance(msg.get("error"), dict) else {})
        return ErrorMessage(
            session_id=sid,
            code=str(source.get("code") or source.get("exception") or "error"),
            message=str(source.get("message") or raw[:200]),
        )
    return UnknownMessage(type=str(kind or ""), raw=raw)


def parse_message(raw: str | bytes) -> GladiaMessage:
    """One WebSocket text frame from Gladia → a typed message. Never raises."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else raw
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError:
        return UnknownMessage(type="", raw=text)
    if not isinstance(msg, dict):
        return UnknownMessage(type="", raw=text)
    try:
        return _parse(msg, text)
    except (TypeError, ValueError, AttributeError, OverflowError):
        # a known type with a field of the wrong shape: keep it rather than kill the call
        return UnknownMessage(type=str(msg.get("type") or ""), raw=text)


def stop_recording_message() -> bytes:
    return b'{"type":"stop_recording"}'


def keepalive_message() -> bytes:
    """An empty ``audio_chunk``: Gladia accepts it and it resets the inactivity timer (§2.5)."""
    return b'{"type":"audio_chunk","data":{"chunk":""}}'


# --------------------------------------------------------------------------------------------- events


def utterance_id(track: Track, gladia_id: str) -> str:
    """Unique per call (one Gladia session per call) and shared by an utterance's partials and final."""
    return f"{track.value}:{gladia_id}"


def to_transcript_event(
    msg: TranscriptMessage, call: CallInfo, tracks: tuple[Track, ...], engine: str = "gladia"
) -> TranscriptEvent:
    """A Gladia transcript → a :class:`TranscriptEvent`.

    Gladia's times are seconds of audio since the session started; the session's audio starts at
    stream time 0 (gaps padded), so they already are the call's audio clock.
    """
    utt = msg.utterance
    track = tracks[utt.channel] if 0 <= utt.channel < len(tracks) else tracks[0]
    words = tuple(
        Word(word=w.word.strip(), start=w.start, end=w.end, confidence=w.confidence)
        for w in utt.words
        if w.word.strip()
    )
    return TranscriptEvent(
        call_sid=call.call_sid,
        stream_sid=call.stream_sid,
        track=track,
        speaker=call.speaker(track),
        utterance_id=utterance_id(track, msg.id),
        text=utt.text.strip(),
        is_final=msg.is_final,
        start=utt.start,
        end=utt.end,
        words=words,
        language=utt.language,
        confidence=utt.confidence,
        engine=engine,
    )
