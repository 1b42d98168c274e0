"""Reading WAV files and turning them into what Twilio sends: 8 kHz mono μ-law."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from callscribe.audio import mulaw
from callscribe.audio.resample import resample

TWILIO_RATE = 8000


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A WAV file as float32 mono samples in [-1, 1] and its sample rate (8/16/24/32-bit PCM, μ-law)."""
    with wave.open(str(path), "rb") as w:
        rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        raw = w.readframes(w.getnframes())
        comp = w.getcomptype()
    if comp not in ("NONE", "ULAW"):
        raise ValueError(f"{path}: unsupported WAV compression {comp!r}")
    if comp == "ULAW":
        data = mulaw.decode_float(raw)
    elif width == 1:
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        data = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = (b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8
        data = ints.astype(np.float32) / 8388608.0
    elif width == 4:
        data = np.frombuffer(raw, dtype="<i4").astype(np.float32) / 2147483648.0
    else:
        raise ValueError(f"{path}: unsupported sample width {width}")
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1)
    return data.astype(np.float32, copy=False), rate


def wav_to_ulaw(path: str | Path) -> bytes:
    """A WAV file as 8 kHz mono μ-law bytes, resampled with soxr like a phone network would."""
    samples, rate = read_wav(path)
    return mulaw.encode(resample(samples, rate, TWILIO_RATE))


def write_wav(path: str | Path, samples: np.ndarray, rate: int) -> None:
    """Write float32 (or int16) mono samples as a 16-bit PCM WAV."""
    if samples.dtype.kind == "f":
        samples = np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
