"""Voice activity per 20 ms frame of 8 kHz audio: WebRTC VAD plus a level floor.

webrtcvad on the 8 kHz frames costs ~0.03 ms per frame, so it runs on the event loop; Silero gave
the same finals at ~100× the cost per frame (engines.md §5.1).
"""

from __future__ import annotations

import numpy as np
import webrtcvad

FRAME_SAMPLES = 160  # 20 ms at 8 kHz
# Below this RMS (dBFS) a frame is silence whatever the VAD says: μ-law idle noise and line hum.
_FLOOR_DBFS = -55.0


def level_dbfs(frame: np.ndarray) -> float:
    """RMS level of int16 ``frame`` in dBFS."""
    rms = float(np.sqrt(np.mean(np.square(frame.astype(np.float32))))) / 32768.0
    return 20.0 * np.log10(max(rms, 1e-7))


class FrameVad:
    """Speech / non-speech for 20 ms int16 frames at 8 kHz."""

    def __init__(self, mode: int = 2) -> None:
        self._vad = webrtcvad.Vad(mode)

    def __call__(self, frame: np.ndarray) -> tuple[bool, float]:
        level = level_dbfs(frame)
        return level > _FLOOR_DBFS and self._vad.is_speech(frame.tobytes(), 8000), level
