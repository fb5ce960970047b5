"""Bearer tokens at the API: who is admitted (a token, the development client on loopback in development
only, an external identity provider's token), the 401 / 403 / 429 answers, and the hub's signing key
kept across a restart. Real tokens from the token endpoint, real keys, a real JWKS server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send
from tokens import auth_headers, bearer, headers_for, new_key, public_jwk, register, serve_jwks, token_for

from services.api.access import describe
from services.api.app import create_app
from services.api.route_scopes import PUBLIC, needed_scope
from services.intake.service import IntakeService
from shared.clients import ClientRegistry
from shared.scopes import ANY_TYPE, HL7V2, ScopeError, narrow, needed, parse
from shared.settings import Settings
from shared.store import Store
from shared.tokens import HubTokens

FHIR_JSON = {"Content-Type": "application/fhir+json"}
HL7 = b"MSH|^~\\&|PAS|RBL|MSCC-HUB|REN|20260101120000||ADT^A01|AUTH0001|P|2.5\rPID|1||9449305552^^^NHS^NH\r"


def _referral(value: str = "R1") -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "identifier": [{"system": "https://example.org/referral", "value": value}],
        "subject": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9449305552"}},
    }


class StateProbe:
    """An ASGI wrapper keeping each request's ``request.state`` after the app answered it."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.states: list[dict[str, Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
        if scope["type"] == "http":
            self.states.append(dict(scope.get("state", {})))


@asynccontextmanager
async def hub(
    settings: Settings, store: Store, peer: tuple[str, int] = ("127.0.0.1", 50000)
) -> AsyncIterator[tuple[httpx.AsyncClient, StateProbe]]:
    """An HTTP client for an app built with ``settings``, calling from ``peer``; and the state probe."""
    service = IntakeService(settings, store)
    await service.start(mllp=False)
    probe = StateProbe(create_app(service))
    try:
        transport = httpx.ASGITransport(app=probe, client=peer)
        async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as client:
            yield client, probe
    finally:
        await service.stop()


def production(settings: Settings, **extra: Any) -> Settings:
    return settings.model_copy(update={"environment": "production", "allow_dev_client": False, **extra})


def _challenge(response: httpx.Response) -> str:
    challenge: str = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    return challenge


async def test_a_bearer_token_reads_and_writes_as_its_client(http: httpx.AsyncClient, store: Store) -> None:
    client = await register(store, "RBL", ["system/*.rs", "system/ServiceRequest.c"])
    headers = await auth_headers(http, client)
    created = await http.post("/fhir/ServiceRequest", json=_referral(), headers={**FHIR_JSON, **headers})
    assert created.status_code == 201, created.text
    record = await store.messages.find_one({"caller.client_id": client.client_id})
    assert record is not None and record["caller"]["ods_code"] == "RBL"
    read = await http.get(created.headers["location"].split("/_history")[0].split("hub.test")[-1], headers=headers)
    assert read.status_code == 200 and read.json()["resourceType"] == "ServiceRequest"
    search = await http.get("/fhir/ServiceRequest", headers=headers)
    assert search.status_code == 200 and search.json()["resourceType"] == "Bundle"


async def test_production_refuses_an_anonymous_caller_even_on_loopback(settings: Settings, store: Store) -> None:
    async with hub(production(settings), store) as (http, probe):
        missing = await http.get("/fhir/ServiceRequest")
        assert missing.status_code == 401
        assert missing.json()["resourceType"] == "OperationOutcome" and missing.json()["issue"][0]["code"] == "login"
        assert "error=" not in _challenge(missing)  # no token was given: a bare challenge
        assert probe.states[-1]["auth_failure"] and "caller" not in probe.states[-1]
        hl7 = await http.post("/hl7v2", content=HL7, headers={"Content-Type": "application/hl7-v2"})
        assert hl7.status_code == 401 and hl7.headers["content-type"].startswith("text/plain")
        _challenge(hl7)
        for public in ("/metadata", "/fhir/metadata", "/healthz", "/oauth2/jwks", "/.well-known/smart-configuration"):
            assert (await http.get(public)).status_code == 200, public
        # a real token works in production
        headers = await headers_for(http, store, settings, "RBL", ["system/*.rs"])
        assert (await http.get("/fhir/ServiceRequest", headers=headers)).status_code == 200
        assert probe.states[-1]["caller"].ods_code == "RBL"
    assert await store.messages.count_documents({}) == 0


async def test_development_admits_an_anonymous_caller_on_loopback_only(settings: Settings, store: Store) -> None:
    async with hub(settings, store) as (local, probe):
        answer = await local.get("/fhir/ServiceRequest")
        assert answer.status_code == 200
        assert probe.states[-1]["caller"].client_id == settings.dev_client_id
    async with hub(settings, store, peer=("10.1.2.3", 5000)) as (remote, probe):
        refused = await remote.get("/fhir/ServiceRequest")
        assert refused.status_code == 401
        assert "loopback only" in refused.json()["issue"][0]["diagnostics"]
        assert "loopback" in probe.states[-1]["auth_failure"]
        _challenge(refused)
        # from elsewhere, a token is the way in
        headers = await headers_for(remote, store, settings, "RJR", ["system/*.rs"], key="ES256")
        assert (await remote.get("/fhir/ServiceRequest", headers=headers)).status_code == 200


async def test_invalid_tokens_get_401_with_invalid_token(
    http: httpx.AsyncClient, store: Store, settings: Settings
) -> None:
    client = await register(store, "RBL", ["system/*.rs"])
    good = await token_for(http, client)
    claims = jwt.decode(good, options={"verify_signature": False})
    header = jwt.get_unverified_header(good)
    expired = (
        await HubTokens(settings, store).issue(client.client_id, "RBL", ["system/*.rs"], now=time.time() - 900)
    ).token
    forged = jwt.encode(claims, new_key("ES256"), algorithm="ES256", headers={"kid": header["kid"]})
    elsewhere = jwt.encode({**claims, "iss": "https://idp.elsewhere.example"}, new_key("ES256"), algorithm="ES256")
    cases = {
        "Bearer": "not 'Bearer <token>'",
        "Basic dXNlcjpwYXNz": "not 'Bearer <token>'",
        "Bearer not.a.jwt": "not a JWT",
        f"Bearer {expired}": "expired",
        f"Bearer {forged}": "Signature verification failed",
        f"Bearer {elsewhere}": "is not trusted",
    }
    for authorization, reason in cases.items():
        answer = await http.get("/fhir/ServiceRequest", headers={"Authorization": authorization})
        assert answer.status_code == 401, authorization
        assert reason in answer.json()["issue"][0]["diagnostics"], (authorization, answer.text)
        assert 'error="invalid_token"' in _challenge(answer)
    # an invalid token is never replaced by the development client, not even on loopback
    assert await store.messages.count_documents({}) == 0
    assert (await http.get("/fhir/ServiceRequest", headers=bearer(good))).status_code == 200


async def test_a_token_without_the_scope_gets_403(http: httpx.AsyncClient, store: Store, settings: Settings) -> None:
    headers = await headers_for(http, store, settings, "RBL", ["system/Patient.rs"])
    assert (await http.get("/fhir/Patient", headers=headers)).status_code == 200
    search = await http.get("/fhir/ServiceRequest", headers=headers)
    assert search.status_code == 403
    assert search.json()["issue"][0]["code"] == "forbidden"
    assert "system/ServiceRequest.s" in search.json()["issue"][0]["diagnostics"]
    assert 'error="insufficient_scope"' in _challenge(search)
    create = await http.post("/fhir/ServiceRequest", json=_referral(), headers={**FHIR_JSON, **headers})
    assert create.status_code == 403 and "system/ServiceRequest.c" in create.text
    hl7 = await http.post("/hl7v2", content=HL7, headers={**headers, "Content-Type": "application/hl7-v2"})
    assert hl7.status_code == 403 and "system/hl7v2.c" in hl7.text
    review = await http.get("/admin/messages", headers=headers)
    assert review.status_code == 403 and "system/*.r" in review.json()["detail"]
    assert await store.messages.count_documents({}) == 0


async def test_scopes_per_route(http: httpx.AsyncClient, store: Store, settings: Settings) -> None:
    """v1 and v2 forms grant alike; HL7v2 needs its own scope; updates need .u of the type."""
    v1 = await headers_for(http, store, settings, "RBL", ["system/*.read", "system/*.write", "system/hl7v2.c"])
    v2 = await headers_for(http, store, settings, "RBL", ["system/*.cruds"])
    created = await http.post("/fhir/ServiceRequest", json=_referral("S1"), headers={**FHIR_JSON, **v1})
    assert created.status_code == 201, created.text
    hl7 = await http.post("/hl7v2", content=HL7, headers={**v1, "Content-Type": "application/hl7-v2"})
    assert hl7.status_code == 200 and b"MSA|AA" in hl7.content
    refused = await http.post("/hl7v2", content=HL7, headers={**v2, "Content-Type": "application/hl7-v2"})
    assert refused.status_code == 403  # a FHIR wildcard does not cover HL7v2
    reader = await headers_for(http, store, settings, "RBL", ["system/ServiceRequest.rs"])
    rid = created.json()["id"]
    assert (await http.get(f"/fhir/ServiceRequest/{rid}/_history", headers=reader)).status_code == 200
    put = await http.put(f"/fhir/ServiceRequest/{rid}", json=created.json(), headers={**FHIR_JSON, **reader})
    assert put.status_code == 403 and "system/ServiceRequest.u" in put.text


async def test_a_revoked_clients_tokens_stop_working(settings: Settings, store: Store) -> None:
    async with hub(settings.model_copy(update={"auth_client_cache_s": 0.3}), store) as (http, _):
        client = await register(store, "RBL", ["system/*.rs"])
        headers = await auth_headers(http, client)
        assert (await http.get("/fhir/ServiceRequest", headers=headers)).status_code == 200
        await ClientRegistry(store).revoke(client.name)
        await asyncio.sleep(0.4)
        refused = await http.get("/fhir/ServiceRequest", headers=headers)
        assert refused.status_code == 401 and "revoked" in refused.text
        assert 'error="invalid_token"' in _challenge(refused)


async def test_the_signing_key_is_kept_across_a_restart(settings: Settings, store: Store) -> None:
    client = await register(store, "RBL", ["system/*.rs"])
    async with hub(settings, store) as (first, _):
        headers = await auth_headers(first, client)
        first_jwks = (await first.get("/oauth2/jwks")).json()
    async with hub(settings, store) as (second, _):
        assert (await second.get("/fhir/ServiceRequest", headers=headers)).status_code == 200
        assert (await second.get("/oauth2/jwks")).json() == first_jwks
    assert await store.signing_keys.count_documents({}) == 1


async def test_many_processes_starting_at_once_share_one_key(settings: Settings, store: Store) -> None:
    keys = await asyncio.gather(*(HubTokens(settings, store).key() for _ in range(6)))
    assert len({key.kid for key in keys}) == 1


async def test_an_external_identity_providers_token_is_accepted(settings: Settings, store: Store) -> None:
    key, kid = new_key("RS256"), uuid.uuid4().hex[:8]
    issuer = "https://login.idp.example/tenant"
    async with serve_jwks([public_jwk(key, kid, "RS256")]) as url:
        configured = settings.model_copy(update={"idp_issuer": issuer, "idp_jwks_url": url})
        now = int(time.time())
        claims = {"iss": issuer, "aud": settings.base_url, "sub": "svc-42", "azp": "rbl-epr", "iat": now,
                  "exp": now + 300, "ods_code": "rbl", "scope": "system/ServiceRequest.rs"}  # fmt: skip
        token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})
        async with hub(configured, store) as (http, probe):
            answer = await http.get("/fhir/ServiceRequest", headers=bearer(token))
            assert answer.status_code == 200, answer.text
            caller = probe.states[-1]["caller"]
            assert (caller.client_id, caller.ods_code) == ("rbl-epr", "RBL")
            assert (await http.get("/fhir/Patient", headers=bearer(token))).status_code == 403
            no_ods = jwt.encode({**claims, "ods_code": None}, key, algorithm="RS256", headers={"kid": kid})
            assert "no ODS code" in (await http.get("/fhir/ServiceRequest", headers=bearer(no_ods))).text
            other_aud = jwt.encode({**claims, "aud": "https://other"}, key, algorithm="RS256", headers={"kid": kid})
            assert (await http.get("/fhir/ServiceRequest", headers=bearer(other_aud))).status_code == 401
            unknown_kid = jwt.encode(claims, new_key("RS256"), algorithm="RS256", headers={"kid": "nope"})
            refused = await http.get("/fhir/ServiceRequest", headers=bearer(unknown_kid))
            assert refused.status_code == 401 and "no key id 'nope'" in refused.text


async def test_over_the_rate_limit_is_429_with_retry_after(settings: Settings, store: Store) -> None:
    limited = settings.model_copy(update={"rate_limit_per_s": 0.5, "rate_limit_burst": 2})
    async with hub(limited, store) as (http, probe):
        busy = await register(store, "RBL", ["system/*.rs"])
        calm = await register(store, "RJR", ["system/*.rs"])
        busy_headers, calm_headers = await auth_headers(http, busy), await auth_headers(http, calm)
        for _ in range(2):
            assert (await http.get("/fhir/ServiceRequest", headers=busy_headers)).status_code == 200
        throttled = await http.get("/fhir/ServiceRequest", headers=busy_headers)
        assert throttled.status_code == 429
        assert 1 <= int(throttled.headers["retry-after"]) <= 2
        assert throttled.json()["issue"][0]["code"] == "throttled"
        assert "rate limit" in probe.states[-1]["auth_failure"]
        assert (await http.get("/fhir/ServiceRequest", headers=calm_headers)).status_code == 200
        assert (await http.get("/oauth2/jwks")).status_code == 200  # public routes are not counted


def test_every_route_is_public_or_needs_one_scope(intake: IntakeService) -> None:
    paths = create_app(intake).openapi()["paths"]
    guarded = 0
    for path, operations in paths.items():
        for method in operations:
            if path in PUBLIC:
                continue
            need = needed_scope(method.upper(), path, {"resource_type": "Patient"})
            assert len(need.permissions) == 1 and need.permissions <= set("cruds"), (method, path)
            guarded += 1
    assert guarded > 20
    expected = {
        ("GET", "/fhir/{resource_type}"): "system/Patient.s",
        ("POST", "/fhir/{resource_type}/_search"): "system/Patient.s",
        ("GET", "/fhir/{resource_type}/_history"): "system/Patient.s",
        ("GET", "/fhir/{resource_type}/{resource_id}/_history/{version}"): "system/Patient.r",
        ("POST", "/fhir/{resource_type}/$validate"): "system/Patient.c",
        ("POST", "/fhir"): "system/Bundle.c",
        ("PUT", "/fhir/ServiceRequest/{resource_id}"): "system/ServiceRequest.u",
        ("POST", "/fhir/ServiceRequest/{referral_id}/$transition"): "system/ServiceRequest.u",
        ("DELETE", "/fhir/Subscription/{subscription_id}"): "system/Subscription.d",
        ("POST", "/fhir/Subscription/{subscription_id}/$events"): "system/Subscription.r",
        ("POST", "/fhir/Subscription/{subscription_id}/$redeliver"): "system/Subscription.u",
        ("POST", "/hl7v2"): "system/hl7v2.c",
        ("GET", "/admin/messages"): "system/*.r",
        ("POST", "/admin/messages/{record_id}/reject"): "system/*.u",
    }
    for (method, path), scope in expected.items():
        assert describe(needed_scope(method, path, {"resource_type": "Patient"})) == scope, (method, path)


def test_scope_forms() -> None:
    assert parse("system/*.read") == parse("system/*.rs") and parse("system/*.write") == parse("system/*.cud")
    assert parse("hl7v2/*.write").covers(needed(HL7V2, "c"))
    assert not parse("system/*.cruds").covers(needed(HL7V2, "c"))
    assert not parse("system/Patient.cruds").covers(needed(ANY_TYPE, "r"))
    for wrong in ("system/Patient.sr", "system/Patient.rr", "patient/*.read", "system/*.x", "system/*.rs?x=1"):
        with pytest.raises(ScopeError):
            parse(wrong)
    assert narrow(None, ["system/*.rs"]) == ["system/*.rs"]
    assert narrow("system/Patient.r", ["system/*.rs"]) == ["system/Patient.r"]
    with pytest.raises(ScopeError, match="not granted"):
        narrow("system/Patient.c", ["system/*.rs"])


def test_settings_refuse_what_would_grant_too_much(tmp_path: Path) -> None:
    base: dict[str, Any] = {"_env_file": None, "state_dir": tmp_path}
    with pytest.raises(ValueError, match="MSCC_ALLOW_DEV_CLIENT=false"):
        Settings(**base, environment="production")
    assert Settings(**base, environment="production", allow_dev_client=False).environment == "production"
    with pytest.raises(ValueError, match="set together"):
        Settings(**base, idp_issuer="https://idp.example")
    with pytest.raises(ValueError, match="https"):
        Settings(**base, environment="production", allow_dev_client=False, idp_issuer="https://idp.example",
                 idp_jwks_url="http://idp.example/jwks")  # fmt: skip
