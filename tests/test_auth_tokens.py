"""The token endpoint, ``POST /oauth2/token``: real clients in the store, real keys generated here, real
assertions, and the RFC 6749 error for every refusal."""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt
import pytest
from tokens import (
    TestClient,
    assertion,
    basic,
    bearer,
    new_key,
    public_jwk,
    register,
    request_token,
    serve_jwks,
    token_for,
)

from services.api.oauth_grant import JWT_BEARER
from shared.clients import ClientRegistry
from shared.settings import Settings
from shared.store import Store

READ = "system/*.rs"


def _claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def _error(response: httpx.Response, status: int, error: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["error"] == error, body
    description: str = body["error_description"]
    return description


@pytest.mark.parametrize("method", ["basic", "post"])
async def test_a_secret_client_gets_a_token(http: httpx.AsyncClient, store: Store, method: str) -> None:
    client = await register(store, "RBL", [READ, "system/ServiceRequest.c"])
    response = await request_token(http, client, method=method)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 300
    assert body["scope"] == f"{READ} system/ServiceRequest.c"
    assert response.headers["cache-control"] == "no-store"
    claims = _claims(body["access_token"])
    assert claims["sub"] == client.client_id and claims["ods_code"] == "RBL"
    assert claims["exp"] - claims["iat"] == 300 and claims["jti"]
    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "ES256" and header["kid"]


@pytest.mark.parametrize("algorithm", ["ES256", "RS256"])
async def test_a_key_client_gets_a_token_with_a_signed_assertion(
    http: httpx.AsyncClient, store: Store, settings: Settings, algorithm: str
) -> None:
    client = await register(store, "RJR", ["system/*.cruds"], key=algorithm)  # type: ignore[arg-type]
    token = await token_for(http, client, settings)
    assert _claims(token)["sub"] == client.client_id and _claims(token)["ods_code"] == "RJR"
    read = await http.get("/fhir/ServiceRequest", headers=bearer(token))
    assert read.status_code == 200, read.text


async def test_a_key_client_registered_by_jwks_url(http: httpx.AsyncClient, store: Store, settings: Settings) -> None:
    key = new_key("RS256")
    published: list[dict[str, Any]] = []
    async with serve_jwks(published) as url:
        client = await register(store, "RJR", [READ], private_key=key, jwks_url=url)
        published.append(public_jwk(key, str(client.kid), "RS256"))
        token = await token_for(http, client, settings)
        assert _claims(token)["sub"] == client.client_id
        forged = assertion(client, settings, key=new_key("RS256"))
        refused = await request_token(http, client, settings, signed=forged)
        assert "not valid" in _error(refused, 401, "invalid_client")


async def test_a_narrower_scope_may_be_asked_for_and_a_wider_one_is_refused(
    http: httpx.AsyncClient, store: Store
) -> None:
    client = await register(store, "RBL", ["system/*.rs", "system/ServiceRequest.cu"])
    narrow = await request_token(http, client, scope="system/Patient.r system/ServiceRequest.u")
    assert narrow.json()["scope"] == "system/Patient.r system/ServiceRequest.u"
    wide = await request_token(http, client, scope="system/*.cruds")
    assert "system/*.cruds" in _error(wide, 400, "invalid_scope")
    hl7 = await request_token(http, client, scope="system/hl7v2.c")
    _error(hl7, 400, "invalid_scope")
    nonsense = await request_token(http, client, scope="patient/Observation.read")
    assert "not a SMART system scope" in _error(nonsense, 400, "invalid_scope")


async def test_a_wrong_secret_and_an_unknown_client_are_refused_alike(http: httpx.AsyncClient, store: Store) -> None:
    client = await register(store, "RBL", [READ])
    wrong = await http.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic(client.client_id, "not-the-secret")},
    )
    text = _error(wrong, 401, "invalid_client")
    assert wrong.headers["www-authenticate"].startswith("Basic")
    unknown = await http.post(
        "/oauth2/token", data={"grant_type": "client_credentials", "client_id": "nobody", "client_secret": "x"}
    )
    assert _error(unknown, 401, "invalid_client") == text
    none = await http.post("/oauth2/token", data={"grant_type": "client_credentials"})
    assert "no client authentication" in _error(none, 401, "invalid_client")


async def test_an_assertion_signed_with_another_key_is_refused(
    http: httpx.AsyncClient, store: Store, settings: Settings
) -> None:
    client = await register(store, "RJR", [READ], key="ES256")
    forged = assertion(client, settings, key=new_key("ES256"))
    assert "not valid" in _error(await request_token(http, client, settings, signed=forged), 401, "invalid_client")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"expires_in": -60}, "expired"),
        ({"expires_in": 3600}, "more than 5 minutes ahead"),
        ({"audience": "https://elsewhere.example/oauth2/token"}, "aud must be"),
        ({"sub": "someone-else"}, "sub must be the client id"),
    ],
)
async def test_an_assertion_with_bad_claims_is_refused(
    http: httpx.AsyncClient, store: Store, settings: Settings, change: dict[str, Any], reason: str
) -> None:
    client = await register(store, "RJR", [READ], key="ES256")
    signed = assertion(client, settings, **change)
    assert reason in _error(await request_token(http, client, settings, signed=signed), 401, "invalid_client")


async def test_a_replayed_assertion_is_refused(http: httpx.AsyncClient, store: Store, settings: Settings) -> None:
    client = await register(store, "RJR", [READ], key="ES256")
    signed = assertion(client, settings)
    assert (await request_token(http, client, settings, signed=signed)).status_code == 200
    again = await request_token(http, client, settings, signed=signed)
    assert "jti was used before" in _error(again, 401, "invalid_client")
    kept = await store.used_assertions.find_one({"_id": f"{client.client_id}:{_claims(signed)['jti']}"})
    assert kept is not None and kept["expires_at"].timestamp() > time.time()
    fresh = await request_token(http, client, settings)  # a new jti is fine
    assert fresh.status_code == 200


async def test_a_revoked_client_gets_no_token(http: httpx.AsyncClient, store: Store, settings: Settings) -> None:
    secret_client = await register(store, "RBL", [READ])
    key_client = await register(store, "RJR", [READ], key="ES256")
    registry = ClientRegistry(store)
    await registry.revoke(secret_client.name)
    await registry.revoke(key_client.name)
    assert "revoked" in _error(await request_token(http, secret_client), 401, "invalid_client")
    assert "revoked" in _error(await request_token(http, key_client, settings), 401, "invalid_client")


async def test_a_rotated_secret_replaces_the_old_one(http: httpx.AsyncClient, store: Store) -> None:
    client = await register(store, "RBL", [READ])
    _, secret = await ClientRegistry(store).rotate(client.name)
    _error(await request_token(http, client), 401, "invalid_client")
    rotated = TestClient(client.client_id, client.name, "RBL", client.scopes, secret=secret)
    assert (await request_token(http, rotated)).status_code == 200


async def test_other_grants_and_malformed_requests(http: httpx.AsyncClient, store: Store) -> None:
    client = await register(store, "RBL", [READ])
    auth = {"Authorization": basic(client.client_id, str(client.secret))}
    code = await http.post("/oauth2/token", data={"grant_type": "authorization_code"}, headers=auth)
    _error(code, 400, "unsupported_grant_type")
    missing = await http.post("/oauth2/token", data={"scope": READ}, headers=auth)
    _error(missing, 400, "invalid_request")
    as_json = await http.post("/oauth2/token", json={"grant_type": "client_credentials"}, headers=auth)
    assert "x-www-form-urlencoded" in _error(as_json, 400, "invalid_request")
    twice = await http.post(
        "/oauth2/token",
        content="grant_type=client_credentials&grant_type=client_credentials",
        headers={**auth, "Content-Type": "application/x-www-form-urlencoded"},
    )
    _error(twice, 400, "invalid_request")
    both = await http.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials", "client_assertion_type": JWT_BEARER, "client_assertion": "x"},
        headers=auth,
    )
    assert "one client authentication method" in _error(both, 400, "invalid_request")


async def test_jwks_and_smart_configuration_are_public(http: httpx.AsyncClient, store: Store) -> None:
    client = await register(store, "RBL", [READ])
    token = await token_for(http, client)
    jwks = (await http.get("/oauth2/jwks")).json()
    key = jwt.PyJWKSet.from_dict(jwks).keys[0]
    assert key.key_id == jwt.get_unverified_header(token)["kid"]
    claims = jwt.decode(token, key, algorithms=["ES256"], audience=_claims(token)["iss"])
    assert claims["sub"] == client.client_id
    for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
        smart = await http.get(path, headers={"Authorization": "Bearer not-even-a-token"})
        assert smart.status_code == 200, smart.text
        config = smart.json()
        assert config["token_endpoint"].endswith("/oauth2/token")
        assert set(config["token_endpoint_auth_methods_supported"]) == {
            "private_key_jwt",
            "client_secret_basic",
            "client_secret_post",
        }
