"""Simulated Twilio calls, many per process, cheap enough that the load generator is not the bottleneck.

Each call is an :class:`asyncio.Protocol` on a raw TCP connection: a hand-written WebSocket upgrade,
then pre-framed text messages (client frames masked with a zero key, which leaves the payload as
is) written straight to the transport from a timer callback: no coroutine, no task, no library
framing per frame. Messages are exactly Twilio's (``connected``, ``start``, ``media`` with string
counters, ``stop``). Frame ``k`` of a call goes out at ``t0 + k·20 ms`` (absolute schedule, so
pacing never drifts); both tracks of a two-track call go out in the same tick, inbound first.

Every μ-law payload starts with a marker (``encode_marker(call, track, k)``) and is μ-law silence
after it; the send time of every frame (``time.monotonic()`` right before the write) is logged.
"""

from __future__ import annotations

import asyncio
import base64
import os
import resource
import time
from array import array
from dataclasses import dataclass
from typing import Any

from callscribe.fakes.gladia import encode_marker

FRAME_S = 0.020
FRAME_BYTES = 160
SILENCE = b"\xff"
TRACK_NAMES = ("inbound", "outbound")


def ws_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked client frame (mask key 0: the payload goes as is)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


@dataclass(frozen=True)
class CallSpec:
    call: int  # marker call number (u16, unique within a run)
    tracks: int  # 1 or 2
    start_at: float  # time.monotonic() when the call connects
    duration: float  # seconds of audio per track


class Log:
    """Send log of one worker process (flat columns)."""

    def __init__(self) -> None:
        self.call = array("H")
        self.track = array("B")
        self.seq = array("I")
        self.t = array("d")
        self.late = array("d")  # how late each tick fired vs its schedule (load generator health)

    def take(self) -> dict[str, bytes]:
        out = {k: getattr(self, k).tobytes() for k in ("call", "track", "seq", "t", "late")}
        self.__init__()  # type: ignore[misc]
        return out


class Call(asyncio.Protocol):
    def __init__(self, gen: Generator, spec: CallSpec) -> None:
        self.gen = gen
        self.spec = spec
        self.transport: asyncio.Transport | None = None
        self.handshake = bytearray()
        self.inbox = bytearray()
        self.upgraded = False
        self.slots = round(spec.duration / FRAME_S)
        self.k = 0
        self.t0 = 0.0
        self.stream_sid = f"MZ{os.getpid():08x}{spec.call:024x}"
        self.call_sid = f"CA{os.getpid():08x}{spec.call:024x}"
        self.error: str | None = None
        self.done = False
        self.timer: asyncio.TimerHandle | None = None

    # ---------------------------------------------------------------- connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        g = self.gen
        req = (
            f"GET {g.path} HTTP/1.1\r\nHost: {g.host}:{g.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.transport.write(req.encode())

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            self.inbox += data
            self._frames()
            return
        self.handshake += data
        if b"\r\n\r\n" not in self.handshake:
            return
        head, _, rest = bytes(self.handshake).partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            self.error = f"handshake refused: {status.decode(errors='replace')}"
            self.finish()
            return
        self.upgraded = True
        self.begin()
        if rest:
            self.data_received(rest)

    def _frames(self) -> None:
        """Server frames (unmasked): answer pings (servers drop clients that don't), note closes."""
        buf = self.inbox
        while len(buf) >= 2:
            opcode, n, i = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, i = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, i = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < i + n:
                return
            payload = bytes(buf[i : i + n])
            del buf[: i + n]
            if opcode == 9 and self.transport is not None and not self.transport.is_closing():
                self.transport.write(ws_frame(payload, opcode=10))
            elif opcode == 8 and not self.done:
                self.error = self.error or f"server closed the stream: {payload[:40]!r}"

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done:
            self.error = self.error or f"connection lost: {exc!r}"
            self.finish()

    # ---------------------------------------------------------------- streaming

    def send(self, obj: bytes) -> None:
        assert self.transport is not None
        self.transport.write(ws_frame(obj))

    def begin(self) -> None:
        tracks = ",".join(f'"{TRACK_NAMES[i]}"' for i in range(self.spec.tracks))
        self.send(b'{"event":"connected","protocol":"Call","version":"1.0.0"}')
        self.send(
            (
                '{"event":"start","sequenceNumber":"1","start":{"accountSid":"AC00000000000000000000000000000000",'
                f'"streamSid":"{self.stream_sid}","callSid":"{self.call_sid}","tracks":[{tracks}],'
                '"customParameters":{"bench":"load"},'
                '"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},'
                f'"streamSid":"{self.stream_sid}"}}'
            ).encode()
        )
        self.seq = 1
        self.t0 = time.monotonic()
        self.tick()

    def tick(self) -> None:
        if self.done or self.transport is None or self.transport.is_closing():
            return
        k = self.k
        now = time.monotonic()
        log = self.gen.log
        log.late.append(now - (self.t0 + k * FRAME_S))
        write = self.transport.write
        ts = k * 20
        for track in range(self.spec.tracks):
            payload = encode_marker(self.spec.call, track, k) + self.gen.pad
            self.seq += 1
            msg = (
                b'{"event":"media","sequenceNumber":"%d","media":{"track":"%s","chunk":"%d",'
                b'"timestamp":"%d","payload":"%s"},"streamSid":"%s"}'
                % (
                    self.seq,
                    TRACK_NAMES[track].encode(),
                    k + 1,
                    ts,
                    base64.b64encode(payload),
                    self.stream_sid.encode(),
                )
            )
            log.call.append(self.spec.call)
            log.track.append(track)
            log.seq.append(k)
            log.t.append(time.monotonic())
            write(ws_frame(msg))
        self.k = k + 1
        if self.k >= self.slots:
            self.stop()
            return
        self.timer = self.gen.loop.call_at(self.gen.loop_time(self.t0 + self.k * FRAME_S), self.tick)

    def stop(self) -> None:
        self.seq += 1
        self.send(
            (
                f'{{"event":"stop","sequenceNumber":"{self.seq}","stop":{{"accountSid":"AC0",'
                f'"callSid":"{self.call_sid}"}},"streamSid":"{self.stream_sid}"}}'
            ).encode()
        )
        self.done = True
        assert self.transport is not None
        # a normal close (1000) a moment later, as Twilio does after stop
        self.gen.loop.call_later(0.5, self._close)

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(ws_frame(b"\x03\xe8", opcode=8))
            self.gen.loop.call_later(0.5, self.transport.close)
        self.finish()

    def finish(self) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
        self.gen.finished(self)


class Generator:
    """All the calls of one worker process."""

    def __init__(self, host: str, port: int, path: str, specs: list[CallSpec]) -> None:
        self.host, self.port, self.path = host, port, path
        self.specs = specs
        self.log = Log()
        self.pad = SILENCE * (FRAME_BYTES - len(encode_marker(0, 0, 0)))
        self.loop = asyncio.get_running_loop()
        self.calls: list[Call] = []
        self.open = len(specs)
        self.all_done = asyncio.Event()
        # loop.time() may differ from time.monotonic() by an offset (uvloop caches ms); map it
        self._offset = self.loop.time() - time.monotonic()

    def loop_time(self, mono: float) -> float:
        return mono + self._offset

    async def run(self) -> None:
        for spec in self.specs:
            self.loop.call_at(self.loop_time(spec.start_at), self._connect, spec)
        if not self.specs:
            return
        await self.all_done.wait()

    def _connect(self, spec: CallSpec) -> None:
        call = Call(self, spec)
        self.calls.append(call)

        async def go() -> None:
            try:
                await self.loop.create_connection(lambda: call, self.host, self.port)
            except OSError as exc:
                call.error = f"connect failed: {exc!r}"
                call.finish()

        self.loop.create_task(go())

    def finished(self, call: Call) -> None:
        if getattr(call, "_counted", False):
            return
        call._counted = True  # type: ignore[attr-defined]
        self.open -= 1
        if self.open <= 0:
            self.all_done.set()


def worker_main(
    conn: Any, host: str, port: int, path: str, specs: list[CallSpec], flush_every: float
) -> None:
    """Process entry: run ``specs``; send logs to the parent every ``flush_every`` s and at the end."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run

    async def main() -> None:
        gen = Generator(host, port, path, specs)

        async def flusher() -> None:
            while True:
                await asyncio.sleep(flush_every)
                conn.send(("log", gen.log.take()))

        task = asyncio.create_task(flusher()) if flush_every > 0 else None
        await gen.run()
        await asyncio.sleep(1.2)  # let the closes go out
        if task is not None:
            task.cancel()
        errors = [(c.spec.call, c.error) for c in gen.calls if c.error]
        ru = resource.getrusage(resource.RUSAGE_SELF)
        conn.send(("log", gen.log.take()))
        conn.send(("done", {"errors": errors, "cpu_s": ru.ru_utime + ru.ru_stime, "calls": len(specs)}))

    runner(main())
    conn.close()
