"""Transcript renderings of a stored call (plain text, SRT, WebVTT, JSON)."""

from callscribe.transcripts.formats import FORMATS, render, srt_time, to_srt, to_text, to_vtt, vtt_time

__all__ = ["FORMATS", "render", "srt_time", "to_srt", "to_text", "to_vtt", "vtt_time"]
