"""Security: X-Twilio-Signature on the webhook and the Media Streams handshake; bearer tokens, CORS."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import replace
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import APIRouter, Depends, FastAPI, Request, WebSocket
from fastapi.responses import PlainTextResponse, Response
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect
from twilio.request_validator import RequestValidator

from callscribe.server.auth import (
    ReadPrincipal,
    RedactTokens,
    SecuritySettings,
    accept_subprotocol,
    install_auth,
    require,
)
from callscribe.server.signature import (
    RequestFacts,
    SignatureChecker,
    build_candidates,
    parse_trusted,
    request_facts,
    websocket_facts,
)

TOKEN = "12345678901234567890123456789012"
PUBLIC = "https://stt.example.com"
SIGN = RequestValidator(TOKEN).compute_signature
PROXY = ("10.1.2.3", 40000)  # the TLS-terminating proxy, as the app sees it
STRANGER = ("203.0.113.7", 40000)

# --- X-Twilio-Signature -----------------------------------------------------------------------


def twilio_app(checker: SignatureChecker) -> FastAPI:
    """The routes as app.py should wire them: facts → verdict → 403 / close 1008."""
    app = FastAPI()

    @app.api_route("/twiml", methods=["GET", "POST"])
    async def twiml(request: Request) -> Response:
        verdict = checker.check(await request_facts(request))
        if not verdict.ok:
            return PlainTextResponse(verdict.reason, status_code=403)
        return PlainTextResponse("<Response/>")

    @app.websocket("/media")
    async def media(ws: WebSocket) -> None:
        verdict = checker.check(websocket_facts(ws))
        if not verdict.ok:
            await ws.close(code=1008)
            return
        await ws.accept()
        await ws.send_text("hello")
        await ws.close()

    return app


def client_for(checker: SignatureChecker, peer: tuple[str, int] = STRANGER) -> TestClient:
    return TestClient(twilio_app(checker), client=peer)


FORM = {"CallSid": "CA1", "From": "+15550001", "To": "+15550002", "Digits": ""}


def test_twilio_documented_vector() -> None:
    """The worked example of Twilio's security page (protocols.md §1.7)."""
    checker = SignatureChecker("12345", public_url="https://example.com")
    form = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+14158675310",
        "Digits": "1234",
        "From": "+14158675310",
        "To": "+18005551212",
    }
    verdict = checker.check_http(
        method="POST",
        scheme="http",
        host="10.0.0.9:5000",
        path="/myapp.php",
        query="foo=1&bar=2",
        headers={
            "X-Twilio-Signature": "L/OH5YylLD5NRKLltdqwSvS0BnU=",
            "Content-Type": "application/x-www-form-urlencoded",
        },
        form=form,
    )
    assert verdict.ok, verdict.log_text()
    assert verdict.url_tried[0] == "https://example.com/myapp.php?foo=1&bar=2"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing X-Twilio-Signature"),
        ({"X-Twilio-Signature": "AAAAAAAAAAAAAAAAAAAAAAAAAAA="}, "does not match"),
        (
            {"X-Twilio-Signature": SIGN("https://other.example.com/twiml", FORM)},
            "does not match",
        ),  # wrong URL
        (
            {"X-Twilio-Signature": SIGN("http://stt.example.com/twiml", FORM)},
            "does not match",
        ),  # wrong scheme
        ({"X-Twilio-Signature": "x" * 500}, "oversized"),
    ],
)
def test_webhook_refuses_missing_forged_and_wrong_url(headers: dict[str, str], reason: str) -> None:
    with client_for(SignatureChecker(TOKEN, PUBLIC)) as client:
        r = client.post("/twiml", data=FORM, headers=headers)
    assert r.status_code == 403 and reason in r.text
    assert TOKEN not in r.text and headers.get("X-Twilio-Signature", "@") not in r.text


def test_webhook_accepts_public_url_and_its_slash_twin() -> None:
    with client_for(SignatureChecker(TOKEN, PUBLIC + "/")) as client:
        for url in (PUBLIC + "/twiml", PUBLIC + "/twiml/"):
            r = client.post("/twiml", data=FORM, headers={"X-Twilio-Signature": SIGN(url, FORM)})
            assert r.status_code == 200, r.text
        # a tampered field breaks it (Digits is signed even when empty)
        sig = SIGN(PUBLIC + "/twiml", FORM)
        r = client.post("/twiml", data=FORM | {"Digits": "1"}, headers={"X-Twilio-Signature": sig})
        assert r.status_code == 403


def test_webhook_get_signs_the_query_string() -> None:
    url = PUBLIC + "/twiml?CallSid=CA1&From=%2B1555"
    with client_for(SignatureChecker(TOKEN, PUBLIC)) as client:
        assert (
            client.get(url.removeprefix(PUBLIC), headers={"X-Twilio-Signature": SIGN(url, {})}).status_code
            == 200
        )
        assert (
            client.get(
                "/twiml?CallSid=CA2&From=%2B1555", headers={"X-Twilio-Signature": SIGN(url, {})}
            ).status_code
            == 403
        )


def test_repeated_form_fields_are_signed_like_twilio() -> None:
    pairs = [("CallSid", "CA1"), ("Tag", "b"), ("Tag", "a")]

    class Multi(dict):
        def getlist(self, name: str) -> list[str]:
            return [v for k, v in pairs if k == name]

    sig = SIGN(PUBLIC + "/twiml", Multi(dict(pairs)))
    with client_for(SignatureChecker(TOKEN, PUBLIC)) as client:
        r = client.post(
            "/twiml",
            content="CallSid=CA1&Tag=b&Tag=a",
            headers={"X-Twilio-Signature": sig, "Content-Type": "application/x-www-form-urlencoded"},
        )
    assert r.status_code == 200


def test_handshake_refuses_missing_forged_and_wrong_url() -> None:
    wss = "wss://stt.example.com/media"
    bad = [
        {},
        {"X-Twilio-Signature": "AAAAAAAAAAAAAAAAAAAAAAAAAAA="},
        {"X-Twilio-Signature": SIGN("https://stt.example.com/media", {})},  # https, not the wss Twilio signs
        {"X-Twilio-Signature": SIGN("wss://evil.example.com/media", {})},
    ]
    with client_for(SignatureChecker(TOKEN, PUBLIC)) as client:
        for headers in bad:
            with (
                pytest.raises(WebSocketDisconnect) as refused,
                client.websocket_connect("/media", headers=headers),
            ):
                pass
            assert refused.value.code == 1008
        for url in (wss, wss + "/"):  # and the trailing-slash variant
            with client.websocket_connect("/media", headers={"X-Twilio-Signature": SIGN(url, {})}) as ws:
                assert ws.receive_text() == "hello"


def proxied(proto: str, signed: str) -> dict[str, str]:
    return {"X-Forwarded-Proto": proto, "X-Forwarded-Host": "stt.example.com", "X-Twilio-Signature": signed}


def test_behind_a_trusted_tls_proxy() -> None:
    """No PUBLIC_URL: the URL comes from X-Forwarded-* because the peer is a trusted proxy."""
    checker = SignatureChecker(TOKEN, None, trusted_proxies=["10.0.0.0/8"])
    with client_for(checker, PROXY) as client:
        r = client.post("/twiml", data=FORM, headers=proxied("https", SIGN(PUBLIC + "/twiml", FORM)))
        assert r.status_code == 200, r.text
        headers = proxied("https", SIGN("wss://stt.example.com/media", {}))  # https → wss for the socket
        with client.websocket_connect("/media", headers=headers) as ws:
            assert ws.receive_text() == "hello"
        headers = proxied("https", SIGN("wss://stt.example.com/media/", {}))
        with client.websocket_connect("/media", headers=headers) as ws:
            assert ws.receive_text() == "hello"


def test_forwarded_headers_from_an_untrusted_peer_are_ignored() -> None:
    checker = SignatureChecker(TOKEN, None, trusted_proxies=["10.0.0.0/8"])
    with client_for(checker, STRANGER) as client:
        r = client.post("/twiml", data=FORM, headers=proxied("https", SIGN(PUBLIC + "/twiml", FORM)))
        assert r.status_code == 403
        headers = proxied("https", SIGN("wss://stt.example.com/media", {}))
        with pytest.raises(WebSocketDisconnect), client.websocket_connect("/media", headers=headers):
            pass
    # nor do they override PUBLIC_URL when no proxy is trusted
    checker = SignatureChecker(TOKEN, "https://real.example.com")
    with client_for(checker, PROXY) as client:
        r = client.post("/twiml", data=FORM, headers=proxied("https", SIGN(PUBLIC + "/twiml", FORM)))
        assert r.status_code == 403


def test_external_base_matches_what_is_checked() -> None:
    """The <Stream url> base comes from the same rules, so the published URL is the checked one."""
    facts = RequestFacts(
        "POST",
        "http",
        "internal:5000",
        "/twiml",
        headers={"x-forwarded-proto": "https", "x-forwarded-host": "stt.example.com"},
        client_ip=PROXY[0],
    )
    behind = SignatureChecker(TOKEN, None, trusted_proxies=["10.0.0.0/8"])
    assert behind.external_base(facts) == PUBLIC
    assert SignatureChecker(TOKEN, None).external_base(facts) == "http://internal:5000"  # proxy not trusted
    assert SignatureChecker(TOKEN, PUBLIC + "/").external_base(facts) == PUBLIC


def test_json_body_with_body_sha256() -> None:
    body = b'{"CallSid": "CA1", "Status": "completed"}'
    digest = hashlib.sha256(body).hexdigest()
    url = f"{PUBLIC}/twiml?bodySHA256={digest}"
    json_headers = {"X-Twilio-Signature": SIGN(url, {}), "Content-Type": "application/json"}
    with client_for(SignatureChecker(TOKEN, PUBLIC)) as client:
        path = url.removeprefix(PUBLIC)
        assert client.post(path, content=body, headers=json_headers).status_code == 200
        r = client.post(path, content=body.replace(b"completed", b"canceled"), headers=json_headers)
        assert r.status_code == 403 and "bodySHA256 does not match" in r.text
        # no bodySHA256 at all: twilio-python would raise TypeError (#885); we refuse
        r = client.post("/twiml", content=body, headers=json_headers)
        assert r.status_code == 403 and "without bodySHA256" in r.text


def test_disabled_without_a_token() -> None:
    verdict = SignatureChecker(None).check(RequestFacts("POST", "http", "x", "/twiml"))
    assert verdict.ok and "disabled" in verdict.reason


def test_candidates_rebuild_safely() -> None:
    trusted = parse_trusted(["10.0.0.0/8"])
    facts = RequestFacts(
        "GET",
        "ws",
        "internal:8000",
        "/media",
        headers={
            "x-forwarded-proto": "https, http",
            "x-forwarded-host": "stt.example.com",
            "x-forwarded-port": "8443",
        },
        client_ip="10.9.9.9",
        websocket=True,
    )
    assert build_candidates(facts, None, trusted) == [
        "wss://stt.example.com:8443/media",
        "wss://stt.example.com:8443/media/",
    ]
    assert build_candidates(facts, "https://u:p@stt.example.com/prefix", []) == [
        "wss://stt.example.com/prefix/media",
        "wss://stt.example.com/prefix/media/",
    ]
    default_port = replace(facts, headers={**facts.headers, "x-forwarded-port": "443"})
    assert build_candidates(default_port, None, trusted)[0] == "wss://stt.example.com/media"
    # a Host that would reshape the URL is not used at all
    evil = RequestFacts("GET", "http", "evil.com/twiml?x=", "/twiml", client_ip="203.0.113.1")
    assert build_candidates(evil, None, []) == []
    assert parse_trusted(["*"]) is None
    with pytest.raises(ValueError):
        parse_trusted(["not-an-ip"])


# --- bearer tokens ----------------------------------------------------------------------------

SECRET = "s" * 40
AUD, ISS = "callscribe-api", "https://idp.example.com/"
READ_KEY, ADMIN_KEY = "read-key-0123456789abcdef", "admin-key-0123456789abcdef"


def api_app(transport: httpx.AsyncBaseTransport | None = None, **env: Any) -> FastAPI:
    """A small app guarded the way app.py should be: read router, admin router, feeds."""
    settings = SecuritySettings(_env_file=None, **env)
    app = FastAPI()
    install_auth(app, settings, jwks_transport=transport)
    reads, admin, feeds = APIRouter(), APIRouter(), APIRouter()

    @reads.get("/api/calls")
    async def calls(principal: ReadPrincipal) -> dict[str, Any]:
        return {"who": principal.name, "kind": principal.kind}

    @admin.delete("/api/calls/{sid}")
    async def delete(sid: str) -> dict[str, str]:
        return {"deleted": sid}

    @feeds.websocket("/live")
    async def live(ws: WebSocket) -> None:
        await ws.accept(subprotocol=accept_subprotocol(ws))
        await ws.send_text(ws.state.principal.name)
        await ws.close()

    @feeds.get("/events")
    async def events() -> PlainTextResponse:
        return PlainTextResponse("data: hi\n\n", media_type="text/event-stream")

    app.include_router(reads, dependencies=[Depends(require("read"))])
    app.include_router(admin, dependencies=[Depends(require("admin"))])
    app.include_router(feeds, dependencies=[Depends(require("read"))])
    return app


def hs(claims: dict[str, Any], secret: str = SECRET, **header: Any) -> str:
    base = {"sub": "alice", "aud": AUD, "iss": ISS, "exp": int(time.time()) + 300, "scope": "read"}
    return jwt.encode({**base, **claims}, secret, algorithm="HS256", headers=header or None)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


HS_ENV = {"jwt_secret": SECRET, "jwt_audience": AUD, "jwt_issuer": ISS}


def test_hs256_tokens() -> None:
    with TestClient(api_app(**HS_ENV)) as client:
        r = client.get("/api/calls", headers=bearer(hs({})))
        assert r.status_code == 200 and r.json() == {"who": "alice", "kind": "jwt"}
        assert client.delete("/api/calls/CA1", headers=bearer(hs({"scope": "read admin"}))).status_code == 200

        r = client.get("/api/calls")
        assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="callscribe"'
        refusals = {
            "expired": hs({"exp": int(time.time()) - 120}),
            "wrong audience": hs({"aud": "someone-else"}),
            "wrong issuer": hs({"iss": "https://evil.example.com/"}),
            "missing claim exp": jwt.encode({"aud": AUD, "iss": ISS, "scope": "read"}, SECRET, "HS256"),
            "invalid token": hs({}, secret="x" * 40),
            "algorithm not accepted": jwt.encode({"aud": AUD, "iss": ISS, "exp": 2**40}, None, "none"),
        }
        for why, token in refusals.items():
            r = client.get("/api/calls", headers=bearer(token))
            assert r.status_code == 401, why
            assert r.headers["www-authenticate"].startswith(
                'Bearer realm="callscribe", error="invalid_token"'
            )
            assert why in r.headers["www-authenticate"]

        r = client.delete("/api/calls/CA1", headers=bearer(hs({})))  # read token on an admin route
        assert r.status_code == 403
        assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
        assert 'scope="admin"' in r.headers["www-authenticate"]
        # a token inside the leeway still passes; scopes may also come as an 'scp' list
        assert client.get("/api/calls", headers=bearer(hs({"exp": int(time.time()) - 5}))).status_code == 200
        token = hs({"scope": None, "scp": ["callscribe:admin"]})
        assert client.delete("/api/calls/CA1", headers=bearer(token)).status_code == 200


def test_api_keys_read_and_admin() -> None:
    keys = [
        {"key": READ_KEY, "scope": "read", "name": "dashboard"},
        {"key": ADMIN_KEY, "scope": "admin", "name": "ops"},
    ]
    with TestClient(api_app(api_keys=keys)) as client:
        assert client.get("/api/calls", headers=bearer(READ_KEY)).json() == {
            "who": "dashboard",
            "kind": "api_key",
        }
        assert client.get("/api/calls", headers=bearer(ADMIN_KEY)).status_code == 200
        assert client.delete("/api/calls/CA1", headers=bearer(READ_KEY)).status_code == 403
        assert client.delete("/api/calls/CA1", headers=bearer(ADMIN_KEY)).status_code == 200
        r = client.get("/api/calls", headers=bearer(READ_KEY + "x"))
        assert r.status_code == 401 and "unknown token" in r.headers["www-authenticate"]
        # ?token= is for WebSockets and EventSource only: it would end up in access logs
        assert client.get(f"/api/calls?token={READ_KEY}").status_code == 401
        r = client.get(f"/events?token={READ_KEY}", headers={"Accept": "text/event-stream"})
        assert r.status_code == 200 and r.text.startswith("data:")
        assert (
            client.get(
                "/events?token=wrong-key-0123456789", headers={"Accept": "text/event-stream"}
            ).status_code
            == 401
        )


def test_websocket_tokens() -> None:
    keys = [{"key": READ_KEY, "scope": "read", "name": "wall"}]
    with TestClient(api_app(api_keys=keys)) as client:
        with client.websocket_connect(f"/live?token={READ_KEY}") as ws:
            assert ws.receive_text() == "wall"
        with client.websocket_connect("/live", headers=bearer(READ_KEY)) as ws:
            assert ws.receive_text() == "wall"
        with client.websocket_connect("/live", subprotocols=["bearer", READ_KEY]) as ws:
            assert ws.accepted_subprotocol == "bearer"  # never the token
            assert ws.receive_text() == "wall"
        for path in ("/live", "/live?token=nope-nope-nope-nope"):
            with pytest.raises(WebSocketDenialResponse) as denied, client.websocket_connect(path):
                pass
            assert denied.value.status_code == 401
            assert denied.value.headers["www-authenticate"].startswith('Bearer realm="callscribe"')


def test_websocket_refusal_without_denial_extension_closes_1008() -> None:
    app = api_app(api_keys=[{"key": READ_KEY, "scope": "read"}])

    async def no_denial(scope, receive, send):  # an ASGI server without websocket.http.response
        if scope["type"] == "websocket":
            scope = {**scope, "extensions": {}}
        await app(scope, receive, send)

    with (
        TestClient(no_denial) as client,
        pytest.raises(WebSocketDisconnect) as closed,
        client.websocket_connect("/live"),
    ):
        pass
    assert closed.value.code == 1008


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks_of(**keys: Any) -> dict[str, Any]:
    out = []
    for kid, key in keys.items():
        algo = (
            jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
        )
        out.append({**algo.to_jwk(key.public_key(), as_dict=True), "kid": kid, "use": "sig"})
    return {"keys": out}


class JwksServer:
    """An httpx transport serving a JWKS that tests can rotate, counting fetches."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.jwks, self.hits = jwks, 0
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert str(request.url) == "https://idp.example.com/.well-known/jwks.json"
        self.hits += 1
        return httpx.Response(200, json=self.jwks)


JWKS_ENV = {
    "jwt_jwks_url": "https://idp.example.com/.well-known/jwks.json",
    "jwt_audience": AUD,
    "jwt_issuer": ISS,
}


def signed(key: Any, kid: str, alg: str = "RS256", **claims: Any) -> str:
    base = {"sub": "bob", "aud": AUD, "iss": ISS, "exp": int(time.time()) + 300, "scope": "read"}
    return jwt.encode({**base, **claims}, key, algorithm=alg, headers={"kid": kid})


def test_rs256_and_es256_via_jwks_with_refresh_on_unknown_kid(rsa_key: rsa.RSAPrivateKey) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    idp = JwksServer(jwks_of(k1=rsa_key))
    with TestClient(api_app(idp.transport, **JWKS_ENV)) as client:
        r = client.get("/api/calls", headers=bearer(signed(rsa_key, "k1")))
        assert r.status_code == 200 and r.json()["who"] == "bob"
        assert client.get("/api/calls", headers=bearer(signed(rsa_key, "k1"))).status_code == 200
        assert idp.hits == 1  # cached

        # the IdP rotates in an EC key: the unknown kid triggers one refetch
        idp.jwks = jwks_of(k1=rsa_key, k2=ec_key)
        client.app.state.authenticator._jwks.min_refresh = 0
        assert client.get("/api/calls", headers=bearer(signed(ec_key, "k2", "ES256"))).status_code == 200
        assert idp.hits == 2

        # refusals: wrong audience, an HS256 token (no secret configured: no alg confusion), a kid
        # that is not there, a token claiming RS256 for the EC key
        client.app.state.authenticator._jwks.min_refresh = 3600  # unknown kids no longer refetch
        for token in (
            signed(rsa_key, "k1", aud="other"),
            hs({}),
            signed(rsa_key, "k9"),
            signed(rsa_key, "k2"),
        ):
            r = client.get("/api/calls", headers=bearer(token))
            assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
        assert idp.hits == 2


def test_jwks_outage_is_503_not_a_crash() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500)

    key = ec.generate_private_key(ec.SECP256R1())
    with TestClient(api_app(httpx.MockTransport(down), **JWKS_ENV)) as client:
        r = client.get("/api/calls", headers=bearer(signed(key, "k1", "ES256")))
    assert r.status_code == 503 and r.headers["retry-after"]


def test_auth_off_without_credentials_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="callscribe.server.auth"), TestClient(api_app()) as client:
        assert client.delete("/api/calls/CA1").status_code == 200
        with client.websocket_connect("/live") as ws:
            assert ws.receive_text() == "anonymous"
    assert "open to anyone" in caplog.text


def test_cors_preflight_follows_the_setting() -> None:
    with TestClient(api_app(cors_origins="https://agents.example.com", **HS_ENV)) as client:
        pre = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}
        ok = client.options("/api/calls", headers={"Origin": "https://agents.example.com", **pre})
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "https://agents.example.com"
        assert "authorization" in ok.headers["access-control-allow-headers"].lower()
        no = client.options("/api/calls", headers={"Origin": "https://evil.example.com", **pre})
        assert no.status_code == 400 and "access-control-allow-origin" not in no.headers
    with TestClient(api_app(**HS_ENV)) as client:  # no CORS_ORIGINS: no CORS headers at all
        r = client.options("/api/calls", headers={"Origin": "https://agents.example.com", **pre})
        assert "access-control-allow-origin" not in r.headers


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS", f'[{{"key": "{ADMIN_KEY}", "scope": "admin", "name": "ops"}}]')
    monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.1")
    monkeypatch.setenv("CORS_ORIGINS", '["https://a.example.com"]')
    monkeypatch.setenv("JWT_ALGORITHMS", "HS256,HS512")
    monkeypatch.setenv("JWT_SECRET", SECRET)
    s = SecuritySettings(_env_file=None)
    assert s.api_keys[0].name == "ops" and ADMIN_KEY not in repr(s)
    assert s.trusted_proxies == ["10.0.0.0/8", "192.168.1.1"] and s.cors_origins == ["https://a.example.com"]
    assert s.jwt_algorithms == ["HS256", "HS512"]
    monkeypatch.setenv("TRUSTED_PROXIES", "*")
    assert SecuritySettings(_env_file=None).trusted_proxies == ["*"]

    bad: list[dict[str, Any]] = [
        {"trusted_proxies": "10.0.0.0/8,nonsense"},
        {"api_keys": [{"key": "short", "scope": "read"}]},
        {"jwt_jwks_url": "https://idp.example.com/jwks"},  # no audience
        {"jwt_algorithms": "RS256"},  # RS256 without a JWKS
        {"jwt_algorithms": "none"},
        {"auth_mode": "token", "jwt_secret": None, "api_keys": []},
    ]
    monkeypatch.delenv("JWT_SECRET")
    monkeypatch.delenv("JWT_ALGORITHMS")
    monkeypatch.delenv("API_KEYS")
    for overrides in bad:
        with pytest.raises(ValueError):
            SecuritySettings(_env_file=None, **overrides)
    with pytest.raises(ValueError) as short:
        SecuritySettings(_env_file=None, jwt_secret="hunter2-but-too-short")
    assert "hunter2" not in str(short.value)


def test_access_log_redaction() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        "",
        0,
        '%s "%s %s"',
        ("1.2.3.4", "GET", "/events?token=abc.def&x=1"),
        None,
    )
    RedactTokens().filter(record)
    assert record.getMessage() == '1.2.3.4 "GET /events?token=***&x=1"'
