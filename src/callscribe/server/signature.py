"""X-Twilio-Signature checks for the voice webhook and the Media Streams handshake.

Twilio signs the exact URL it requested (protocols.md §1.6, §1.7): for the WebSocket that is the
``wss://`` URL from our TwiML, which a TLS-terminating proxy has turned into ``http://`` by the time
we see it. So the URL is rebuilt, never taken on trust: from ``PUBLIC_URL``; from
``X-Forwarded-Proto``/``X-Forwarded-Host`` only when the peer is a proxy the operator trusts; from
the request as seen only when neither applies (local development). Each candidate is also tried with
a trailing slash toggled, as Twilio's security notes advise.

The decision is a pure function of :class:`RequestFacts`, so routes stay thin and tests need no
server. Refusal reasons never contain the signature or the token: they are safe to log.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit, urlunsplit

from starlette.requests import HTTPConnection, Request
from twilio.request_validator import RequestValidator

SIGNATURE_HEADER = "x-twilio-signature"
_MAX_SIGNATURE_LEN = 128  # base64 of a SHA-1 (or SHA-256) HMAC is 28 (44) characters
_HOST_RE = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")
_PORT_RE = re.compile(r":\d+$")
_WS_SCHEME = {"https": "wss", "http": "ws", "wss": "wss", "ws": "ws"}
_HTTP_SCHEME = {"wss": "https", "ws": "http", "https": "https", "http": "http"}
_DEFAULT_PORT = {"https": "443", "wss": "443", "http": "80", "ws": "80"}
_FORM = "application/x-www-form-urlencoded"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class RequestFacts:
    """What the check needs from a request, as the ASGI server saw it."""

    method: str  # "GET" for the WebSocket handshake
    scheme: str  # http/https/ws/wss as seen by the app (the proxy's side, not Twilio's)
    host: str  # Host header
    path: str  # path as sent (percent-encoding kept)
    query: str = ""  # raw query string, without "?"
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    client_ip: str | None = None  # the TCP peer
    form: Sequence[tuple[str, str]] | None = None  # url-encoded POST fields, in order, repeats kept
    body: bytes = b""  # raw body (for JSON webhooks signed with bodySHA256)
    websocket: bool = False


@dataclass(frozen=True)
class Verdict:
    """The decision, with a log-safe reason and the URLs tried (in order)."""

    ok: bool
    reason: str
    url_tried: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.ok

    def log_text(self) -> str:
        return f"{self.reason} (tried {', '.join(self.url_tried) or 'no URL'})"


class _MultiParams(dict[str, list[str]]):
    """Repeated form names for RequestValidator, which looks for ``getlist`` (like Django's QueryDict)."""

    def getlist(self, name: str) -> list[str]:
        return self[name]


def parse_trusted(entries: Iterable[str]) -> list[Network] | None:
    """IPs/CIDRs → networks; ``None`` means every peer is trusted (``*``). Raises ValueError on junk."""
    networks: list[Network] = []
    for entry in entries:
        entry = entry.strip()
        if entry == "*":
            return None
        if entry:
            networks.append(ipaddress.ip_network(entry, strict=False))
    return networks


def is_trusted(client_ip: str | None, trusted: list[Network] | None) -> bool:
    if trusted is None:
        return True
    if not client_ip or not trusted:
        return False
    try:
        addr = ipaddress.ip_address(client_ip)
    except ValueError:  # a unix socket path, "testclient"…: not an IP we were told to trust
        return False
    return any(addr in net for net in trusted)


def toggle_slash(url: str) -> str:
    """``url`` with its path's trailing slash added or removed (the query string stays last)."""
    p = urlsplit(url)
    path = p.path[:-1] if p.path.endswith("/") else p.path + "/"
    return urlunsplit((p.scheme, p.netloc, path, p.query, ""))


def candidate_urls(url: str) -> list[str]:
    """``url`` and its trailing-slash twin."""
    return [url, toggle_slash(url)]


def _first(value: str | None) -> str:
    """First element of a comma-separated forwarded header: what the outermost proxy recorded."""
    return (value or "").split(",")[0].strip()


def _scheme(scheme: str, websocket: bool) -> str:
    scheme = scheme.lower()
    return (_WS_SCHEME if websocket else _HTTP_SCHEME).get(scheme, scheme)


def _compose(scheme: str, host: str, path: str, query: str) -> str | None:
    if not _HOST_RE.match(host):  # a Host carrying '/', '@', spaces… would reshape the URL
        return None
    return urlunsplit((scheme, host, path or "/", query, ""))


def build_candidates(facts: RequestFacts, public_url: str | None, trusted: list[Network] | None) -> list[str]:
    """The URLs Twilio may have signed for this request, most likely first, each with its slash twin."""
    found: list[str | None] = []
    if public_url:
        pub = urlsplit(public_url)
        netloc = pub.netloc.rpartition("@")[2]  # Twilio drops user:password@ before signing
        found.append(
            _compose(
                _scheme(pub.scheme, facts.websocket), netloc, pub.path.rstrip("/") + facts.path, facts.query
            )
        )
    trusted_peer = is_trusted(facts.client_ip, trusted)
    if trusted_peer:
        proto = _first(facts.headers.get("x-forwarded-proto")) or facts.scheme
        host = _first(facts.headers.get("x-forwarded-host")) or facts.host
        port = _first(facts.headers.get("x-forwarded-port"))
        scheme = _scheme(proto, facts.websocket)
        if port.isdigit() and not _PORT_RE.search(host) and port != _DEFAULT_PORT.get(scheme):
            host = f"{host}:{port}"
        found.append(_compose(scheme, host, facts.path, facts.query))
    if not public_url and not trusted_peer:  # local development: nothing better to go on
        found.append(_compose(_scheme(facts.scheme, facts.websocket), facts.host, facts.path, facts.query))
    urls: list[str] = []
    for url in found:
        if url:
            for u in candidate_urls(url):
                if u not in urls:
                    urls.append(u)
    return urls


def external_base(facts: RequestFacts, public_url: str | None, trusted: list[Network] | None) -> str:
    """The ``https://host`` base Twilio reaches us by, by the same rules as the signature check.

    For building the ``<Stream url>`` in the TwiML, so that the URL we publish is the one we check.
    """
    if public_url:
        return public_url.rstrip("/")
    url = next(iter(build_candidates(replace(facts, websocket=False), None, trusted)), None)
    if url is None:
        raise ValueError("no usable Host to build a public URL from")
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _params(facts: RequestFacts) -> tuple[Any, str | None]:
    """What RequestValidator signs besides the URL, or a refusal reason (fail closed)."""
    if facts.websocket or facts.method.upper() in {"GET", "HEAD"}:
        return {}, None
    ctype = facts.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == _FORM or facts.form is not None:
        params = _MultiParams()
        for name, value in facts.form or ():
            params.setdefault(name, []).append(value)
        return params, None
    if not facts.body:
        return {}, None
    digest = parse_qs(facts.query).get("bodySHA256")
    if not digest:
        # twilio-python would raise TypeError here (twilio-python#885); refuse instead
        return None, "non-form body without bodySHA256 in the URL"
    actual = hashlib.sha256(facts.body).hexdigest()
    if not hmac.compare_digest(actual, digest[0].lower()):
        return None, "bodySHA256 does not match the body"
    try:
        return facts.body.decode("utf-8"), None  # the validator re-checks the hash and signs no params
    except UnicodeDecodeError:
        return None, "body is not UTF-8"


class SignatureChecker:
    """Validates X-Twilio-Signature when an auth token is configured; without one every request passes.

    ``public_url`` is ``PUBLIC_URL``; ``trusted_proxies`` the peers (IPs/CIDRs, or ``*``) whose
    ``X-Forwarded-*`` headers may be used to rebuild the URL.
    """

    def __init__(
        self, auth_token: str | None, public_url: str | None = None, trusted_proxies: Iterable[str] = ()
    ) -> None:
        self._validator = RequestValidator(auth_token) if auth_token else None
        self.public_url = str(public_url).rstrip("/") if public_url else None
        self.trusted = parse_trusted(trusted_proxies)

    @property
    def enabled(self) -> bool:
        return self._validator is not None

    def external_base(self, facts: RequestFacts) -> str:
        """See :func:`external_base`."""
        return external_base(facts, self.public_url, self.trusted)

    def check(self, facts: RequestFacts) -> Verdict:
        """Accept or refuse ``facts``; the reason is safe to log."""
        if self._validator is None:
            return Verdict(True, "signature check disabled (no TWILIO_AUTH_TOKEN)")
        urls = build_candidates(facts, self.public_url, self.trusted)
        signature = facts.headers.get(SIGNATURE_HEADER, "")
        if not signature:
            return Verdict(False, "missing X-Twilio-Signature", urls)
        if len(signature) > _MAX_SIGNATURE_LEN:
            return Verdict(False, "oversized X-Twilio-Signature", urls)
        if not urls:
            return Verdict(False, "no usable URL to validate against (bad Host?)", urls)
        params, refusal = _params(facts)
        if refusal:
            return Verdict(False, refusal, urls)
        for url in urls:
            try:
                if self._validator.validate(url, params, signature):
                    return Verdict(True, f"signature valid for {url}", urls)
            except (TypeError, ValueError) as exc:  # validator quirks (twilio-python#885): fail closed
                return Verdict(False, f"validator error {type(exc).__name__}", urls)
        return Verdict(False, "X-Twilio-Signature does not match", urls)

    def check_http(
        self,
        *,
        method: str,
        scheme: str,
        host: str,
        path: str,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        client_ip: str | None = None,
        form: Sequence[tuple[str, str]] | Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> Verdict:
        """:meth:`check` for the voice webhook, from plain values (``headers`` with any case)."""
        fields = list(form.items()) if isinstance(form, Mapping) else form
        return self.check(
            RequestFacts(method, scheme, host, path, query, _lower(headers), client_ip, fields, body)
        )

    def check_websocket(
        self,
        *,
        scheme: str,
        host: str,
        path: str,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        client_ip: str | None = None,
    ) -> Verdict:
        """:meth:`check` for the Media Streams handshake (a GET with no body)."""
        return self.check(
            RequestFacts("GET", scheme, host, path, query, _lower(headers), client_ip, websocket=True)
        )

    def valid(self, url: str, params: dict[str, str] | None, signature: str | None) -> bool:
        """Legacy form: ``url`` already rebuilt by the caller. Prefer :meth:`check`."""
        if self._validator is None:
            return True
        if not signature:
            return False
        return any(self._validator.validate(u, params or {}, signature) for u in candidate_urls(url))


def _lower(headers: Mapping[str, str] | None) -> dict[str, str]:
    return {k.lower(): v for k, v in (headers or {}).items()}


def _base_facts(conn: HTTPConnection, websocket: bool) -> dict[str, Any]:
    raw_path = conn.scope.get("raw_path")
    return {
        "scheme": conn.url.scheme,
        "host": conn.headers.get("host") or conn.url.netloc,
        "path": raw_path.decode("latin-1") if raw_path else conn.url.path,
        "query": conn.scope.get("query_string", b"").decode("latin-1"),
        "headers": _lower(conn.headers),
        "client_ip": conn.client.host if conn.client else None,
        "websocket": websocket,
    }


async def request_facts(request: Request) -> RequestFacts:
    """Facts of an HTTP request; reads the body (Starlette caches it, so ``request.form()`` still works)."""
    body = await request.body() if request.method not in {"GET", "HEAD"} else b""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    form = None
    if ctype == _FORM:
        form = parse_qsl(body.decode("latin-1"), keep_blank_values=True, encoding="utf-8", errors="replace")
    return RequestFacts(method=request.method, form=form, body=body, **_base_facts(request, False))


def websocket_facts(conn: HTTPConnection) -> RequestFacts:
    """Facts of a WebSocket handshake (a GET with no body)."""
    return RequestFacts(method="GET", **_base_facts(conn, True))
