"""Sample-rate conversion with soxr (a real band-limited resampler, not decimation)."""

from __future__ import annotations

import numpy as np
import soxr


def resample(samples: np.ndarray, src_rate: int, dst_rate: int, quality: str = "HQ") -> np.ndarray:
    """float32 mono ``samples`` at ``src_rate`` → float32 at ``dst_rate``."""
    samples = np.asarray(samples, dtype=np.float32)
    if src_rate == dst_rate or samples.size == 0:
        return samples
    return soxr.resample(samples, src_rate, dst_rate, quality=quality).astype(np.float32, copy=False)
