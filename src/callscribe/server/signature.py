"""X-Twilio-Signature checks for the voice webhook and the Media Streams handshake.

Uses the ``twilio`` package's RequestValidator. Twilio signs the exact URL it requested: for the
WebSocket that is the ``wss://`` URL from our TwiML, which a TLS-terminating proxy turns into
``http://`` by the time we see it, so we validate against the public URL we published, and also
try the trailing-slash variant Twilio's docs mention (protocols.md §1.6).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from twilio.request_validator import RequestValidator


def candidate_urls(url: str) -> list[str]:
    """``url`` and its trailing-slash twin (the query string, if any, stays last)."""
    parts = urlsplit(url)
    path = parts.path
    other = path[:-1] if path.endswith("/") else path + "/"
    return [url, urlunsplit((parts.scheme, parts.netloc, other, parts.query, parts.fragment))]


class SignatureChecker:
    """Validates signatures when an auth token is configured; without one every request passes."""

    def __init__(self, auth_token: str | None) -> None:
        self._validator = RequestValidator(auth_token) if auth_token else None

    @property
    def enabled(self) -> bool:
        return self._validator is not None

    def valid(self, url: str, params: dict[str, str] | None, signature: str | None) -> bool:
        if self._validator is None:
            return True
        if not signature:
            return False
        return any(self._validator.validate(u, params or {}, signature) for u in candidate_urls(url))
