"""callscribe: live transcription for phone calls."""

__version__ = "0.1.0"
