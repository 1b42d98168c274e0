"""Two μ-law tracks → one 2-channel byte stream (inbound → channel 0, outbound → channel 1).

Each track's bytes are contiguous from stream time 0 (byte ``n`` is at ``n / 8000`` s), so the
audio clock, not arrival order, decides which bytes pair up. Output is emitted for the span both
tracks cover. A lagging track (Twilio stopped sending it, or it started late) may hold the other
back by at most ``max_skew_ms``; beyond that it is padded with μ-law silence (``0xFF``), and its
bytes that later arrive for time already padded are discarded and counted.
"""

from __future__ import annotations

from callscribe.audio.mulaw import SILENCE
from callscribe.events import Track

BYTES_PER_MS = 8  # 8 kHz, one byte per μ-law sample


def interleave(left: bytes | bytearray, right: bytes | bytearray) -> bytes:
    """Byte-interleave two equal-length mono μ-law buffers: L R L R …"""
    if len(left) != len(right):
        raise ValueError(f"channels differ in length: {len(left)} != {len(right)}")
    out = bytearray(2 * len(left))
    out[0::2] = left
    out[1::2] = right
    return bytes(out)


class Interleaver:
    """Incremental, pure 2-channel interleaver with bounded skew. Not thread-safe; no I/O."""

    CHANNELS = (Track.INBOUND, Track.OUTBOUND)

    def __init__(self, max_skew_ms: int = 200) -> None:
        if max_skew_ms < 0:
            raise ValueError("max_skew_ms must be >= 0")
        self.max_skew_bytes = max_skew_ms * BYTES_PER_MS
        self._emitted = 0  # samples per channel written out so far (the output clock)
        self._received = {t: 0 for t in self.CHANNELS}  # bytes fed per track = its audio clock
        self._pending = {t: bytearray() for t in self.CHANNELS}  # covers [emitted, received) when ahead
        self.padded_bytes = {t: 0 for t in self.CHANNELS}
        self.late_dropped_bytes = 0

    @property
    def emitted_samples(self) -> int:
        """Samples per channel emitted so far (output bytes ÷ 2)."""
        return self._emitted

    def received(self, track: Track) -> int:
        return self._received[track]

    def push(self, track: Track, audio: bytes | bytearray | memoryview) -> bytes:
        """Add ``audio`` of ``track``; return the interleaved bytes that became ready (maybe empty)."""
        if track not in self._pending:
            raise ValueError(f"unknown track {track!r}")
        data = memoryview(audio).cast("B")
        start = self._received[track]
        self._received[track] = start + len(data)
        if start < self._emitted:
            # this time was already padded with silence: the bytes came too late to be used
            late = min(len(data), self._emitted - start)
            self.late_dropped_bytes += late
            data = data[late:]
        self._pending[track] += data
        return self._drain(pad_to=None)

    def flush(self) -> bytes:
        """End of stream: pad the shorter track and emit everything held."""
        return self._drain(pad_to=0)

    def _drain(self, pad_to: int | None) -> bytes:
        a, b = (self._pending[t] for t in self.CHANNELS)
        lead = max(len(a), len(b))
        allowed_lag = self.max_skew_bytes if pad_to is None else pad_to
        if lead - min(len(a), len(b)) > allowed_lag:
            # pad the lagger so the leader is held back by at most `allowed_lag`
            target = lead - allowed_lag
            for track in self.CHANNELS:
                short = target - len(self._pending[track])
                if short > 0:
                    self._pending[track] += bytes([SILENCE]) * short
                    self.padded_bytes[track] += short
        n = min(len(a), len(b))
        if n == 0:
            return b""
        out = interleave(a[:n], b[:n])
        del a[:n]
        del b[:n]
        self._emitted += n
        return out
