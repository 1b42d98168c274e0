"""Bearer tokens for everything that is not Twilio-facing: the REST API, live feeds, metrics.

Two kinds of credential, both sent as ``Authorization: Bearer …``:

* static API keys (``API_KEYS``), each with a scope, compared in constant time;
* JWTs: HS256 with ``JWT_SECRET``, or RS256/ES256 checked against a JWKS (``JWT_JWKS_URL``,
  fetched with httpx, cached, refetched when an unknown ``kid`` shows up); ``exp`` is required,
  ``aud``/``iss`` are checked when configured (``aud`` is mandatory with a JWKS: a shared identity
  provider signs tokens for other services too).

Scopes: ``read`` (GETs, feeds, the page's data) and ``admin`` (anything that changes state), and
``admin`` implies ``read``. Browsers cannot set headers on WebSockets or EventSource, so there the
token may also come as ``?token=`` or as the ``Sec-WebSocket-Protocol`` pair ``bearer, <token>``.

With no key or secret configured, auth is off and :func:`install_auth` says so loudly. Secrets are
never logged: keys are known by their names, tokens by nothing.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NoReturn, Protocol

import httpx
import jwt
from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from starlette.exceptions import WebSocketException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import HTTPConnection

from callscribe.server.signature import parse_trusted

log = logging.getLogger(__name__)

Scope = Literal["read", "admin"]
IMPLIED: dict[str, frozenset[str]] = {"read": frozenset({"read"}), "admin": frozenset({"read", "admin"})}
REALM = "callscribe"
WS_PROTOCOL = "bearer"  # Sec-WebSocket-Protocol: bearer, <token>
_MAX_TOKEN = 8192
_HMAC_ALGS = {"HS256", "HS384", "HS512"}
_ASYM_ALGS = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
CLOSE_POLICY_VIOLATION = 1008


def _split(value: Any) -> Any:
    """Comma-separated or JSON list from the environment; lists pass through."""
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            return json.loads(value)
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class ApiKey(BaseModel):
    """One static API key. ``name`` is what logs show; ``key`` never is."""

    model_config = ConfigDict(hide_input_in_errors=True)

    key: SecretStr = Field(min_length=16)
    scope: Scope = "read"
    name: str = "unnamed"


class SecuritySettings(BaseSettings):
    """Auth, CORS and proxy settings; a mixin for :class:`callscribe.config.Settings`."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        hide_input_in_errors=True,  # a too-short JWT_SECRET must not end up in an error message
    )

    auth_mode: Literal["auto", "off", "token"] = Field(
        "auto", description="auto: on when API_KEYS or a JWT source is set; token: always on; off."
    )
    api_keys: list[ApiKey] = Field(
        default_factory=list,
        description='JSON list of {"key": "...", "scope": "read"|"admin", "name": "..."}',
    )
    jwt_secret: SecretStr | None = Field(None, min_length=32, description="HS256 shared secret (≥ 32 chars).")
    jwt_jwks_url: str | None = Field(None, pattern=r"^https?://", description="JWKS of RS256/ES256 issuers.")
    jwt_audience: str | None = Field(None, description="Required 'aud' (mandatory with JWT_JWKS_URL).")
    jwt_issuer: str | None = Field(None, description="Required 'iss', when set.")
    jwt_algorithms: Annotated[list[str] | None, NoDecode] = Field(
        None, description="Accepted algs; default HS256 with a secret, RS256+ES256 with a JWKS."
    )
    jwt_leeway: float = Field(30, ge=0, le=300, description="Clock skew allowed on exp/nbf/iat (s).")
    jwt_scope_claim: str = Field(
        "scope", description="Claim holding scopes ('scope' string or list; 'scp' too)."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed by CORS (comma list or JSON; '*' = any); empty = off.",
    )
    metrics_require_auth: bool = Field(True, description="/metrics needs a read token when auth is on.")
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Peers (IPs/CIDRs, or '*') whose X-Forwarded-Proto/-Host rebuild the signed URL.",
    )

    @field_validator("jwt_algorithms", "cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        parse_trusted(value)  # raises ValueError naming the bad entry
        return value

    @model_validator(mode="after")
    def _check_auth(self) -> SecuritySettings:
        algs = set(self.jwt_algorithms or ())
        if unknown := algs - _HMAC_ALGS - _ASYM_ALGS:
            raise ValueError(f"JWT_ALGORITHMS: unsupported {sorted(unknown)}")
        if algs & _HMAC_ALGS and not self.jwt_secret:
            raise ValueError("JWT_ALGORITHMS names an HS* algorithm but JWT_SECRET is not set")
        if algs & _ASYM_ALGS and not self.jwt_jwks_url:
            raise ValueError("JWT_ALGORITHMS names a public-key algorithm but JWT_JWKS_URL is not set")
        if self.jwt_jwks_url and not self.jwt_audience:
            raise ValueError("JWT_JWKS_URL needs JWT_AUDIENCE (else tokens for other services pass)")
        if self.auth_mode == "token" and not (self.api_keys or self.jwt_secret or self.jwt_jwks_url):
            raise ValueError("AUTH_MODE=token needs API_KEYS, JWT_SECRET or JWT_JWKS_URL")
        return self


class AuthConfig(Protocol):
    """The settings :class:`Authenticator` reads (``Settings`` once it includes the mixin)."""

    auth_mode: str
    api_keys: list[ApiKey]
    jwt_secret: SecretStr | None
    jwt_jwks_url: str | None
    jwt_audience: str | None
    jwt_issuer: str | None
    jwt_algorithms: list[str] | None
    jwt_leeway: float
    jwt_scope_claim: str


@dataclass(frozen=True)
class Principal:
    """Who made the request: a key name or a JWT ``sub``, and what they may do."""

    name: str
    scopes: frozenset[str]
    kind: Literal["api_key", "jwt", "anonymous"]

    def may(self, scope: str) -> bool:
        return scope in self.scopes


ANONYMOUS = Principal("anonymous", IMPLIED["admin"], "anonymous")


class AuthError(Exception):
    """A refusal: HTTP status, RFC 6750 error code (empty when no credentials) and a safe description."""

    def __init__(self, status: int, error: str, description: str, scope: str | None = None) -> None:
        super().__init__(description)
        self.status, self.error, self.description, self.scope = status, error, description, scope

    def www_authenticate(self) -> str:
        parts = [f'Bearer realm="{REALM}"']
        if self.error:
            parts.append(f'error="{self.error}", error_description="{self.description}"')
        if self.scope:
            parts.append(f'scope="{self.scope}"')
        return ", ".join(parts)


class JwksCache:
    """A JWKS fetched with httpx: refreshed after ``ttl``, or early (rate-limited) on an unknown ``kid``."""

    def __init__(
        self,
        url: str,
        *,
        ttl: float = 300,
        min_refresh: float = 30,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url, self.ttl, self.min_refresh, self.transport = url, ttl, min_refresh, transport
        self._keys: dict[str | None, _Jwk] = {}
        self._fetched: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    def _age(self) -> float:
        return float("inf") if self._fetched is None else time.monotonic() - self._fetched

    async def key(self, kid: str | None, alg: str) -> Any:
        """The verification key for a token's ``kid`` and ``alg``, or :class:`AuthError`."""
        if self._age() > self.ttl or (kid not in self._keys and self._age() > self.min_refresh):
            await self._refresh()
        found = self._keys.get(kid)
        if found is None and kid is None and len(self._keys) == 1:  # a lone key needs no kid
            found = next(iter(self._keys.values()))
        if found is None:
            raise AuthError(401, "invalid_token", "unknown signing key")
        if not found.fits(alg):
            raise AuthError(401, "invalid_token", "token alg does not fit its key")
        return found.jwk.key

    async def _refresh(self) -> None:
        async with self._lock:
            if self._age() <= self.min_refresh:  # another waiter just refreshed
                return
            try:
                async with httpx.AsyncClient(timeout=5, transport=self.transport) as client:
                    response = await client.get(self.url, headers={"accept": "application/json"})
                    response.raise_for_status()
                    data = response.json()
                self._keys = _parse_jwks(data)
                self.fetches += 1
            except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
                log.warning("JWKS fetch from %s failed: %s", self.url, type(exc).__name__)
                if not self._keys:
                    raise AuthError(503, "temporarily_unavailable", "signing keys unavailable") from None
            finally:
                self._fetched = time.monotonic()  # also after a failure: no hammering a sick IdP


@dataclass(frozen=True)
class _Jwk:
    jwk: jwt.PyJWK
    kty: str
    alg: str | None  # as published; None = any algorithm of the key's family

    def fits(self, alg: str) -> bool:
        if self.alg is not None:
            return alg == self.alg
        family = {"RSA": ("RS", "PS"), "EC": ("ES",), "OKP": ("EdDSA",)}.get(self.kty, ())
        return alg.startswith(family) if family else False


def _parse_jwks(data: Any) -> dict[str | None, _Jwk]:
    keys: dict[str | None, _Jwk] = {}
    for entry in data.get("keys", []) if isinstance(data, dict) else []:
        # encryption keys and symmetric keys have no business in a public signing JWKS
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or entry.get("kty") == "oct":
            continue
        try:
            keys[entry.get("kid")] = _Jwk(jwt.PyJWK(entry), str(entry.get("kty")), entry.get("alg"))
        except jwt.PyJWTError:
            continue
    if not keys:
        raise ValueError("no usable signing keys")
    return keys


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


class Authenticator:
    """Turns a presented token into a :class:`Principal`, or raises :class:`AuthError`."""

    def __init__(self, config: AuthConfig, *, jwks_transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.configured = bool(config.api_keys or config.jwt_secret or config.jwt_jwks_url)
        self.enabled = config.auth_mode == "token" or (config.auth_mode == "auto" and self.configured)
        # digests, so comparisons take the same time whatever the key lengths
        self._keys = [(_digest(k.key.get_secret_value()), k) for k in config.api_keys]
        self._secret = config.jwt_secret.get_secret_value() if config.jwt_secret else None
        self._jwks = JwksCache(config.jwt_jwks_url, transport=jwks_transport) if config.jwt_jwks_url else None
        default = (["HS256"] if self._secret else []) + (["RS256", "ES256"] if self._jwks else [])
        self.algorithms = set(config.jwt_algorithms or default)
        self.audience, self.issuer = config.jwt_audience, config.jwt_issuer
        self.leeway, self.scope_claim = config.jwt_leeway, config.jwt_scope_claim

    def describe(self) -> str:
        """One log-safe line: what is accepted (names, never values)."""
        if not self.enabled:
            return "auth OFF"
        kinds = [f"API keys {[k.name for _, k in self._keys]}"] if self._keys else []
        if self._secret or self._jwks:
            kinds.append(f"JWT {sorted(self.algorithms)} aud={self.audience} iss={self.issuer}")
        return "auth ON: " + ("; ".join(kinds) or "nothing accepted")

    async def authenticate(self, token: str | None) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        if not token:
            raise AuthError(401, "", "credentials required")
        if len(token) > _MAX_TOKEN:
            raise AuthError(401, "invalid_token", "token too long")
        presented = _digest(token)
        match = None
        for digest, key in self._keys:  # no early exit: timing says nothing about which key
            if hmac.compare_digest(digest, presented):
                match = key
        if match is not None:
            return Principal(match.name, IMPLIED[match.scope], "api_key")
        if token.count(".") == 2 and (self._secret or self._jwks):
            return await self._jwt(token)
        raise AuthError(401, "invalid_token", "unknown token")

    async def _jwt(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError(401, "invalid_token", "malformed token") from None
        alg = header.get("alg")
        if alg not in self.algorithms:  # also stops "none" and HS/RS confusion
            raise AuthError(401, "invalid_token", "algorithm not accepted")
        if alg in _HMAC_ALGS:
            key: Any = self._secret
        else:
            assert self._jwks is not None  # settings validation: asymmetric algs need a JWKS
            key = await self._jwks.key(header.get("kid"), alg)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(401, "invalid_token", "token expired") from None
        except jwt.InvalidAudienceError:
            raise AuthError(401, "invalid_token", "wrong audience") from None
        except jwt.InvalidIssuerError:
            raise AuthError(401, "invalid_token", "wrong issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(401, "invalid_token", f"missing claim {exc.claim}") from None
        except jwt.PyJWTError:
            raise AuthError(401, "invalid_token", "invalid token") from None
        return Principal(str(claims.get("sub", "jwt")), self._scopes(claims), "jwt")

    def _scopes(self, claims: dict[str, Any]) -> frozenset[str]:
        granted: set[str] = set()
        for claim in dict.fromkeys((self.scope_claim, "scp")):
            raw = claims.get(claim)
            values = raw.split() if isinstance(raw, str) else raw if isinstance(raw, list) else []
            for value in values:
                name = re.sub(r"^callscribe[:.]", "", str(value))
                granted |= IMPLIED.get(name, frozenset())
        return frozenset(granted)


# --- token extraction -------------------------------------------------------------------------

_BEARER = re.compile(r"^\s*Bearer\s+(\S+)\s*$", re.IGNORECASE)


def _offered_protocols(conn: HTTPConnection) -> list[str]:
    raw = conn.headers.get("sec-websocket-protocol", "")
    return [p.strip() for p in raw.split(",") if p.strip()]


def token_from(conn: HTTPConnection) -> str | None:
    """The bearer token: header first; then, where browsers cannot set headers, query or subprotocol."""
    if match := _BEARER.match(conn.headers.get("authorization", "")):
        return match.group(1)
    is_ws = conn.scope["type"] == "websocket"
    is_sse = "text/event-stream" in conn.headers.get("accept", "")
    # EventSource sends Accept: text/event-stream and cannot add headers; plain GETs keep tokens out of URLs
    if (is_ws or is_sse) and (token := conn.query_params.get("token")):
        return token
    if is_ws:
        offered = _offered_protocols(conn)
        for i, proto in enumerate(offered[:-1]):
            if proto.lower() == WS_PROTOCOL:
                return offered[i + 1]
    return None


def accept_subprotocol(conn: HTTPConnection) -> str | None:
    """The subprotocol to pass to ``ws.accept()``: ``bearer`` when the client offered the pair.

    Browsers drop a connection whose offered subprotocols the server ignores; never echo the token.
    """
    offered = [p.lower() for p in _offered_protocols(conn)]
    return WS_PROTOCOL if WS_PROTOCOL in offered[:-1] else None


# --- FastAPI wiring ---------------------------------------------------------------------------


@functools.cache  # one callable per scope, so FastAPI runs it once per request however often it is listed
def require(scope: Scope) -> Any:
    """A dependency for HTTP and WebSocket routes: the :class:`Principal`, or 401/403.

    ``app.include_router(router, dependencies=[Depends(require("read"))])``. On a WebSocket the
    refusal is an HTTP 401/403 denial response where the server supports it (uvicorn, TestClient),
    else a close with 1008 before accept.
    """
    if scope not in IMPLIED:
        raise ValueError(f"unknown scope {scope!r}")

    async def dependency(conn: HTTPConnection) -> Principal:
        auth: Authenticator | None = getattr(conn.app.state, "authenticator", None)
        if auth is None:  # fail closed: a route guarded by require() on an app without install_auth
            raise RuntimeError("install_auth(app, settings) was not called")
        try:
            principal = await auth.authenticate(token_from(conn))
            if not principal.may(scope):
                raise AuthError(403, "insufficient_scope", f"needs scope {scope}", scope)
        except AuthError as err:
            _refuse(conn, err)
        conn.state.principal = principal
        return principal

    dependency.__name__ = f"require_{scope}"
    return dependency


# For route signatures: ``async def delete(sid: str, who: AdminPrincipal)``.
ReadPrincipal = Annotated[Principal, Depends(require("read"))]
AdminPrincipal = Annotated[Principal, Depends(require("admin"))]


def _refuse(conn: HTTPConnection, err: AuthError) -> NoReturn:
    where = conn.client.host if conn.client else "?"
    log.info("auth refused %s %s from %s: %s", conn.scope["type"], conn.url.path, where, err.description)
    headers = {"WWW-Authenticate": err.www_authenticate()}
    if err.status == 503:
        headers["Retry-After"] = "30"
    if conn.scope["type"] == "websocket" and "websocket.http.response" not in conn.scope.get(
        "extensions", {}
    ):
        raise WebSocketException(CLOSE_POLICY_VIOLATION, err.description)
    raise HTTPException(err.status, err.description, headers=headers)


def add_cors(app: FastAPI, origins: list[str]) -> None:
    """CORS for browsers on other origins; bearer tokens, not cookies, so no credentials."""
    if not origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type"],
        expose_headers=["WWW-Authenticate"],
        allow_credentials=False,
        max_age=600,
    )


def install_auth(
    app: FastAPI, settings: SecuritySettings, *, jwks_transport: httpx.AsyncBaseTransport | None = None
) -> Authenticator:
    """Build the :class:`Authenticator` into ``app.state``, add CORS, and say what is accepted."""
    auth = Authenticator(settings, jwks_transport=jwks_transport)
    app.state.authenticator = auth
    add_cors(app, settings.cors_origins)
    if auth.enabled:
        log.info("%s", auth.describe())
    elif settings.auth_mode == "off":
        log.warning("AUTH_MODE=off: the API, live feeds and metrics are open to anyone who can reach them")
    else:
        log.warning(
            "no API_KEYS, JWT_SECRET or JWT_JWKS_URL: the API, live feeds and metrics are open to "
            "anyone who can reach this server"
        )
    return auth


class RedactTokens(logging.Filter):
    """Masks ``token=…`` in log records (uvicorn's access log prints query strings)."""

    _RE = re.compile(r"(token=)[^&\s\"']+", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self._RE.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = self._RE.sub(r"\1***", record.msg)
        return True
