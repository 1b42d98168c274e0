"""Play a planned call to the gateway over WebSockets, like Twilio would, and collect what comes back.

The ``/live/{call_sid}`` socket is opened before ``start`` is sent so no event is missed. Frames
are paced on an absolute schedule from one monotonic start (a frame leaves when its 20 ms of audio
would have been captured), so pacing does not drift; ``realtime=False`` sends as fast as possible.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from callscribe.events import Track
from callscribe.simulator.messages import CallIds, CallPlan, Scenario, plan_call, twilio_signature
from callscribe.simulator.report import LatencyReport, ReceivedEvent, SentFrame, latency_report

EventCallback = Callable[[ReceivedEvent], None]
ProgressCallback = Callable[[float, float], None]  # (audio seconds sent, total audio seconds)

_HANDSHAKE_HINTS = {
    401: "missing or bad credentials",
    403: "bad X-Twilio-Signature? check --auth-token / TWILIO_AUTH_TOKEN and the signed URL",
    404: "wrong path?",
}


class SimulatorError(Exception):
    """The call could not be set up (cannot connect, handshake refused); the message is one line."""


@dataclass(slots=True)
class SimulationResult:
    """What one simulated call sent and received."""

    ids: CallIds
    tracks: tuple[str, ...]
    audio_seconds: float  # length of the stream's timeline
    sent: list[SentFrame] = field(default_factory=list)
    events: list[ReceivedEvent] = field(default_factory=list)  # this call's /live events, in order
    started_at: float | None = None  # wall clock `start` was sent
    stopped_at: float | None = None  # wall clock the last message was sent
    ended: bool = False  # `call.ended` arrived on /live
    error: str | None = None  # the call broke mid-way (e.g. the gateway closed the media socket)
    report: LatencyReport = field(default_factory=LatencyReport)

    @property
    def call_sid(self) -> str:
        return self.ids.call_sid

    @property
    def frames_sent(self) -> dict[str, int]:
        counts = dict.fromkeys(self.tracks, 0)
        for frame in self.sent:
            counts[frame.track] = counts.get(frame.track, 0) + 1
        return counts

    @property
    def transcripts(self) -> list[ReceivedEvent]:
        return [ev for ev in self.events if ev.is_transcript]

    @property
    def finals(self) -> list[ReceivedEvent]:
        return [ev for ev in self.events if ev.is_final]

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (what ``--report-json`` writes)."""
        return {
            "call_sid": self.ids.call_sid,
            "stream_sid": self.ids.stream_sid,
            "tracks": list(self.tracks),
            "audio_seconds": self.audio_seconds,
            "frames_sent": self.frames_sent,
            "events_received": len(self.events),
            "ended": self.ended,
            "error": self.error,
            "latency": self.report.to_dict(),
        }


def live_url_for(media_url: str, call_sid: str, live_url: str | None = None) -> str:
    """The ``/live`` URL for one call: ``live_url`` (``{call_sid}`` is filled in) or derived from
    ``media_url`` — same scheme and host, a trailing ``/media`` replaced by ``/live/<call_sid>``."""
    if live_url:
        return live_url.replace("{call_sid}", call_sid)
    parts = urlsplit(media_url)
    prefix = parts.path[: -len("/media")] if parts.path.endswith("/media") else ""
    return urlunsplit((parts.scheme, parts.netloc, f"{prefix}/live/{call_sid}", "", ""))


def _dumps(message: dict[str, Any]) -> str:
    # A str, not bytes: Twilio only ever sends text frames, and websockets sends bytes as binary.
    return orjson.dumps(message).decode()


async def _connect(url: str, headers: Mapping[str, str] | None, open_timeout: float) -> ClientConnection:
    try:
        # proxy=None: a test tool talks to the gateway directly, whatever HTTP(S)_PROXY says;
        # compression=None: whether Twilio offers permessage-deflate is not documented.
        return await connect(
            url,
            additional_headers=dict(headers or {}),
            open_timeout=open_timeout,
            proxy=None,
            compression=None,
            max_size=None,
        )
    except InvalidStatus as e:
        status = e.response.status_code
        hint = _HANDSHAKE_HINTS.get(status)
        raise SimulatorError(
            f"{url} refused the WebSocket handshake: HTTP {status} {e.response.reason_phrase}"
            + (f" ({hint})" if hint else "")
        ) from None
    except InvalidURI as e:
        raise SimulatorError(f"invalid WebSocket URL {url!r}: {e.msg}") from None
    except TimeoutError:
        raise SimulatorError(f"cannot connect to {url}: no answer within {open_timeout:g} s") from None
    except OSError as e:
        # "localhost" tries ::1 and 127.0.0.1; asyncio then raises a plain OSError listing both.
        if isinstance(e, ConnectionRefusedError) or e.errno == errno.ECONNREFUSED or "refused" in str(e):
            raise SimulatorError(
                f"cannot connect to {url}: connection refused — is 'callscribe serve' running?"
            ) from None
        raise SimulatorError(f"cannot connect to {url}: {e.strerror or e}") from None
    except InvalidHandshake as e:
        raise SimulatorError(f"cannot connect to {url}: {e}") from None


async def _read_live(
    ws: ClientConnection, call_sid: str, events: list[ReceivedEvent], on_event: EventCallback | None
) -> None:
    """Collect this call's events until its ``call.ended`` (or the socket closes)."""
    try:
        async for raw in ws:
            at = time.time()
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            # `/live` without a call SID carries every call; keep ours only.
            if not isinstance(data, dict) or data.get("call_sid") != call_sid:
                continue
            event = ReceivedEvent(at, data)
            events.append(event)
            if on_event is not None:
                on_event(event)
            if event.type == "call.ended":
                return
    except ConnectionClosed:
        return


async def _send_call(
    ws: ClientConnection,
    plan: CallPlan,
    result: SimulationResult,
    *,
    realtime: bool,
    on_progress: ProgressCallback | None,
) -> None:
    loop = asyncio.get_running_loop()
    total = plan.duration_ms / 1000
    await ws.send(_dumps(plan.connected))
    await ws.send(_dumps(plan.start))
    result.started_at = time.time()
    t0 = loop.time()
    for n, frame in enumerate(plan.frames):
        if realtime:
            # Absolute schedule: a late wake-up shortens the next wait instead of adding up.
            delay = t0 + frame.end_ms / 1000 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        elif n % 50 == 0:
            await asyncio.sleep(0)  # let the /live reader run between bursts
        await ws.send(_dumps(plan.media(frame)))
        result.sent.append(
            SentFrame(str(frame.track), frame.index, frame.timestamp_ms, frame.end_ms, time.time())
        )
        if on_progress is not None:
            on_progress(frame.end_ms / 1000, total)
    if realtime:  # trailing dropped frames still take their time before the call ends
        delay = t0 + total - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
    if plan.stop is not None:
        await ws.send(_dumps(plan.stop))
    result.stopped_at = time.time()
    if on_progress is not None:
        on_progress(total, total)


async def run_scenario(
    url: str,
    scenario: Scenario,
    *,
    realtime: bool = True,
    live: bool = True,
    live_url: str | None = None,
    auth_token: str | None = None,
    signature_url: str | None = None,
    on_event: EventCallback | None = None,
    on_progress: ProgressCallback | None = None,
    drain_timeout: float = 15.0,
    open_timeout: float = 10.0,
) -> SimulationResult:
    """Play ``scenario`` to the Media Streams endpoint at ``url``; see :func:`simulate_call`."""
    plan = plan_call(scenario)
    result = SimulationResult(plan.ids, tuple(str(t) for t in plan.tracks), plan.duration_ms / 1000)
    headers: dict[str, str] = {}
    if auth_token:
        headers["X-Twilio-Signature"] = twilio_signature(signature_url or url, auth_token)

    # Media first: its refusal (nothing listening, 403) is the error worth reporting. Nothing is
    # sent on it until /live is subscribed.
    media = await _connect(url, headers, open_timeout)
    live_ws: ClientConnection | None = None
    reader: asyncio.Task[None] | None = None
    try:
        if live:
            live_ws = await _connect(live_url_for(url, plan.ids.call_sid, live_url), None, open_timeout)
            reader = asyncio.create_task(_read_live(live_ws, plan.ids.call_sid, result.events, on_event))
        try:
            await _send_call(media, plan, result, realtime=realtime, on_progress=on_progress)
        except ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else 1006
            reason = f" {e.rcvd.reason}" if e.rcvd and e.rcvd.reason else ""
            result.error = (
                f"the gateway closed the media socket after {len(result.sent)} frames: code {code}{reason}"
            )
        await media.close(1000)
        if reader is not None:
            done, _ = await asyncio.wait({reader}, timeout=drain_timeout)
            if reader in done:
                reader.result()  # re-raise an on_event failure
    finally:
        if reader is not None and not reader.done():
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        await media.close(1000)
        if live_ws is not None:
            await live_ws.close()

    result.ended = any(ev.type == "call.ended" for ev in result.events)
    result.report = latency_report(result.sent, result.events)
    return result


async def simulate_call(
    url: str,
    caller_ulaw: bytes,
    agent_ulaw: bytes | None = None,
    *,
    realtime: bool = True,
    live: bool = True,
    live_url: str | None = None,
    auth_token: str | None = None,
    signature_url: str | None = None,
    params: Mapping[str, str] | None = None,
    on_event: EventCallback | None = None,
    on_progress: ProgressCallback | None = None,
    drop_rate: float = 0.0,
    dropped: Mapping[Track, Collection[int]] | None = None,
    seed: int | None = None,
    agent_delay: float = 0.0,
    pad: bool = True,
    send_stop: bool = True,
    ids: CallIds | None = None,
    drain_timeout: float = 15.0,
    open_timeout: float = 10.0,
) -> SimulationResult:
    """Simulate one Twilio call: stream 8 kHz μ-law audio to ``url`` and collect ``/live`` events.

    ``caller_ulaw`` is the inbound track, ``agent_ulaw`` (optional) the outbound one. With
    ``auth_token`` the handshake carries ``X-Twilio-Signature`` over ``signature_url or url``.
    ``live=False`` skips ``/live`` (no events, no latency). Raises :class:`SimulatorError` when
    the call cannot be set up; a call that breaks mid-way is reported in ``result.error``.
    """
    scenario = Scenario(
        caller=caller_ulaw,
        agent=agent_ulaw,
        ids=ids or CallIds.new(),
        params=dict(params or {}),
        dropped=dict(dropped or {}),
        drop_rate=drop_rate,
        seed=seed,
        agent_delay=agent_delay,
        pad=pad,
        send_stop=send_stop,
    )
    return await run_scenario(
        url,
        scenario,
        realtime=realtime,
        live=live,
        live_url=live_url,
        auth_token=auth_token,
        signature_url=signature_url,
        on_event=on_event,
        on_progress=on_progress,
        drain_timeout=drain_timeout,
        open_timeout=open_timeout,
    )
