"""The load generator's accounting is honest: a run with known drops, duplicates and reorders reports
exactly those (bench/load.py, bench/loadgen/)."""

from __future__ import annotations

import asyncio
import binascii
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from callscribe.fakes.gladia import FakeGladia, MarkerLog, decode_marker, encode_marker

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from loadgen.accounting import RECV_DTYPE, SENT_DTYPE, account, parse_marker_dump
from loadgen.caller import CallSpec, Generator


def _sent(frames: list[tuple[int, int, int, float]]) -> np.ndarray:
    return np.array(frames, dtype=SENT_DTYPE)


def _recv(rows: list[tuple[float, int, int, int, int]]) -> np.ndarray:
    return np.array(rows, dtype=RECV_DTYPE)


def test_accounting_counts_exactly_what_was_done() -> None:
    sent = _sent([(c, t, k, 10.0 + k * 0.02) for c in (1, 2) for t in (0, 1) for k in range(100)])
    dropped = {(1, 0, 5), (2, 1, 99), (2, 0, 0)}
    rows = []
    chunk = 0
    for c, t, k, ts in sent.tolist():
        if (c, t, k) in dropped:
            continue
        rows.append((ts + 0.003, c, t, k, chunk))
        chunk += 1
    rows.append((rows[10][0] + 0.5, *rows[10][1:4], chunk + 1))  # one duplicate, arriving late
    # swap the arrival order of frames 40 and 41 of call 1 track 1: one reordered frame
    i40 = next(i for i, r in enumerate(rows) if r[1:4] == (1, 1, 40))
    i41 = next(i for i, r in enumerate(rows) if r[1:4] == (1, 1, 41))
    rows[i40], rows[i41] = (rows[i41][0], *rows[i40][1:]), (rows[i40][0], *rows[i41][1:])
    acc, _, _ = account(sent, _recv(rows))
    assert acc.sent == 400
    assert acc.lost == 3
    assert set(acc.lost_frames) == dropped
    assert acc.duplicated == 1
    assert acc.reordered == 1
    assert acc.received == 397
    assert acc.unexpected == 0
    assert abs(acc.latency["p50"] - 3.0) < 0.01


def test_cutoff_defers_judgement_of_recent_frames() -> None:
    sent = _sent([(1, 0, k, float(k)) for k in range(10)])
    recv = _recv([(k + 0.01, 1, 0, k, k) for k in range(10) if k not in (3, 8)] + [(20.0, 9, 0, 0, 99)])
    acc, pending, unmatched = account(sent, recv, cutoff=7.5)
    assert acc.lost == 1 and acc.lost_frames == [(1, 0, 3)]
    assert acc.pending == 1 and pending["seq"].tolist() == [8]
    assert len(unmatched) == 1  # a frame nobody reported sending yet is carried, not judged
    # next round: frame 8 arrives late and is received, not lost
    acc2, pending2, _ = account(pending, _recv([(30.0, 1, 0, 8, 100)]))
    assert acc2.lost == 0 and acc2.received == 1 and len(pending2) == 0


def test_marker_log_finds_markers_across_interleaving_and_message_cuts() -> None:
    class Session:
        def __init__(self) -> None:
            self.channels = 2
            self.carry: list[bytes] = []
            self.scan_offset = 0

    def frame(track: int, k: int) -> bytes:
        return encode_marker(7, track, k) + b"\xff" * 150

    inbound = b"".join(frame(0, k) for k in range(5))
    outbound = b"".join(frame(1, k) for k in range(5))
    stream = bytearray(len(inbound) * 2)
    stream[0::2], stream[1::2] = inbound, outbound
    log = MarkerLog()
    session = Session()
    for start in range(0, len(stream), 333):  # odd cuts: markers and sample pairs split across messages
        log.scan(session, bytes(stream[start : start + 333]), float(start))  # type: ignore[arg-type]
    cols = MarkerLog.load(log.dump())
    got = sorted(zip(cols["call"], cols["track"], cols["seq"], strict=True))
    assert got == sorted((7, t, k) for t in (0, 1) for k in range(5))
    assert decode_marker(b"\xa7\x3c" + b"\x00" * 8) is None  # a magic without a valid check byte


async def test_fake_run_with_known_drops_reports_exactly_those() -> None:
    """Callers → a deliberately lossy relay → FakeGladia(record_markers): the report must match."""
    drop = {(0, 0, 3), (0, 1, 20), (1, 0, 30)}
    duplicate = (1, 1, 10)
    hold = (0, 0, 40)  # sent after the next frame of its track: one reordered

    async with (
        FakeGladia(max_sessions=10, keep_audio=False, record_markers=True) as fake,
        httpx.AsyncClient() as http,
    ):
        if True:  # keeps the relay's indentation readable

            async def relay(twilio) -> None:
                gladia = None
                held: bytes | None = None
                async for message in twilio:
                    msg = orjson.loads(message)
                    if msg["event"] == "start":
                        body = {"encoding": "wav/ulaw", "bit_depth": 8, "sample_rate": 8000, "channels": 1}
                        resp = await http.post(
                            f"{fake.url}/v2/live", json=body, headers={"x-gladia-key": fake.api_key}
                        )
                        gladia = await connect(resp.json()["url"])
                    elif msg["event"] == "media" and gladia is not None:
                        audio = binascii.a2b_base64(msg["media"]["payload"])
                        key = decode_marker(audio)
                        if key in drop:
                            continue
                        if key == hold:
                            held = audio
                            continue
                        await gladia.send(audio)
                        if key == duplicate:
                            await gladia.send(audio)
                        if held is not None and key is not None and key[1] == hold[1]:
                            await gladia.send(held)
                            held = None
                    elif msg["event"] == "stop":
                        break
                if gladia is not None:
                    await asyncio.sleep(0.1)  # let the acks come back before hanging up
                    await gladia.close()

            async with serve(relay, "127.0.0.1", 0) as server:
                port = server.sockets[0].getsockname()[1]
                start = time.monotonic() + 0.05
                specs = [CallSpec(call, 2, start + 0.01 * call, duration=1.0) for call in (0, 1)]
                gen = Generator("127.0.0.1", port, "/media", specs)
                await gen.run()
                await asyncio.sleep(0.5)
                log = gen.log.take()
            raw = (await http.get(f"{fake.url}/fake/markers")).content

    sent = np.empty(len(log["t"]) // 8, SENT_DTYPE)
    sent["call"] = np.frombuffer(log["call"], "<u2")
    sent["track"] = np.frombuffer(log["track"], "u1")
    sent["seq"] = np.frombuffer(log["seq"], "<u4")
    sent["t"] = np.frombuffer(log["t"], "<f8")
    assert len(sent) == 2 * 2 * 50
    acc, _, _ = account(sent, parse_marker_dump(raw))
    assert [c.error for c in gen.calls] == [None, None]
    assert acc.lost == len(drop)
    assert set(acc.lost_frames) == drop
    assert acc.duplicated == 1
    assert acc.reordered == 1
    assert acc.unexpected == 0
    assert acc.received == len(sent) - len(drop)
    assert acc.latency["max"] < 1000
