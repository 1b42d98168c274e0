"""Gladia live v2 engine: one Gladia session per Twilio stream, both tracks in one 2-channel session.

Why one 2-channel session rather than one session per track: Gladia counts concurrency per live
session (free tier 1, paid 30), so per-track sessions would halve the calls an account can carry,
and would give each track its own clock. Billing is the same either way (duration × channels).
The two tracks are aligned on the audio clock by :class:`~callscribe.audio.interleave.Interleaver`
(inbound → channel 0, outbound → channel 1); a one-track stream uses ``channels: 1``.

Life of a session::

    start()  ──► background task: POST /v2/live (retried on 429/5xx/network) ──► WS url
    feed()   ──► interleave ──► resend buffer (every byte not yet acknowledged)
                     send task: ~gladia_chunk_ms binary frames ─────────────► Gladia
                     recv task: transcripts, acks (trim the buffer), lifecycle ◄─ Gladia
    socket dropped (close ≠ 1000, network) ──► reconnect to the SAME url, resend unacked bytes first
    session lost (resume refused 401/403/404/410, or Gladia ended it before our stop_recording)
             ──► POST a NEW session for the rest of the call; unacked audio is its start; its times
                 are shifted onto the call's clock and its utterance ids get a ``-s<n>`` suffix
    finish() ──► send the tail, stop_recording, read until end_session / close 1000 / deadline

The send and receive tasks are independent, so transcripts flow even when audio pauses (the blog's
"read only after a send" loop stalls).

Audio accounting (the standard counters of :mod:`callscribe.engines.base`): a fed byte is
*delivered* once Gladia acknowledged the chunk holding it (or ended the session normally after our
``stop_recording``, which it sent after it); *dropped* as ``ignored_track``, ``closed``, ``late``
(interleaver: arrived for time already padded), ``buffer_full``, ``engine_failed`` (Gladia refused
the call for good: bad key, bad request), ``drain_timeout`` or ``aborted``; otherwise *pending*
(in the interleaver or the resend buffer). Interleaver padding is never counted as fed audio.

The buffer holds at most ``max_buffer_seconds`` of audio per track (the server passes
``ENGINE_BUFFER_SECONDS``). Beyond it **new** audio is dropped (counted ``buffer_full``, one
``gladia.buffer_full`` CallError with ``retrying=True``) until the backlog is back under half: the
unacknowledged start of the backlog must stay, since Gladia resumes from its last acknowledged byte.
Gladia's clock then runs early by the dropped span for the rest of that session.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidHandshake, InvalidStatus

from callscribe.audio.interleave import BYTES_PER_MS, Interleaver
from callscribe.config import Settings
from callscribe.engines.base import RESTARTS, AudioLedger, Engine, EngineBusy, EngineSession
from callscribe.events import CallError, CallInfo, Track, TranscriptEvent
from callscribe.protocol import gladia as proto

logger = logging.getLogger(__name__)

MAX_SEND_FRAME = 512 * 1024  # backlog is re-sent in frames well under Gladia's 1 MiB limit (1009)
KEEPALIVE_S = 10.0  # an empty audio_chunk after this much silence on the socket (§2.5: ~30 s timeout)
_HANDSHAKE_FATAL = {401, 403, 404, 410}  # the session URL is no longer usable: don't hammer it
MAX_SESSIONS_PER_CALL = 20  # new sessions after lost ones; beyond, Gladia is failing us for good

Outcome = Literal["ended", "dropped", "lost"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: ``initial · 2^(attempt-1)``, capped at ``maximum`` seconds."""

    initial: float = 0.5
    maximum: float = 10.0

    def delay(self, attempt: int) -> float:
        return min(self.maximum, self.initial * 2 ** max(0, attempt - 1))


class GladiaEngine(Engine):
    """Process-wide Gladia engine: one shared :class:`httpx.AsyncClient`, a session per stream.

    ``GladiaEngine(settings)`` is all the server needs; ``client``, ``max_calls``, ``backoff``
    and ``max_buffer_seconds`` (audio held per track while Gladia is slow or down; default
    ``settings.engine_buffer_seconds``) exist for tests and tuning.
    """

    name = "gladia"

    def __init__(
        self,
        settings: Settings,
        *,
        client: httpx.AsyncClient | None = None,
        max_calls: int | None = None,
        backoff: Backoff | None = None,
        max_buffer_seconds: float | None = None,
    ) -> None:
        self.settings = settings
        self._client = client
        self._owns_client = client is None
        self.max_calls = max_calls
        self.backoff = backoff or Backoff()
        self.max_buffer_seconds = (
            settings.engine_buffer_seconds if max_buffer_seconds is None else max_buffer_seconds
        )
        self._active: set[GladiaSession] = set()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(10.0))
        return self._client

    async def startup(self) -> None:
        _ = self.client

    async def shutdown(self) -> None:
        for session in list(self._active):
            await session.aclose()
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    def open(self, call: CallInfo) -> GladiaSession:
        if self.max_calls is not None and len(self._active) >= self.max_calls:
            raise EngineBusy(f"gladia: {len(self._active)} calls in progress (max {self.max_calls})")
        session = GladiaSession(
            call,
            self.settings,
            self.client,
            backoff=self.backoff,
            max_buffer_seconds=self.max_buffer_seconds,
            on_close=self._active.discard,
        )
        self._active.add(session)
        return session

    def describe(self) -> dict[str, object]:
        return {
            "engine": self.name,
            "api_url": self.settings.gladia_api_url,
            "region": self.settings.gladia_region,
            "model": self.settings.gladia_model,
            "languages": list(self.settings.gladia_languages),
            "active_calls": len(self._active),
            "max_calls": self.max_calls,
        }


class GladiaSession(EngineSession):
    """One Twilio stream ↔ one Gladia live session (see the module docstring)."""

    def __init__(
        self,
        call: CallInfo,
        settings: Settings,
        client: httpx.AsyncClient,
        *,
        backoff: Backoff | None = None,
        max_buffer_seconds: float = 60.0,
        on_close: Callable[[GladiaSession], Any] | None = None,
    ) -> None:
        super().__init__(call)
        self.settings = settings
        self._client = client
        self._backoff = backoff or Backoff()
        self._on_close = on_close
        self.tracks = proto.channel_tracks(call)
        self.channels = len(self.tracks)
        self._interleaver = Interleaver() if self.channels == 2 else None
        self._chunk_bytes = settings.gladia_chunk_ms * BYTES_PER_MS * self.channels
        self._max_buffer = int(max_buffer_seconds * 1000 * BYTES_PER_MS * self.channels)
        self.max_buffer_seconds = max_buffer_seconds
        # The session's byte stream, as offsets from its start (what Gladia's byte_range counts):
        # [0, acked) confirmed by Gladia; [acked, produced) held in _buf; [acked, sent) in flight.
        self._buf = bytearray()
        self._acked = 0
        self._sent = 0
        self._produced = 0
        self._frame_ends: deque[int] = deque()  # where frames in flight end: tells ack conventions apart
        # chunks in _buf as (stream end offset, fed bytes in it): padding is not fed audio
        self._marks: deque[tuple[int, int]] = deque()
        self._ledger = AudioLedger()
        self._il_in = 0  # fed bytes pushed into the interleaver
        self._il_out = 0  # fed bytes it emitted (its output minus its padding)
        self._il_padded = 0  # padding it emitted
        self._time_offset = 0.0  # call time at which the current Gladia session's audio starts
        self._session_no = 0
        self._stop_requested = False  # stop_recording sent in the current Gladia session
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._finishing = False
        self._stop_acked = False
        self._ended = False  # Gladia ended the session: nothing more can be sent
        self._failed = False  # unrecoverable (401/400, session lost): audio is dropped, counted
        self._overflowing = False
        self._last_error: str | None = None
        self.session_id: str | None = None
        self._counters: dict[str, int] = {
            "bytes_fed": 0,
            "bytes_sent": 0,
            "bytes_resent": 0,
            "bytes_acked": 0,
            "dropped_bytes": 0,
            "frames_sent": 0,
            "reconnects": 0,
            "sessions": 0,
            "post_attempts": 0,
            "partials": 0,
            "finals": 0,
        }

    # ------------------------------------------------------------------------------- public API

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"gladia-{self.call.call_sid}")

    def feed(self, track: Track, audio: bytes) -> None:
        n = len(audio)
        self._counters["bytes_fed"] += n
        key = f"bytes_fed_{track.value}"
        self._counters[key] = self._counters.get(key, 0) + n
        self._ledger.add_fed(n)
        if track not in self.tracks or self._finishing:
            self._counters["ignored_bytes"] = self._counters.get("ignored_bytes", 0) + n
            self._ledger.drop("ignored_track" if track not in self.tracks else "closed", n)
            return
        if self._interleaver is None:
            self._append(bytes(audio), n)
            return
        late = self._interleaver.late_dropped_bytes
        self._il_in += n
        self._append_interleaved(self._interleaver.push(track, audio))
        self._ledger.drop("late", self._interleaver.late_dropped_bytes - late)

    async def finish(self, timeout: float) -> None:
        if not self._finishing:
            self._finishing = True
            if self._interleaver is not None:
                self._append_interleaved(self._interleaver.flush(), final=True)
            self._wake.set()
        try:
            if self._task is not None:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            unacked = self._produced - self._acked
            self._error(
                "gladia.drain_timeout",
                f"gave up waiting for Gladia's last transcripts after {timeout:g}s "
                f"({unacked} bytes not acknowledged); the end of the call may be missing",
            )
            await self._cancel()
        finally:
            self._drop_held("drain_timeout")  # what is still held now will never be transcribed
            self._closed()

    async def aclose(self) -> None:
        self._finishing = True
        await self._cancel()
        self._drop_held("aborted")
        self._closed()

    @property
    def counters(self) -> dict[str, int]:
        out = dict(self._counters)
        out.update(self._ledger.counters())
        out["bytes_held"] = self._il_in - self._il_out - self._late_total() + self._marked()
        out[RESTARTS] = self._counters["reconnects"] + max(0, self._counters["sessions"] - 1)
        out["bytes_unacked"] = self._produced - self._acked
        if self._interleaver is not None:
            out["late_dropped_bytes"] = self._interleaver.late_dropped_bytes
            for track, n in self._interleaver.padded_bytes.items():
                out[f"padded_bytes_{track.value}"] = n
        return out

    # ------------------------------------------------------------------------------- buffering

    def _append_interleaved(self, data: bytes, final: bool = False) -> None:
        """Append interleaver output, telling its fed bytes from its padding."""
        assert self._interleaver is not None
        padded = sum(self._interleaver.padded_bytes.values())
        real = len(data) - (padded - self._il_padded)
        self._il_padded = padded
        self._il_out += real
        self._append(data, real, final)

    def _late_total(self) -> int:
        return self._interleaver.late_dropped_bytes if self._interleaver is not None else 0

    def _marked(self) -> int:
        return sum(real for _, real in self._marks)

    def _append(self, data: bytes, real: int, final: bool = False) -> None:
        if not data:
            return
        if self._failed:
            self._counters["dropped_bytes"] += len(data)
            self._ledger.drop("engine_failed", real)
            return
        if self._overflowing and len(self._buf) <= self._max_buffer // 2:
            self._overflowing = False
        if len(self._buf) + len(data) > self._max_buffer:
            self._counters["dropped_bytes"] += len(data)
            self._ledger.drop("buffer_full", real)
            if not self._overflowing:
                self._overflowing = True
                self._error(
                    "gladia.buffer_full",
                    f"{self.max_buffer_seconds:g}s of audio are waiting for Gladia; dropping new audio "
                    "until it catches up (transcript times after the gap run early)",
                    retrying=True,
                )
            return
        self._buf += data
        self._produced += len(data)
        self._marks.append((self._produced, real))
        if final or self._produced - self._sent >= self._chunk_bytes:
            self._wake.set()

    def _on_ack(self, byte_range: tuple[int, int]) -> None:
        end = byte_range[1]
        # §2.6: the end may be exclusive (SDK) or inclusive (asyncapi). A frame boundary we sent
        # tells which; otherwise take it as exclusive (re-send a byte rather than lose one).
        if end not in self._frame_ends and end + 1 in self._frame_ends:
            end += 1
        end = min(end, self._sent)
        end -= end % self.channels  # never split a sample frame between channels
        while self._frame_ends and self._frame_ends[0] <= end:
            self._frame_ends.popleft()
        if end > self._acked:
            del self._buf[: end - self._acked]
            self._counters["bytes_acked"] += end - self._acked
            self._acked = end
            self._deliver(end)

    def _deliver(self, upto: int) -> None:
        """Chunks wholly below stream offset ``upto`` are Gladia's now."""
        while self._marks and self._marks[0][0] <= upto:
            self._ledger.deliver(self._marks.popleft()[1])

    def _drop_held(self, reason: str) -> None:
        """Everything still held (interleaver and resend buffer) is given up as ``reason``."""
        if self._interleaver is not None and self._il_in - self._il_out - self._late_total() > 0:
            self._append_interleaved(self._interleaver.flush())
        lost = self._marked()
        if lost:
            logger.warning("call %s: %d bytes of audio dropped (%s)", self.call.call_sid, lost, reason)
        self._ledger.drop(reason, lost)
        self._marks.clear()

    # ------------------------------------------------------------------------------- background

    async def _run(self) -> None:
        try:
            attempt = 0
            while True:
                init = await self._create()
                if init is None:
                    return
                acked_before = self._acked
                if await self._stream(init.url) == "ended" or self._failed:
                    return
                # The Gladia session is lost but the call goes on: a new session takes the rest.
                if self._finishing and self._produced == self._acked:
                    self._deliver(self._produced)
                    return  # everything was acknowledged: nothing left to transcribe
                if self._counters["sessions"] >= MAX_SESSIONS_PER_CALL:
                    self._error(
                        "gladia.session_lost",
                        f"{self._counters['sessions']} Gladia sessions lost in one call; giving up "
                        "(the rest of the call is not transcribed)",
                    )
                    self._fail()
                    return
                attempt = 1 if self._acked > acked_before else attempt + 1
                self._rebase()
                await asyncio.sleep(self._backoff.delay(attempt))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must surface as an error event, not vanish
            logger.exception("call %s: gladia session crashed", self.call.call_sid)
            self._error("gladia.internal", f"Gladia session failed: {exc!r}")
            self._fail()

    def _rebase(self) -> None:
        """Make the unacknowledged audio the start of a new Gladia session's byte stream."""
        shift = self._acked
        self._time_offset += shift / (self.channels * BYTES_PER_MS * 1000)
        self._produced -= shift
        self._acked = self._sent = 0
        self._marks = deque((end - shift, real) for end, real in self._marks)
        self._frame_ends.clear()
        self._stop_acked = self._stop_requested = self._ended = False

    async def _create(self) -> proto.InitResponse | None:
        """``POST /v2/live`` until it succeeds or fails for good; audio keeps buffering meanwhile."""
        url = proto.init_url(self.settings)
        body = orjson.dumps(proto.build_init_body(self.settings, self.call, self.channels))
        attempt = 0
        while True:
            if self._finishing and self._produced == 0:
                return None  # the stream ended before any audio: no session to pay for
            attempt += 1
            self._counters["post_attempts"] += 1
            try:
                resp = await self._client.post(url, content=body, headers=proto.headers(self.settings))
            except httpx.HTTPError as exc:
                err = proto.RestError(0, "gladia.network", f"cannot reach Gladia at {url}: {exc!r}", True)
            else:
                if resp.is_success:
                    try:
                        init = proto.parse_init_response(resp.content)
                    except ValueError as exc:
                        err = proto.RestError(resp.status_code, "gladia.bad_response", str(exc), True)
                    else:
                        self.session_id = init.id
                        self._counters["sessions"] += 1
                        self._session_no += 1
                        self._last_error = None
                        logger.info("call %s: gladia session %s created", self.call.call_sid, init.id)
                        return init
                else:
                    err = proto.parse_rest_error(resp.status_code, resp.content)
            if not err.retryable:
                self._error(err.code, err.message)
                self._fail()
                return None
            delay = self._backoff.delay(attempt)
            self._error(err.code, f"{err.message}; retrying in {delay:.1f}s", retrying=True)
            await asyncio.sleep(delay)

    async def _stream(self, url: str) -> Outcome:
        attempt = 0
        while True:
            acked_before = self._acked
            outcome = await self._connect_once(url, reconnect=attempt > 0 or self._sent > 0)
            if outcome != "dropped":
                return outcome
            # a connection that made progress resets the backoff; a flapping one does not
            attempt = 1 if self._acked > acked_before else attempt + 1
            await asyncio.sleep(self._backoff.delay(attempt))

    async def _connect_once(self, url: str, reconnect: bool) -> Outcome:
        try:
            # no permessage-deflate: μ-law barely compresses and deflating every frame cost 8–15 % of
            # the gateway's CPU (bench/README.md, "callscribe-nodeflate")
            async with connect(url, open_timeout=10, close_timeout=2, max_size=None, compression=None) as ws:
                if reconnect:
                    self._counters["reconnects"] += 1
                    logger.info(
                        "call %s: gladia session %s resumed, re-sending %d bytes",
                        self.call.call_sid,
                        self.session_id,
                        self._sent - self._acked,
                    )
                self._last_error = None
                self._counters["bytes_resent"] += self._sent - self._acked
                self._sent = self._acked  # Gladia keeps only what it acknowledged
                self._frame_ends.clear()
                return await self._io(ws)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in _HANDSHAKE_FATAL:
                self._error(
                    "gladia.session_lost",
                    f"Gladia refused to resume session {self.session_id} (HTTP {status}); "
                    "opening a new session for the rest of the call",
                    retrying=True,
                )
                return "lost"
            self._error("gladia.network", f"Gladia WebSocket handshake failed (HTTP {status})", retrying=True)
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
            self._error("gladia.network", f"cannot reach the Gladia WebSocket: {exc!r}", retrying=True)
        return "dropped"

    async def _io(self, ws: ClientConnection) -> Outcome:
        sender = asyncio.create_task(self._send_loop(ws))
        receiver = asyncio.create_task(self._recv_loop(ws))
        try:
            done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if sender in done and not isinstance(sender.exception(), (ConnectionClosed, type(None))):
                raise sender.exception()  # type: ignore[misc]
            # the receiver drains what arrived before the close (acks included) before it returns
            return await receiver
        finally:
            for task in (sender, receiver):
                task.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)

    async def _send_loop(self, ws: ClientConnection) -> None:
        stop_sent = False
        while True:
            available = self._produced - self._sent
            size = available if self._finishing else available - available % self._chunk_bytes
            if size > 0:
                size = min(size, MAX_SEND_FRAME)
                offset = self._sent - self._acked
                frame = bytes(self._buf[offset : offset + size])  # copied: acks may trim _buf meanwhile
                self._sent += size
                self._frame_ends.append(self._sent)
                self._counters["bytes_sent"] += size
                self._counters["frames_sent"] += 1
                await ws.send(frame)
                continue
            if self._finishing:
                if not stop_sent and not self._stop_acked:
                    await ws.send(proto.stop_recording_message(), text=True)
                    stop_sent = self._stop_requested = True
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), KEEPALIVE_S)
            except TimeoutError:
                await ws.send(proto.keepalive_message(), text=True)

    async def _recv_loop(self, ws: ClientConnection) -> Outcome:
        try:
            async for raw in ws:
                if isinstance(raw, bytes):
                    logger.debug("call %s: unexpected binary frame from Gladia", self.call.call_sid)
                    continue
                if self._handle(proto.parse_message(raw)):
                    return self._session_over()
        except ConnectionClosedError as exc:
            self._error("gladia.disconnected", f"Gladia socket dropped ({exc}); resuming", retrying=True)
            return "dropped"
        code = ws.close_code
        if code == 1000:
            return self._session_over()
        self._error("gladia.disconnected", f"Gladia socket closed with code {code}; resuming", retrying=True)
        return "dropped"

    def _session_over(self) -> Outcome:
        """Gladia ended the session: the normal end after our stop, or a session lost mid-call."""
        if self._finishing and self._stop_requested and self._sent == self._produced:
            # stop_recording went after every byte on an ordered socket: Gladia had them all
            self._ended = True
            self._deliver(self._produced)
            return "ended"
        self._error(
            "gladia.session_closed",
            f"Gladia ended session {self.session_id} before the call did; "
            "opening a new session for the rest of the call",
            retrying=True,
        )
        return "lost"

    def _handle(self, msg: proto.GladiaMessage) -> bool:
        """Act on one Gladia message; True once the session has ended."""
        match msg:
            case proto.TranscriptMessage():
                event = self._on_call_clock(proto.to_transcript_event(msg, self.call, self.tracks))
                if not event.text and not event.is_final:
                    return False  # an empty partial says nothing
                self._counters["finals" if event.is_final else "partials"] += 1
                self._emit(event)
            case proto.AudioChunkAck(acknowledged=True, byte_range=(int(), int()) as byte_range):
                self._on_ack(byte_range)
            case proto.AudioChunkAck(acknowledged=False):
                logger.warning("call %s: gladia refused audio: %s", self.call.call_sid, msg.error)
            case proto.StopRecordingAck():
                self._stop_acked = True  # acknowledged:false means "already stopped": as good
            case proto.Lifecycle(kind="end_session"):
                self._ended = True
                return True
            case proto.ErrorMessage():
                self._error(f"gladia.{msg.code}", f"Gladia reported an error: {msg.message}")
            case proto.UnknownMessage():
                logger.debug("call %s: ignoring gladia message %r", self.call.call_sid, msg.raw[:200])
            case _:
                logger.debug("call %s: gladia %s", self.call.call_sid, type(msg).__name__)
        return False

    # ------------------------------------------------------------------------------- helpers

    def _on_call_clock(self, event: TranscriptEvent) -> TranscriptEvent:
        """A later Gladia session's times start at its own 0 and its ids repeat: shift and tag them."""
        if self._session_no <= 1:
            return event
        off = self._time_offset
        return dataclasses.replace(
            event,
            utterance_id=f"{event.utterance_id}-s{self._session_no}",
            start=round(event.start + off, 3),
            end=round(event.end + off, 3),
            words=tuple(
                dataclasses.replace(w, start=round(w.start + off, 3), end=round(w.end + off, 3))
                for w in event.words
            ),
        )

    def _error(self, code: str, message: str, retrying: bool = False) -> None:
        log = logger.warning if retrying else logger.error
        log("call %s: %s: %s", self.call.call_sid, code, message)
        # one event per new condition: a 429 retried ten times is one error, not ten
        key = f"{code}:{retrying}"
        if key == self._last_error and retrying:
            return
        self._last_error = key
        self._emit(
            CallError(
                call_sid=self.call.call_sid,
                stream_sid=self.call.stream_sid,
                code=code,
                message=message,
                retrying=retrying,
            )
        )

    def _fail(self) -> None:
        self._failed = True
        self._counters["dropped_bytes"] += len(self._buf)
        self._ledger.drop("engine_failed", self._marked())
        self._marks.clear()
        self._buf.clear()
        self._acked = self._sent = self._produced

    async def _cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _closed(self) -> None:
        self._close_events()
        if self._on_close is not None:
            self._on_close(self)
            self._on_close = None
