"""Card numbers and personal data kept out of log lines too (defence in depth: transcripts are
redacted before any sink, but a log line may quote text, e.g. an engine's dropped non-speech)."""

from __future__ import annotations

import logging
import re

from callscribe.intelligence.redaction import redact_text

# Cheap gate: only lines that could hold a number, an e-mail or a spoken one are scanned.
_MAYBE = re.compile(r"\d{3}|@|\b(?:at|dot|oh|zero|one|two|three|four|five|six|seven|eight|nine)\b", re.I)


class RedactPII(logging.Filter):
    """Masks card numbers, SSNs, phone numbers and e-mails in every record's message."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format is the logging module's to report
            return True
        if _MAYBE.search(message):
            masked, counts = redact_text(message)
            if counts:
                record.msg, record.args = masked, None
        return True
