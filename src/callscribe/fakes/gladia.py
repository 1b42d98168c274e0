"""A faithful fake of Gladia live v2 (REST + WebSocket on one port), driven by a script.

Built to ``protocols.md`` §3.2: ``POST /v2/live`` checks the key and validates the body as Gladia
does, enforces a concurrency cap, and returns a WebSocket URL with a token; the socket acks every
chunk with session-cumulative ``byte_range``/``time_range``, emits speech events, partials and
finals from a SCRIPT as the audio clock of each channel passes the script's times, resumes on
reconnect with the same token, and runs the documented stop sequence.

Script: per channel, utterances on the audio clock, e.g. (JSON file or dict)::

    {"0": [{"start": 0.5, "end": 2.0, "text": "hello world"}],
     "1": [{"start": 2.5, "end": 3.5, "text": "hi there"}]}

Channel keys may also be ``"inbound"`` (= 0) and ``"outbound"`` (= 1). Words are spread evenly over
``[start, end]``; a partial shows the words whose end the channel's audio has passed; the final is
emitted once the audio passes ``end + endpointing`` (or on ``stop_recording``). A channel without
script lines stays silent.

Tests use :class:`FakeGladia` (``async with FakeGladia(script=…) as fake: fake.url``); the CLI runs
``callscribe fake-gladia`` through :func:`add_arguments` / :func:`run`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import logging
import struct
import time
import uuid
from array import array
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

logger = logging.getLogger(__name__)

MAX_FRAME_BYTES = 1024 * 1024  # larger frames are closed with 1009, as Gladia does
DEFAULT_API_KEY = "fake-gladia-key"

ENCODINGS = ("wav/pcm", "wav/alaw", "wav/ulaw")
BIT_DEPTHS = (8, 16, 24, 32)
SAMPLE_RATES = (8000, 16000, 32000, 44100, 48000)
MODELS = ("solaria-1",)
MESSAGE_FLAGS = {
    # documented example values (§2.6); partials off by default is confirmed by Gladia
    "receive_partial_transcripts": False,
    "receive_final_transcripts": True,
    "receive_speech_events": True,
    "receive_pre_processing_events": True,
    "receive_realtime_processing_events": True,
    "receive_post_processing_events": True,
    "receive_acknowledgments": True,
    "receive_errors": True,
    "receive_lifecycle_events": False,
}
TOP_LEVEL_FIELDS = frozenset(
    {
        "encoding",
        "bit_depth",
        "sample_rate",
        "channels",
        "custom_metadata",
        "model",
        "endpointing",
        "maximum_duration_without_endpointing",
        "language_config",
        "pre_processing",
        "realtime_processing",
        "post_processing",
        "messages_config",
        "callback",
        "callback_config",
    }
)
LANGUAGES = frozenset(
    [
        "af",
        "am",
        "ar",
        "as",
        "az",
        "ba",
        "be",
        "bg",
        "bn",
        "bo",
        "br",
        "bs",
        "ca",
        "cs",
        "cy",
        "da",
        "de",
        "el",
        "en",
        "es",
        "et",
        "eu",
        "fa",
        "fi",
        "fo",
        "fr",
        "gl",
        "gu",
        "ha",
        "haw",
        "he",
        "hi",
        "hr",
        "ht",
        "hu",
        "hy",
        "id",
        "is",
        "it",
        "ja",
        "jw",
        "ka",
        "kk",
        "km",
        "kn",
        "ko",
        "la",
        "lb",
        "ln",
        "lo",
        "lt",
        "lv",
        "mg",
        "mi",
        "mk",
        "ml",
        "mn",
        "mr",
        "ms",
        "mt",
        "my",
        "ne",
        "nl",
        "nn",
        "no",
        "oc",
        "pa",
        "pl",
        "ps",
        "pt",
        "ro",
        "ru",
        "sa",
        "sd",
        "si",
        "sk",
        "sl",
        "sn",
        "so",
        "sq",
        "sr",
        "su",
        "sv",
        "sw",
        "ta",
        "te",
        "tg",
        "th",
        "tk",
        "tl",
        "tr",
        "tt",
        "uk",
        "ur",
        "uz",
        "vi",
        "yi",
        "yo",
        "zh",
        "yue",
    ]
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _request_id() -> str:
    return "G-" + uuid.uuid4().hex[:8]


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


# --------------------------------------------------------------------------------------------- frame markers

# Benchmarks (bench/load.py) put a marker in the first bytes of every 20 ms μ-law payload they send
# through a gateway: magic, call number, track, frame number, check byte. μ-law passes through a
# gateway untouched (interleaving only spreads a track's bytes over a channel), so the fake can find
# each marker in the de-interleaved channel bytes and log when the frame arrived. Off by default.
MARKER_MAGIC = b"\xa7\x3c"
MARKER_BYTES = 10  # magic(2) call(2) track(1) seq(4) check(1)
_MARKER = struct.Struct("<2sHBIB")


def _marker_check(body: bytes) -> int:
    return (sum(body) ^ 0x5A) & 0xFF


def encode_marker(call: int, track: int, seq: int) -> bytes:
    """The marker for frame ``seq`` of ``track`` (0 inbound, 1 outbound) of bench call ``call``."""
    body = _MARKER.pack(MARKER_MAGIC, call & 0xFFFF, track & 0xFF, seq & 0xFFFFFFFF, 0)[:-1]
    return body + bytes([_marker_check(body)])


def decode_marker(data: bytes | bytearray, pos: int = 0) -> tuple[int, int, int] | None:
    """``(call, track, seq)`` of a marker starting at ``data[pos]``, or None if it is not one."""
    raw = bytes(data[pos : pos + MARKER_BYTES])
    if len(raw) < MARKER_BYTES or raw[:2] != MARKER_MAGIC or _marker_check(raw[:-1]) != raw[-1]:
        return None
    _, call, track, seq, _ = _MARKER.unpack(raw)
    return call, track, seq


class MarkerLog:
    """Arrival log of bench markers: one row per marker found (time, call, track, seq, chunk no.).

    Kept in flat :mod:`array` columns (cheap to append, cheap to ship); ``dump()`` returns them as
    bytes and clears the log (``GET /fake/markers``). Each received audio message is a chunk; all
    markers found in one chunk share its arrival time and chunk number.
    """

    HEADER = struct.Struct("<I")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.t = array("d")
        self.call = array("H")
        self.track = array("B")
        self.seq = array("I")
        self.chunk = array("I")
        self.chunks = 0

    def __len__(self) -> int:
        return len(self.t)

    def scan(self, session: FakeSession, data: bytes, t: float) -> None:
        """Log the markers in one audio message of ``session``, received at ``t``."""
        n = session.channels
        if len(session.carry) != n:
            session.carry = [b""] * n
        chunk = self.chunks
        self.chunks += 1
        start = session.scan_offset  # session byte offset of data[0] (channel parity)
        session.scan_offset += len(data)
        for c in range(n):
            part = data[(c - start) % n :: n] if n > 1 else data
            buf = session.carry[c] + part
            pos = buf.find(MARKER_MAGIC)
            while pos >= 0:
                found = decode_marker(buf, pos)
                if found is not None:
                    self.t.append(t)
                    self.call.append(found[0])
                    self.track.append(found[1])
                    self.seq.append(found[2])
                    self.chunk.append(chunk)
                    pos = buf.find(MARKER_MAGIC, pos + MARKER_BYTES)
                elif len(buf) - pos < MARKER_BYTES:
                    break  # maybe a marker cut by the message boundary: kept in the carry
                else:
                    pos = buf.find(MARKER_MAGIC, pos + 1)
            session.carry[c] = buf[-(MARKER_BYTES - 1) :]

    def dump(self, clear: bool = True) -> bytes:
        """Columns as bytes: count (u32), then t (f64), call (u16), track (u8), seq (u32), chunk (u32)."""
        out = self.HEADER.pack(len(self.t)) + b"".join(
            col.tobytes() for col in (self.t, self.call, self.track, self.seq, self.chunk)
        )
        if clear:
            self.clear()
        return out

    @classmethod
    def load(cls, raw: bytes) -> dict[str, list[Any]]:
        """The columns ``dump()`` wrote, as lists (numpy users: ``np.frombuffer`` is faster)."""
        (count,) = cls.HEADER.unpack_from(raw)
        out: dict[str, list[Any]] = {}
        offset = cls.HEADER.size
        for name, code in (("t", "d"), ("call", "H"), ("track", "B"), ("seq", "I"), ("chunk", "I")):
            col = array(code)
            col.frombytes(raw[offset : offset + count * col.itemsize])
            offset += count * col.itemsize
            out[name] = col.tolist()
        return out


# --------------------------------------------------------------------------------------------- script


@dataclass(frozen=True, slots=True)
class ScriptLine:
    """One utterance of the script: ``text`` spoken over ``[start, end]`` s of a channel's audio."""

    start: float
    end: float
    text: str

    def words(self) -> list[tuple[str, float, float]]:
        tokens = self.text.split()
        if not tokens:
            return []
        step = (self.end - self.start) / len(tokens)
        return [
            (w, round(self.start + i * step, 3), round(self.start + (i + 1) * step, 3))
            for i, w in enumerate(tokens)
        ]


Script = dict[int, tuple[ScriptLine, ...]]
_CHANNEL_ALIASES = {"inbound": 0, "outbound": 1}


def load_script(source: str | Path | Mapping[Any, Any] | None) -> Script:
    """A script from a JSON file path or a mapping ``{channel: [{start, end, text}, …]}``."""
    if source is None:
        return {}
    raw: Any = source if isinstance(source, Mapping) else orjson.loads(Path(source).read_bytes())
    if not isinstance(raw, Mapping):
        raise ValueError("a script is an object: {channel: [{start, end, text}, ...]}")
    script: Script = {}
    for key, lines in raw.items():
        channel = _CHANNEL_ALIASES.get(str(key))
        channel = int(key) if channel is None else channel
        parsed = []
        for line in lines:
            item = ScriptLine(float(line["start"]), float(line["end"]), str(line["text"]))
            if item.end < item.start:
                raise ValueError(f"script line ends before it starts: {line!r}")
            parsed.append(item)
        script[channel] = tuple(sorted(parsed, key=lambda line: line.start))
    return script


# --------------------------------------------------------------------------------------------- validation


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_init(body: Any) -> list[str]:
    """The validation errors Gladia would report for this ``POST /v2/live`` body (§2.3)."""
    if not isinstance(body, dict):
        return ["body must be a JSON object"]
    errors: list[str] = []
    for key in body:
        if key not in TOP_LEVEL_FIELDS:
            errors.append(f"property {key} should not exist")

    def one_of(name: str, allowed: tuple[Any, ...]) -> None:
        value = body.get(name)
        if name in body and (value not in allowed or isinstance(value, bool)):
            errors.append(f"{name} must be one of the following values: {', '.join(map(str, allowed))}")

    def in_range(name: str, lo: float, hi: float, integer: bool = False) -> None:
        if name not in body:
            return
        value = body[name]
        if not _is_number(value) or (integer and not isinstance(value, int)) or not lo <= value <= hi:
            kind = "an integer" if integer else "a number"
            errors.append(f"{name} must be {kind} between {lo:g} and {hi:g}")

    one_of("encoding", ENCODINGS)
    one_of("bit_depth", BIT_DEPTHS)
    one_of("sample_rate", SAMPLE_RATES)
    one_of("model", MODELS)
    in_range("channels", 1, 8, integer=True)
    in_range("endpointing", 0.01, 10)
    in_range("maximum_duration_without_endpointing", 5, 60)
    # μ-law and A-law are 8-bit only (§2.3); whether Gladia rejects or coerces is unconfirmed
    if body.get("encoding") in ("wav/ulaw", "wav/alaw") and body.get("bit_depth", 16) != 8:
        errors.append(f"bit_depth must be 8 when encoding is {body['encoding']}")
    lang = body.get("language_config")
    if lang is not None:
        if not isinstance(lang, dict):
            errors.append("language_config must be an object")
        else:
            langs = lang.get("languages", [])
            if not isinstance(langs, list) or any(code not in LANGUAGES for code in langs):
                errors.append(
                    "language_config.languages must only contain the following values: "
                    + ", ".join(sorted(LANGUAGES))
                )
            if "code_switching" in lang and not isinstance(lang["code_switching"], bool):
                errors.append("language_config.code_switching must be a boolean value")
    messages = body.get("messages_config")
    if messages is not None:
        if not isinstance(messages, dict):
            errors.append("messages_config must be an object")
        else:
            for key, value in messages.items():
                if key not in MESSAGE_FLAGS:
                    errors.append(f"messages_config.property {key} should not exist")
                elif not isinstance(value, bool):
                    errors.append(f"messages_config.{key} must be a boolean value")
    for section in ("pre_processing", "realtime_processing", "post_processing", "callback_config"):
        if section in body and not isinstance(body[section], dict):
            errors.append(f"{section} must be an object")
    if body.get("callback") is True and not isinstance((body.get("callback_config") or {}).get("url"), str):
        errors.append("callback_config.url must be a URL address")
    return errors


# --------------------------------------------------------------------------------------------- sessions


@dataclass
class _ChannelState:
    index: int = 0  # next script line
    shown_words: int = 0  # words in the last partial of the current line
    speaking: bool = False


@dataclass
class _Connection:
    ws: WebSocket
    closed: bool = False


@dataclass
class FakeSession:
    """Server-side state of one live session (kept across reconnects, keyed by token)."""

    id: str
    token: str
    created_at: str
    config: dict[str, Any]
    script: Script
    keep_audio: bool = True
    inclusive_acks: bool = False  # asyncapi's reading of byte_range (§2.6); the SDK's is exclusive
    bytes_received: int = 0  # == last acknowledged byte: only acked bytes are kept (resume point)
    audio: bytearray = field(default_factory=bytearray)
    connections: int = 0
    stopped: bool = False
    ended: bool = False
    completed_at: str | None = None
    utterances: list[dict[str, Any]] = field(default_factory=list)
    sent_types: list[str] = field(default_factory=list)
    conn: _Connection | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    carry: list[bytes] = field(default_factory=list)  # marker scan: tail of each channel's bytes
    scan_offset: int = 0  # marker scan: session bytes seen (channel parity of the next message)
    _state: dict[int, _ChannelState] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return int(self.config.get("channels", 1))

    @property
    def sample_width(self) -> int:
        if self.config.get("encoding", "wav/pcm") in ("wav/ulaw", "wav/alaw"):
            return 1
        return int(self.config.get("bit_depth", 16)) // 8

    @property
    def sample_rate(self) -> int:
        return int(self.config.get("sample_rate", 16000))

    @property
    def endpointing(self) -> float:
        return float(self.config.get("endpointing", 0.05))

    @property
    def language(self) -> str:
        langs = (self.config.get("language_config") or {}).get("languages") or ["en"]
        return str(langs[0])

    @property
    def status(self) -> str:
        if self.ended:
            return "done"
        return "processing" if self.connections else "queued"

    def flag(self, name: str) -> bool:
        return bool((self.config.get("messages_config") or {}).get(name, MESSAGE_FLAGS[name]))

    @property
    def bytes_per_channel(self) -> list[int]:
        """Bytes of each channel within :attr:`bytes_received` (samples are interleaved)."""
        width, n = self.sample_width, self.channels
        frames, rest = divmod(self.bytes_received, width * n)
        return [frames * width + min(max(rest - c * width, 0), width) for c in range(n)]

    def seconds(self, nbytes: int) -> float:
        return nbytes / (self.sample_rate * self.sample_width * self.channels)

    @property
    def duration(self) -> float:
        return self.seconds(self.bytes_received)

    def channel_time(self, channel: int) -> float:
        return self.bytes_per_channel[channel] / (self.sample_rate * self.sample_width)

    def to_dict(self) -> dict[str, Any]:
        """``GET /v2/live/{id}`` (``LiveV2Response``), plus a ``fake`` block of counters."""
        out: dict[str, Any] = {
            "id": self.id,
            "request_id": _request_id(),
            "version": 2,
            "status": self.status,
            "created_at": self.created_at,
            "completed_at": self.completed_at,
            "kind": "live",
            "custom_metadata": self.config.get("custom_metadata"),
            "error_code": None,
            "post_session_metadata": {},
            "file": {
                "id": self.id,
                "filename": None,
                "source": None,
                "audio_duration": self.duration,
                "number_of_channels": self.channels,
            },
            "request_params": self.config,
            "fake": {
                "bytes_received": self.bytes_received,
                "bytes_per_channel": self.bytes_per_channel,
                "connections": self.connections,
            },
        }
        if self.ended:
            out["result"] = self._result()
        return out

    def _transcription(self) -> dict[str, Any]:
        return {
            "full_transcript": " ".join(u["text"].strip() for u in self.utterances),
            "languages": [self.language],
            "utterances": self.utterances,
            "sentences": [],
            "subtitles": [],
        }

    def _result(self) -> dict[str, Any]:
        return {
            "metadata": {
                "audio_duration": self.duration,
                "number_of_distinct_channels": len({u["channel"] for u in self.utterances}) or 1,
                "billing_time": self.duration * self.channels,
                "transcription_time": 0.01,
            },
            "transcription": self._transcription(),
        }

    # ------------------------------------------------------------------ message builders

    def _msg(self, kind: str, data: Any = None, **extra: Any) -> dict[str, Any]:
        msg: dict[str, Any] = {"type": kind, "session_id": self.id, "created_at": _now()}
        if data is not None or "acknowledged" in extra:
            msg["data"] = data
        msg.update(extra)
        return msg

    def _transcript(
        self, channel: int, line_index: int, words: list[tuple[str, float, float]], final: bool
    ) -> dict[str, Any]:
        confidence = 0.95 if final else 0.8
        utterance = {
            "text": "".join(" " + w for w, _, _ in words),  # Gladia's leading space, kept on purpose
            "start": words[0][1],
            "end": words[-1][2],
            "language": self.language,
            "confidence": confidence,
            "channel": channel,
            "words": [{"word": " " + w, "start": s, "end": e, "confidence": confidence} for w, s, e in words],
        }
        if final:
            self.utterances.append(utterance)
        data = {"id": f"{channel:02d}_{line_index:08d}", "is_final": final, "utterance": utterance}
        return self._msg("transcript", data)

    def ack_audio(self, start: int, end: int) -> dict[str, Any]:
        last = end - 1 if self.inclusive_acks else end
        data = {"byte_range": [start, last], "time_range": [self.seconds(start), self.seconds(end)]}
        return self._msg("audio_chunk", data, acknowledged=True, error=None)

    def advance(self, flush: bool = False) -> list[dict[str, Any]]:
        """Script messages due now that each channel's audio reached its current time."""
        out: list[dict[str, Any]] = []
        for channel in range(self.channels):
            lines = self.script.get(channel, ())
            st = self._state.setdefault(channel, _ChannelState())
            t = self.channel_time(channel) + 1e-9
            while st.index < len(lines):
                line = lines[st.index]
                if t < line.start:
                    break
                words = line.words()
                if not st.speaking:
                    st.speaking = True
                    if self.flag("receive_speech_events"):
                        out.append(self._msg("speech_start", {"time": line.start, "channel": channel}))
                done = t >= line.end + self.endpointing
                heard = words if done else [w for w in words if (w[1] < t if flush else w[2] <= t)]
                if not (done or flush):
                    if len(heard) > st.shown_words and self.flag("receive_partial_transcripts"):
                        out.append(self._transcript(channel, st.index, heard, final=False))
                    st.shown_words = max(st.shown_words, len(heard))
                    break
                if heard:
                    if st.shown_words < len(heard) and self.flag("receive_partial_transcripts"):
                        out.append(self._transcript(channel, st.index, heard, final=False))
                    final = self._transcript(channel, st.index, heard, final=True)
                    if self.flag("receive_final_transcripts"):
                        out.append(final)
                if self.flag("receive_speech_events"):
                    out.append(self._msg("speech_end", {"time": min(line.end, t), "channel": channel}))
                st.index, st.shown_words, st.speaking = st.index + 1, 0, False
                if flush:
                    break  # lines not yet reached by the audio were never spoken
        return out

    def end_messages(self) -> list[dict[str, Any]]:
        """After ``stop_recording``: last finals, ``end_recording``, ``post_*``, ``end_session``."""
        out = self.advance(flush=True)
        if self.flag("receive_lifecycle_events"):
            out.append(self._msg("end_recording", {"recording_duration": self.duration}))
        if self.flag("receive_post_processing_events"):
            out.append(self._msg("post_transcript", self._transcription()))
            out.append(self._msg("post_final_transcript", self._result()))
        if self.flag("receive_lifecycle_events"):
            out.append(self._msg("end_session"))
        return out


# --------------------------------------------------------------------------------------------- server


class FakeGladia:
    """The fake Gladia server; an async context manager that runs uvicorn in-process.

    ``fail_next(status)`` makes the next ``POST`` fail; ``drop(session_id, code)`` and
    ``drop_when(bytes_received, code)`` close a session's socket mid-call so clients must resume.
    """

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        script: Script | Mapping[Any, Any] | str | Path | None = None,
        max_sessions: int = 30,
        host: str = "127.0.0.1",
        port: int = 0,
        post_processing_delay: float = 0.05,
        keep_audio: bool = True,
        inclusive_acks: bool = False,
        record_markers: bool = False,
    ) -> None:
        self.api_key = api_key
        self.script: Script = load_script(script) if not _is_script(script) else script  # type: ignore[assignment]
        self.max_sessions = max_sessions
        self.host = host
        self.port = port
        self.post_processing_delay = post_processing_delay
        self.keep_audio = keep_audio
        self.inclusive_acks = inclusive_acks
        # bench frame markers: arrival of every marked frame, served (and cleared) at /fake/markers
        self.markers: MarkerLog | None = MarkerLog() if record_markers else None
        self.sessions: dict[str, FakeSession] = {}
        self.posts = 0
        self._by_token: dict[str, FakeSession] = {}
        self._fail_statuses: list[int] = []
        self._drop_at: tuple[int, int] | None = None
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.app = Starlette(
            routes=[
                Route("/v2/live", self._create, methods=["POST"]),
                Route("/v2/live", self._list, methods=["GET"]),
                WebSocketRoute("/v2/live", self._socket),
                Route("/v2/live/{id}", self._get, methods=["GET"]),
                Route("/v2/live/{id}", self._delete, methods=["DELETE"]),
                Route("/fake/markers", self._markers, methods=["GET"]),
            ]
        )

    # ------------------------------------------------------------------ test hooks

    @property
    def url(self) -> str:
        """HTTP base URL (what ``GLADIA_API_URL`` should be)."""
        return f"http://{self.host}:{self.port}"

    def fail_next(self, status: int = 429, count: int = 1) -> None:
        """The next ``count`` ``POST /v2/live`` answer ``status`` (429, 500…)."""
        self._fail_statuses.extend([status] * count)

    def drop_when(self, bytes_received: int, code: int = 1011) -> None:
        """Once any session has acknowledged ``bytes_received`` bytes, close its socket with ``code``."""
        self._drop_at = (bytes_received, code)

    async def drop(self, session_id: str, code: int = 1011) -> None:
        """Close ``session_id``'s socket now with ``code``; its state is kept for a resume."""
        session = self.sessions[session_id]
        async with session.lock:
            await self._close(session.conn, code)

    def active_sessions(self) -> int:
        return sum(1 for s in self.sessions.values() if not s.ended)

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> FakeGladia:
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws_max_size=4 * MAX_FRAME_BYTES,  # so this app, not uvicorn, applies Gladia's 1 MiB rule
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises: the port is taken, …
                raise RuntimeError("fake Gladia server stopped during start-up")
            await asyncio.sleep(0.005)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            self._server.force_exit = True  # a fake need not wait for clients to hang up
            await self._task

    async def wait_closed(self) -> None:
        """Until the server stops (Ctrl-C in the CLI)."""
        if self._task is not None:
            await self._task

    # ------------------------------------------------------------------ REST

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("x-gladia-key") == self.api_key

    def _unauthorized(self) -> Response:
        return _json({"message": "Invalid or missing x-gladia-key header", "request_id": _request_id()}, 401)

    async def _create(self, request: Request) -> Response:
        self.posts += 1
        if not self._authorized(request):
            return self._unauthorized()
        if self._fail_statuses:
            status = self._fail_statuses.pop(0)
            message = "Too many concurrent sessions" if status == 429 else "Internal server error"
            return _json({"message": message, "request_id": _request_id()}, status)
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            body = None
        errors = validate_init(body)
        if errors:
            return _json(
                {
                    "message": "Invalid parameter(s). See validation_errors for more details.",
                    "request_id": _request_id(),
                    "validation_errors": errors,
                },
                400,
            )
        if self.active_sessions() >= self.max_sessions:
            return _json(
                {
                    "message": f"Maximum number of concurrent live sessions reached ({self.max_sessions})",
                    "request_id": _request_id(),
                },
                429,
            )
        session = FakeSession(
            id=str(uuid.uuid4()),
            token=str(uuid.uuid4()),
            created_at=_now(),
            config=body,
            script=self.script,
            keep_audio=self.keep_audio,
            inclusive_acks=self.inclusive_acks,
        )
        self.sessions[session.id] = session
        self._by_token[session.token] = session
        ws_url = f"ws://{request.url.netloc}/v2/live?token={session.token}"
        return _json({"id": session.id, "created_at": session.created_at, "url": ws_url}, 201)

    async def _markers(self, request: Request) -> Response:
        """Bench hook: the marker arrival log (``MarkerLog.dump``), cleared unless ``?keep=1``."""
        if self.markers is None:
            return _json({"message": "marker recording is off (record_markers / --record-markers)"}, 404)
        keep = request.query_params.get("keep") == "1"
        return Response(self.markers.dump(clear=not keep), media_type="application/octet-stream")

    async def _get(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        session = self.sessions.get(request.path_params["id"])
        if session is None:
            return _json({"message": "Live session not found", "request_id": _request_id()}, 404)
        return _json(session.to_dict())

    async def _list(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        offset = int(request.query_params.get("offset", 0))
        limit = int(request.query_params.get("limit", 20))
        items = [s.to_dict() for s in self.sessions.values()]
        page = items[offset : offset + limit]
        base = f"{self.url}/v2/live?limit={limit}"
        nxt = f"{base}&offset={offset + limit}" if offset + limit < len(items) else None
        return _json(
            {"first": f"{base}&offset=0", "current": f"{base}&offset={offset}", "next": nxt, "items": page}
        )

    async def _delete(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        session = self.sessions.pop(request.path_params["id"], None)
        if session is None:
            return _json({"message": "Live session not found", "request_id": _request_id()}, 404)
        session.ended = True
        self._by_token.pop(session.token, None)
        async with session.lock:
            await self._close(session.conn, 1000)
        return Response(status_code=202)

    # ------------------------------------------------------------------ WebSocket

    async def _send(self, session: FakeSession, conn: _Connection, messages: list[dict[str, Any]]) -> bool:
        for msg in messages:
            if conn.closed:
                return False
            try:
                await conn.ws.send_text(orjson.dumps(msg).decode())
            except (RuntimeError, WebSocketDisconnect, OSError):
                conn.closed = True
                return False
            session.sent_types.append(msg["type"])
        return True

    async def _close(self, conn: _Connection | None, code: int) -> None:
        if conn is None or conn.closed:
            return
        conn.closed = True
        try:
            await conn.ws.close(code)
        except (RuntimeError, WebSocketDisconnect, OSError):
            logger.debug("fake gladia: socket already closed")

    async def _socket(self, ws: WebSocket) -> None:
        session = self._by_token.get(ws.query_params.get("token", ""))
        if session is None or session.ended:
            await ws.close(1008)  # before accept: the handshake is refused with HTTP 403
            return
        await ws.accept()
        conn = _Connection(ws)
        async with session.lock:
            await self._close(session.conn, 1001)  # a resume replaces a half-dead connection
            session.conn = conn
            session.connections += 1
            if session.connections == 1 and session.flag("receive_lifecycle_events"):
                await self._send(session, conn, [session._msg("start_recording")])
        if session.stopped:
            self._spawn(self._finish(session, conn))  # resumed after stop: finish now
        try:
            await self._serve(session, conn)
        finally:
            conn.closed = True

    async def _serve(self, session: FakeSession, conn: _Connection) -> None:
        while not conn.closed:
            message = await conn.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data: bytes | None = message.get("bytes")
            if data and self.markers is not None:
                self.markers.scan(session, data, time.monotonic())
            text: str | None = message.get("text")
            if len(data or text or "") > MAX_FRAME_BYTES:
                async with session.lock:
                    await self._close(conn, 1009)
                return
            if data is None and text is not None:
                data = await self._on_text(session, conn, text)
            if data:
                await self._on_audio(session, conn, data)

    async def _on_text(self, session: FakeSession, conn: _Connection, text: str) -> bytes | None:
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            msg = None
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "audio_chunk":
            chunk = (msg.get("data") or {}).get("chunk") or ""
            try:
                return base64.b64decode(chunk, validate=True)  # "" → b"": a keep-alive
            except (binascii.Error, ValueError):
                await self._error(
                    session, conn, "invalid_audio_format", "audio_chunk.data.chunk is not base64"
                )
                return None
        if kind == "stop_recording":
            await self._on_stop(session, conn)
            return None
        await self._error(session, conn, "invalid_message", f"unsupported message type {kind!r}")
        return None

    async def _error(self, session: FakeSession, conn: _Connection, code: str, message: str) -> None:
        if session.flag("receive_errors"):
            async with session.lock:
                await self._send(session, conn, [session._msg("error", {"code": code, "message": message})])

    async def _on_audio(self, session: FakeSession, conn: _Connection, data: bytes) -> None:
        # counted, acked and scripted under the lock: a byte counted is a byte acked (resume point)
        async with session.lock:
            if conn.closed or session.stopped:
                return
            start = session.bytes_received
            session.bytes_received += len(data)
            if session.keep_audio:
                session.audio += data
            messages = (
                [session.ack_audio(start, session.bytes_received)]
                if session.flag("receive_acknowledgments")
                else []
            )
            await self._send(session, conn, messages + session.advance())
            if self._drop_at is not None and session.bytes_received >= self._drop_at[0]:
                code = self._drop_at[1]
                self._drop_at = None
                await self._close(conn, code)

    async def _on_stop(self, session: FakeSession, conn: _Connection) -> None:
        async with session.lock:
            if conn.closed:
                return  # arrived after a drop: the client re-sends it on the next connection
            if session.stopped:
                if session.flag("receive_acknowledgments"):
                    error = {
                        "status_code": 409,
                        "exception": "ConflictError",
                        "message": "Recording already stopped",
                    }
                    await self._send(
                        session, conn, [session._msg("stop_recording", None, acknowledged=False, error=error)]
                    )
                return
            session.stopped = True
            if session.flag("receive_acknowledgments"):
                data = {"recording_duration": session.duration, "recording_left_to_process": 0.0}
                await self._send(
                    session, conn, [session._msg("stop_recording", data, acknowledged=True, error=None)]
                )
        self._spawn(self._finish(session, conn))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _finish(self, session: FakeSession, conn: _Connection) -> None:
        await asyncio.sleep(self.post_processing_delay)  # "remaining audio is processed"
        async with session.lock:
            if conn.closed or session.ended:
                return  # dropped meanwhile: the next connection finishes the session
            if await self._send(session, conn, session.end_messages()):
                session.ended = True
                session.completed_at = _now()
                await self._close(conn, 1000)


def _is_script(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, int) and isinstance(v, tuple) and all(isinstance(x, ScriptLine) for x in v)
        for k, v in value.items()
    )


# --------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``callscribe fake-gladia``."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port for HTTP and WebSocket (0 = any free)")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY, help="the x-gladia-key clients must send")
    parser.add_argument("--script", type=Path, help='JSON script: {"0": [{"start", "end", "text"}], "1": …}')
    parser.add_argument("--max-sessions", type=int, default=30, help="concurrent sessions before 429")
    parser.add_argument(
        "--record-markers",
        action="store_true",
        help="log the arrival of bench frame markers, served at GET /fake/markers (bench/load.py)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the fake until Ctrl-C; prints the URL to point ``GLADIA_API_URL`` at."""
    try:
        script = load_script(args.script)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"fake-gladia: cannot read script {args.script}: {exc}")
        return 2
    fake = FakeGladia(
        api_key=args.api_key,
        script=script,
        max_sessions=args.max_sessions,
        host=args.host,
        port=args.port,
        keep_audio=False,
        record_markers=getattr(args, "record_markers", False),
    )

    async def main() -> None:
        async with fake:
            print(f"fake Gladia live v2 listening on {fake.url}", flush=True)
            print(f"  GLADIA_API_URL={fake.url} GLADIA_API_KEY={fake.api_key}", flush=True)
            await fake.wait_closed()

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how the fake is meant to stop
        asyncio.run(main())
    return 0
