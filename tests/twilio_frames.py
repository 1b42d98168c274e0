"""Minimal Twilio message builders for gateway tests (the simulator has the full-featured ones)."""

from __future__ import annotations

import base64

import orjson

CALL_SID = "CA" + "a" * 32
STREAM_SID = "MZ" + "b" * 32


def connected() -> str:
    return orjson.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}).decode()


def start(tracks: tuple[str, ...] = ("inbound", "outbound"), call_sid: str = CALL_SID, **params: str) -> str:
    return orjson.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": STREAM_SID,
            "start": {
                "accountSid": "AC" + "c" * 32,
                "streamSid": STREAM_SID,
                "callSid": call_sid,
                "tracks": list(tracks),
                "customParameters": params,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    ).decode()


def media(track: str, index: int, payload: bytes, seq: int) -> str:
    return orjson.dumps(
        {
            "event": "media",
            "sequenceNumber": str(seq),
            "streamSid": STREAM_SID,
            "media": {
                "track": track,
                "chunk": str(index + 1),
                "timestamp": str(index * 20),
                "payload": base64.b64encode(payload).decode(),
            },
        }
    ).decode()


def stop(call_sid: str = CALL_SID, seq: int = 999) -> str:
    return orjson.dumps(
        {
            "event": "stop",
            "sequenceNumber": str(seq),
            "streamSid": STREAM_SID,
            "stop": {"accountSid": "AC" + "c" * 32, "callSid": call_sid},
        }
    ).decode()
