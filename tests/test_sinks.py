"""Sinks: console output like the blog, JSON lines, and a fan-out that never blocks or drops finals."""

from __future__ import annotations

import asyncio
import io

from callscribe.events import CallEnded, CallInfo, CallStarted, Event, Track, TranscriptEvent
from callscribe.sinks.base import Sink
from callscribe.sinks.console import ConsoleSink
from callscribe.sinks.fanout import FanOut
from callscribe.sinks.live import LiveHub


def tr(text: str, final: bool, uid: str = "u1", track: Track = Track.INBOUND) -> TranscriptEvent:
    return TranscriptEvent(
        "CA1", "MZ1", track, "caller" if track is Track.INBOUND else "agent", uid, text, final, 0.0, 1.0
    )


class TtyBuffer(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_console_prints_finals_like_the_blog_and_partials_in_place() -> None:
    out = TtyBuffer()
    sink = ConsoleSink(out)
    await sink.handle(CallStarted(CallInfo("CA1", "MZ1", (Track.INBOUND, Track.OUTBOUND)), "local"))
    await sink.handle(tr(" hello", False))
    await sink.handle(tr(" hello there", False))
    await sink.handle(tr(" Hello there.", True))
    await sink.handle(tr(" Hi.", True, "u2", Track.OUTBOUND))
    await sink.handle(CallEnded("CA1", "MZ1", "stop", 3.0))
    text = out.getvalue()
    assert "\r\x1b[2K… [caller] hello there" in text
    assert "📝 Transcript [caller]: Hello there.\n" in text
    assert "📝 Transcript [agent]: Hi.\n" in text
    assert text.index("\r\x1b[2K📝 Transcript [caller]") > text.index("hello there")


async def test_console_on_a_pipe_prints_finals_only() -> None:
    out = io.StringIO()
    sink = ConsoleSink(out)
    await sink.handle(tr("partial", False))
    await sink.handle(tr("Final.", True))
    assert out.getvalue() == "📝 Transcript [caller]: Final.\n"


class SlowSink(Sink):
    name = "slow"

    def __init__(self) -> None:
        self.got: list[Event] = []
        self.gate = asyncio.Event()

    async def handle(self, event: Event) -> None:
        await self.gate.wait()
        self.got.append(event)


class FailingSink(Sink):
    name = "failing"

    async def handle(self, event: Event) -> None:
        raise RuntimeError("down")


async def test_fanout_slow_sink_loses_partials_never_finals_and_never_blocks() -> None:
    slow, fast = SlowSink(), SlowSink()
    fast.name = "fast"
    fast.gate.set()
    fan = FanOut([slow, fast, FailingSink()], max_partials_pending=5)
    await fan.start()
    for i in range(100):
        fan.publish(tr(f"p{i}", False, f"u{i}"))  # returns at once although `slow` is stuck
        fan.publish(tr(f"f{i}", True, f"u{i}"))
        await asyncio.sleep(0)  # a healthy sink keeps up between audio frames
    await asyncio.sleep(0.01)
    assert len(fast.got) == 200
    slow.gate.set()
    await fan.close()
    finals = [e.text for e in slow.got if e.is_final]
    assert finals == [f"f{i}" for i in range(100)]
    stats = fan.stats()
    assert stats["slow"]["dropped_partials"] >= 90 and stats["failing"]["errors"] == 200


async def test_live_hub_filters_by_call_and_cuts_off_a_hopeless_watcher() -> None:
    hub = LiveHub()
    everyone, one, other = hub.subscribe(), hub.subscribe("CA1"), hub.subscribe("CA2")
    await hub.handle(tr("x", True))
    assert await everyone.next() is not None and await one.next() is not None
    assert not other.queue
    one.max_pending = 3
    for _ in range(5):
        await hub.handle(tr("y", True))
    drained = [await one.next() for _ in range(4)]
    assert drained[-1] is None  # told it fell behind, so it can reconnect
