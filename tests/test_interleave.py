"""The 2-channel μ-law interleaver: alignment on the audio clock, bounded skew, padding, late bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callscribe.audio.interleave import Interleaver, interleave
from callscribe.events import Track

IN, OUT = Track.INBOUND, Track.OUTBOUND


def channels(data: bytes) -> tuple[bytes, bytes]:
    return data[0::2], data[1::2]


def test_interleave_pairs_bytes() -> None:
    assert interleave(b"abc", b"xyz") == b"axbycz"
    with pytest.raises(ValueError):
        interleave(b"ab", b"x")


def test_emits_only_the_span_both_tracks_cover() -> None:
    il = Interleaver()
    assert il.push(IN, b"\x01" * 160) == b""
    out = il.push(OUT, b"\x02" * 100)
    assert out == b"\x01\x02" * 100
    assert il.push(OUT, b"\x03" * 100) == b"\x01\x03" * 60
    assert il.emitted_samples == 160


def test_alignment_follows_the_audio_clock_not_arrival_order() -> None:
    il = Interleaver()
    out = il.push(IN, b"a" * 50) + il.push(IN, b"b" * 50) + il.push(OUT, b"x" * 100)
    left, right = channels(out)
    assert left == b"a" * 50 + b"b" * 50
    assert right == b"x" * 100


def test_lagging_track_is_padded_beyond_max_skew() -> None:
    il = Interleaver(max_skew_ms=200)  # 1600 bytes
    out = il.push(IN, b"\x11" * 2000)
    left, right = channels(out)
    assert left == b"\x11" * 400  # the leader is held back by exactly 200 ms
    assert right == b"\xff" * 400
    assert il.padded_bytes == {IN: 0, OUT: 400}
    # outbound later arrives "from time 0" (the Twilio layer fills its gap): padded time is dropped
    out = il.push(OUT, b"\x22" * 1000)
    assert il.late_dropped_bytes == 400
    left, right = channels(out)
    assert left == b"\x11" * 600 and right == b"\x22" * 600


def test_within_skew_nothing_is_padded() -> None:
    il = Interleaver(max_skew_ms=200)
    assert il.push(IN, b"\x11" * 1600) == b""
    assert il.padded_bytes == {IN: 0, OUT: 0}


def test_flush_pads_the_shorter_track() -> None:
    il = Interleaver()
    il.push(IN, b"\x01" * 300)
    il.push(OUT, b"\x02" * 100)
    left, right = channels(il.flush())
    assert left == b"\x01" * 200 and right == b"\xff" * 200
    assert il.emitted_samples == 300
    assert il.flush() == b""


def test_unknown_track_and_negative_skew_are_rejected() -> None:
    with pytest.raises(ValueError):
        Interleaver(max_skew_ms=-1)
    with pytest.raises(ValueError):
        Interleaver().push("sideways", b"x")  # type: ignore[arg-type]


pushes = st.lists(st.tuples(st.sampled_from([IN, OUT]), st.integers(0, 700)), max_size=40)


def run(ops: list[tuple[Track, int]], skew: int) -> tuple[Interleaver, bytes, dict[Track, bytes]]:
    """Feed deterministic non-silent content; byte ``i`` of a track is ``1 + i % 250``."""
    il = Interleaver(max_skew_ms=skew)
    fed: dict[Track, bytearray] = {IN: bytearray(), OUT: bytearray()}
    out = bytearray()
    for track, n in ops:
        start = len(fed[track])
        chunk = bytes(1 + (start + i) % 250 for i in range(n))
        fed[track] += chunk
        out += il.push(track, chunk)
    out += il.flush()
    return il, bytes(out), {t: bytes(b) for t, b in fed.items()}


@settings(max_examples=200, deadline=None)
@given(pushes, st.integers(0, 100))
def test_properties(ops: list[tuple[Track, int]], skew: int) -> None:
    il, out, fed = run(ops, skew)
    assert len(out) % 2 == 0
    assert len(out) // 2 == il.emitted_samples == max(len(fed[IN]), len(fed[OUT]))
    real_total = 0
    for track, chan in zip((IN, OUT), channels(out), strict=True):
        # every output byte is either the track's byte at that time or padding silence
        for i, b in enumerate(chan):
            assert b == 0xFF or (i < len(fed[track]) and b == fed[track][i])
        real = sum(1 for b in chan if b != 0xFF)
        real_total += real
        assert chan.count(0xFF) == il.padded_bytes[track]
    # a fed byte either reached the output or was counted as late
    assert real_total + il.late_dropped_bytes == len(fed[IN]) + len(fed[OUT])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 400), max_size=30))
def test_lockstep_tracks_pass_through_unchanged(sizes: list[int]) -> None:
    ops = [(track, n) for n in sizes for track in (IN, OUT)]
    il, out, fed = run(ops, skew=200)  # each track leads by < 200 ms at any time
    left, right = channels(out)
    assert left == fed[IN] and right == fed[OUT]
    assert il.padded_bytes == {IN: 0, OUT: 0} and il.late_dropped_bytes == 0


@settings(max_examples=100, deadline=None)
@given(pushes)
def test_skew_bound_holds_after_every_push(ops: list[tuple[Track, int]]) -> None:
    il = Interleaver(max_skew_ms=20)
    for track, n in ops:
        il.push(track, b"\x01" * n)
        for t in (IN, OUT):
            # nothing is held back more than max_skew beyond what was emitted
            assert il.received(t) - il.emitted_samples <= il.max_skew_bytes
