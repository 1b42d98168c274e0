"""Frame accounting for the load generator: what the callers sent vs. what the fake engine received.

Pure functions over numpy columns, no I/O, so ``tests/test_load_accounting.py`` can check them on
runs with known drops, duplicates and reorders.

A frame is identified by ``(call, track, seq)``: the marker the caller wrote into the first bytes of
its μ-law payload (``callscribe.fakes.gladia.encode_marker``). The caller logs when it wrote each
frame to its socket (``t`` on ``CLOCK_MONOTONIC``, which every process on the machine shares); the
fake engine logs when each marker arrived and in which received message ("chunk").

- **lost**: sent, never received (frames sent after ``cutoff`` are not judged yet: ``pending``);
- **duplicated**: extra arrivals of a frame already received;
- **reordered**: first arrivals whose seq is lower than one already received on the same track;
- **latency**: first arrival − send, per frame; **newest-in-chunk latency**: per received message,
  arrival − send time of the newest frame it carries (what coalescing is judged by);
- **unexpected**: arrivals of frames nobody (yet) reported sending.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SENT_DTYPE = np.dtype([("call", "<u2"), ("track", "u1"), ("seq", "<u4"), ("t", "<f8")])
RECV_DTYPE = np.dtype([("t", "<f8"), ("call", "<u2"), ("track", "u1"), ("seq", "<u4"), ("chunk", "<u8")])


def frame_key(call: np.ndarray, track: np.ndarray, seq: np.ndarray) -> np.ndarray:
    return (
        (call.astype(np.uint64) << np.uint64(40))
        | (track.astype(np.uint64) << np.uint64(32))
        | seq.astype(np.uint64)
    )


def recv_from_columns(cols: dict[str, np.ndarray], chunk_base: int = 0) -> np.ndarray:
    """A RECV_DTYPE array from ``MarkerLog`` columns (``chunk_base`` keeps chunk numbers unique
    across several dumps of one log)."""
    out = np.empty(len(cols["t"]), RECV_DTYPE)
    for name in ("t", "call", "track", "seq"):
        out[name] = cols[name]
    out["chunk"] = np.asarray(cols["chunk"], dtype=np.uint64) + np.uint64(chunk_base)
    return out


def parse_marker_dump(raw: bytes, chunk_base: int = 0) -> np.ndarray:
    """``GET /fake/markers`` bytes (``MarkerLog.dump``) → RECV_DTYPE array."""
    (count,) = np.frombuffer(raw[:4], "<u4")
    count = int(count)
    offset = 4
    cols: dict[str, np.ndarray] = {}
    for name, dt in (("t", "<f8"), ("call", "<u2"), ("track", "u1"), ("seq", "<u4"), ("chunk", "<u4")):
        size = np.dtype(dt).itemsize * count
        cols[name] = np.frombuffer(raw[offset : offset + size], dt)
        offset += size
    return recv_from_columns(cols, chunk_base)


def percentiles(values: np.ndarray) -> dict[str, float | None]:
    """p50/p95/p99/max in milliseconds (None when empty)."""
    if len(values) == 0:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    ms = np.asarray(values, dtype=np.float64) * 1000.0
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"n": len(ms), "p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(ms.max())}


@dataclass
class Accounting:
    sent: int = 0
    received: int = 0  # distinct frames received
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    unexpected: int = 0
    pending: int = 0  # sent after the cutoff and not received yet: judged next round
    latency: dict[str, Any] = field(default_factory=dict)
    latency_newest: dict[str, Any] = field(default_factory=dict)
    lost_frames: list[tuple[int, int, int]] = field(default_factory=list)  # first few (call, track, seq)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "received": self.received,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "reordered": self.reordered,
            "unexpected": self.unexpected,
            "pending": self.pending,
            "latency_ms": self.latency,
            "latency_newest_in_chunk_ms": self.latency_newest,
            "lost_examples": self.lost_frames[:20],
        }


def account(
    sent: np.ndarray,
    recv: np.ndarray,
    *,
    cutoff: float = float("inf"),
    window: tuple[float, float] | None = None,
    keep_lost: int = 20,
) -> tuple[Accounting, np.ndarray, np.ndarray]:
    """Judge ``recv`` against ``sent``.

    ``cutoff``: sent frames with ``t >= cutoff`` that have not arrived are ``pending`` (returned for
    the next round, as are arrivals of frames not in ``sent``) instead of ``lost``/``unexpected``.
    ``window``: latency only for frames sent within ``[start, end)`` (steady state; loss is judged on
    every frame). Returns ``(accounting, sent_pending, recv_unmatched)``.
    """
    acc = Accounting()
    skey = frame_key(sent["call"], sent["track"], sent["seq"])
    rkey = frame_key(recv["call"], recv["track"], recv["seq"])
    if len(np.unique(skey)) != len(skey):
        raise ValueError("the same frame was reported sent twice: marker keys must be unique")

    # arrivals in arrival order (the log is appended in arrival order; a stable sort keeps it)
    order = np.argsort(recv["t"], kind="stable")
    recv = recv[order]
    rkey = rkey[order]
    uniq, first_idx, counts = np.unique(rkey, return_index=True, return_counts=True)

    known = np.isin(uniq, skey)
    # arrivals of frames not (yet) reported sent: carried to the next round when a cutoff is in use
    unmatched_mask = ~np.isin(rkey, skey)
    recv_unmatched = recv[unmatched_mask]
    if cutoff == float("inf"):
        acc.unexpected = len(recv_unmatched)
        recv_unmatched = recv_unmatched[:0]

    acc.duplicated = int((counts[known] - 1).sum())
    acc.received = int(known.sum())

    got = np.isin(skey, uniq)
    judged = sent["t"] < cutoff
    lost_mask = ~got & judged
    acc.lost = int(lost_mask.sum())
    acc.sent = int(judged.sum() + (got & ~judged).sum())
    pending_mask = ~got & ~judged
    acc.pending = int(pending_mask.sum())
    lost_rows = sent[lost_mask][:keep_lost]
    acc.lost_frames = [(int(r["call"]), int(r["track"]), int(r["seq"])) for r in lost_rows]

    # latency of first arrivals
    first = recv[np.sort(first_idx[known])]  # first arrivals of known frames, in arrival order
    fkey = frame_key(first["call"], first["track"], first["seq"])
    s_sorted = np.argsort(skey)
    pos = s_sorted[np.searchsorted(skey, fkey, sorter=s_sorted)]
    t_sent = sent["t"][pos]
    lat = first["t"] - t_sent
    in_window = np.ones(len(first), bool)
    if window is not None:
        in_window = (t_sent >= window[0]) & (t_sent < window[1])
    acc.latency = percentiles(lat[in_window])

    # newest frame in each received message: arrival − the latest send time among its frames
    if len(first):
        chunks = first["chunk"]
        corder = np.lexsort((t_sent, chunks))
        c_sorted = chunks[corder]
        last_of_chunk = np.r_[c_sorted[1:] != c_sorted[:-1], True]
        newest_t_sent = t_sent[corder][last_of_chunk]
        newest_arrival = first["t"][corder][last_of_chunk]
        newest_win = np.ones(len(newest_t_sent), bool)
        if window is not None:
            newest_win = (newest_t_sent >= window[0]) & (newest_t_sent < window[1])
        acc.latency_newest = percentiles((newest_arrival - newest_t_sent)[newest_win])
    else:
        acc.latency_newest = percentiles(np.array([]))

    # reordering: per (call, track), first arrivals whose seq is below the highest seq seen before
    if len(first):
        stream = (first["call"].astype(np.int64) << 8) | first["track"].astype(np.int64)
        sorder = np.lexsort((np.arange(len(first)), stream))  # by stream, then arrival order
        st = stream[sorder]
        sq = first["seq"][sorder].astype(np.int64)
        combined = (st << 33) | sq  # streams ascending, so a running max never leaks across streams
        prev_max = np.maximum.accumulate(combined)
        prev_max = np.r_[np.int64(-1), prev_max[:-1]]
        acc.reordered = int((combined < prev_max).sum())

    return acc, sent[pending_mask], recv_unmatched
