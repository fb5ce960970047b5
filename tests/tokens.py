"""Real API clients and real access tokens for tests: register a client directly in the store (a secret
or a freshly generated key), sign its client assertions, and get a token through ``/oauth2/token``.

    client = await register(store, "RBL", ["system/*.rs"])              # secret client
    headers = await auth_headers(http, client)                          # {"Authorization": "Bearer ..."}
    keyed = await register(store, "RJR", ["system/*.cruds"], key="ES256")  # private_key_jwt client
    headers = await auth_headers(http, keyed, settings=settings)
    headers = await headers_for(http, store, settings, "RBL", ["system/*.rs"])  # both steps at once
    async with serve_jwks([public_jwk(key, kid, "ES256")]) as url: ...  # a JWKS URL on loopback
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.api.oauth_grant import JWT_BEARER
from shared.clients import ClientRegistry
from shared.settings import Settings
from shared.store import Store

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class TestClient:
    """A registered client and what it authenticates with (its secret, or its private key and alg)."""

    __test__ = False  # not a pytest test class

    client_id: str
    name: str
    ods_code: str
    scopes: tuple[str, ...]
    secret: str | None = None
    private_key: PrivateKey | None = None
    algorithm: str | None = None
    kid: str | None = None


def new_key(algorithm: Literal["ES256", "RS256"] = "ES256") -> PrivateKey:
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def public_jwk(key: PrivateKey, kid: str, algorithm: str) -> dict[str, Any]:
    """The public half of ``key`` as a JWK (for a JWKS URL served in a test)."""
    public = key.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
    return {**jwk, "kid": kid, "alg": algorithm, "use": "sig"}


async def register(
    store: Store,
    ods_code: str,
    scopes: list[str],
    *,
    key: Literal["ES256", "RS256"] | None = None,
    jwks_url: str | None = None,
    private_key: PrivateKey | None = None,
    name: str | None = None,
) -> TestClient:
    """Register a client for ``ods_code`` with ``scopes`` in the store: a secret client by default; with
    ``key``, a private_key_jwt client with a new key of that algorithm, registered by its PEM public key
    (or, with ``jwks_url``, by that URL: serve ``public_jwk(client.private_key, client.kid, ...)`` there)."""
    name = name or f"test-{ods_code.lower()}-{uuid.uuid4().hex[:8]}"
    registry = ClientRegistry(store)
    if key is None and private_key is None:
        record, secret = await registry.add(name, ods_code, scopes)
        return TestClient(record.client_id, name, record.ods_code, record.scopes, secret=secret)
    algorithm = key or ("ES256" if isinstance(private_key, ec.EllipticCurvePrivateKey) else "RS256")
    private = private_key or new_key(algorithm)
    kid = uuid.uuid4().hex[:12]
    if jwks_url:
        record, _ = await registry.add(name, ods_code, scopes, jwks_url=jwks_url)
    else:
        record, _ = await registry.add(name, ods_code, scopes, public_key_pem=public_pem(private))
    return TestClient(record.client_id, name, record.ods_code, record.scopes, None, private, algorithm, kid)


def token_url(settings: Settings) -> str:
    """The audience of client assertions: the token endpoint's URL as the hub names it."""
    return f"{settings.base_url}/oauth2/token"


def assertion(
    client: TestClient,
    settings: Settings,
    *,
    expires_in: int = 60,
    jti: str | None = None,
    audience: str | None = None,
    key: PrivateKey | None = None,
    **claims: Any,
) -> str:
    """A signed client assertion (RFC 7523) for ``client``; keyword arguments override claims."""
    assert client.private_key is not None and client.algorithm is not None
    now = int(time.time())
    body = {
        "iss": client.client_id,
        "sub": client.client_id,
        "aud": audience or token_url(settings),
        "exp": now + expires_in,
        "iat": now,
        "jti": jti or uuid.uuid4().hex,
        **claims,
    }
    return jwt.encode(body, key or client.private_key, algorithm=client.algorithm, headers={"kid": client.kid})


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


async def request_token(
    http: httpx.AsyncClient,
    client: TestClient,
    settings: Settings | None = None,
    *,
    scope: str | None = None,
    method: Literal["basic", "post"] = "basic",
    signed: str | None = None,
) -> httpx.Response:
    """POST /oauth2/token for ``client``: by its secret (HTTP Basic or posted), or by a client assertion
    (``signed``, else a fresh one; ``settings`` give its audience)."""
    form: dict[str, str] = {"grant_type": "client_credentials"}
    headers: dict[str, str] = {}
    if scope is not None:
        form["scope"] = scope
    if client.secret is None:
        assert signed is not None or settings is not None, "a key client's assertion needs the settings (aud)"
        form["client_assertion_type"] = JWT_BEARER
        form["client_assertion"] = signed or assertion(client, settings)  # type: ignore[arg-type]
    elif method == "basic":
        headers["Authorization"] = basic(client.client_id, client.secret)
    else:
        form.update(client_id=client.client_id, client_secret=client.secret)
    return await http.post("/oauth2/token", data=form, headers=headers)


async def token_for(http: httpx.AsyncClient, client: TestClient, settings: Settings | None = None, **kw: Any) -> str:
    response = await request_token(http, client, settings, **kw)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def auth_headers(
    http: httpx.AsyncClient, client: TestClient, settings: Settings | None = None, **kw: Any
) -> dict[str, str]:
    """Headers that make ``http``'s requests come from ``client`` (a real token from the token endpoint)."""
    return bearer(await token_for(http, client, settings, **kw))


async def headers_for(
    http: httpx.AsyncClient,
    store: Store,
    settings: Settings,
    ods_code: str,
    scopes: list[str],
    *,
    key: Literal["ES256", "RS256"] | None = None,
) -> dict[str, str]:
    """Register a client for ``ods_code`` with ``scopes`` and return the headers of a real token for it."""
    client = await register(store, ods_code, scopes, key=key)
    return await auth_headers(http, client, settings)


@asynccontextmanager
async def serve_jwks(keys: list[dict[str, Any]]) -> AsyncIterator[str]:
    """A JWK set served on loopback by a real aiohttp server; yields its URL."""

    async def handle(request: web.Request) -> web.Response:
        return web.json_response({"keys": keys})

    app = web.Application()
    app.router.add_get("/jwks.json", handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/jwks.json"
    finally:
        await runner.cleanup()
