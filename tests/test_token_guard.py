"""The token endpoint's guard: every refused token request is an AuditEvent (DICOM 110114 User
Authenticated, subtype Login, outcome 4 or 8), and refusals are limited per peer address (429 with
Retry-After before any secret is hashed), while granted requests cost nothing. Real clients in the store,
real scrypt-hashed secrets, the app in process with the peer address of each caller set.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
from tokens import TestClient, register, request_token
from trusts import MSCC, client_as

from services.api.app import create_app
from services.api.token_guard import RefusalLimiter, login_failure
from services.intake.service import IntakeService
from shared.audit import DICOM, Hub
from shared.settings import Settings
from shared.store import Store


@contextlib.asynccontextmanager
async def hub(settings: Settings, store: Store) -> AsyncIterator[Any]:
    """The app, and a function giving a client that calls it from a given peer address."""
    service = IntakeService(settings, store)
    await service.start(mllp=False)
    app = create_app(service)
    clients: list[httpx.AsyncClient] = []

    def calling_from(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        clients.append(httpx.AsyncClient(transport=transport, base_url="http://hub.test"))
        return clients[-1]

    try:
        yield calling_from
    finally:
        for client in clients:
            await client.aclose()
        await service.stop()


def wrong(client: TestClient) -> TestClient:
    return TestClient(client.client_id, client.name, client.ods_code, client.scopes, secret="not-the-secret-at-all")


async def login_failures(store: Store) -> list[dict[str, Any]]:
    found = store.audit.find({"resource.type.code": "110114"}).sort("recorded", 1)
    return [d["resource"] async for d in found]


async def test_a_refused_token_request_is_audited_with_who_tried_and_why(settings: Settings, store: Store) -> None:
    engine = await register(store, "RBL", ["system/*.rs"])
    async with hub(settings, store) as calling_from:
        http = calling_from("203.0.113.7")
        assert (await request_token(http, engine)).status_code == 200
        assert await login_failures(store) == []  # a granted token is not a refusal
        refused = await request_token(http, wrong(engine))
        assert refused.status_code == 401
        [event] = await login_failures(store)
        assert event["type"] == {"system": DICOM, "code": "110114", "display": "User Authenticated"}
        assert event["subtype"] == [{"system": DICOM, "code": "110122", "display": "Login"}]
        assert event["outcome"] == "4" and event["action"] == "E"
        assert event["outcomeDesc"].startswith("invalid_client: ")
        client = event["agent"][0]
        assert client["altId"] == engine.client_id and client["requestor"] is True
        assert client["network"] == {"address": "203.0.113.7", "type": "2"}
        assert "not-the-secret" not in str(event)

        # The MSCC team finds it by the client id the request claimed.
        async with client_as(calling_from("127.0.0.1"), MSCC, ["system/AuditEvent.rs"]) as mscc:
            found = await mscc.get("/fhir/AuditEvent", params={"agent": engine.client_id})
        assert found.status_code == 200, found.text
        assert [e["resource"]["id"] for e in found.json()["entry"]] == [event["id"]]


async def test_refusals_are_limited_per_address_and_granted_requests_cost_nothing(
    settings: Settings, store: Store
) -> None:
    settings = settings.model_copy(update={"token_refusals_per_min": 1.0, "token_refusals_burst": 3})
    engine = await register(store, "RBL", ["system/*.rs"])
    async with hub(settings, store) as calling_from:
        guesser, other = calling_from("198.51.100.9"), calling_from("198.51.100.10")
        for _ in range(6):  # granted requests give their token back
            assert (await request_token(guesser, engine)).status_code == 200
        assert [(await request_token(guesser, wrong(engine))).status_code for _ in range(3)] == [401] * 3
        throttled = [await request_token(guesser, c) for c in (wrong(engine), engine, wrong(engine))]
        assert [r.status_code for r in throttled] == [429] * 3  # even the right secret: nothing is hashed
        first = throttled[0]
        assert int(first.headers["Retry-After"]) >= 1 and first.headers["Cache-Control"] == "no-store"
        assert first.json()["error"] == "temporarily_unavailable"
        assert (await request_token(other, engine)).status_code == 200  # another address is not held up

    events = await login_failures(store)
    assert [e["outcomeDesc"].split(":", 1)[0] for e in events] == ["invalid_client"] * 3 + ["temporarily_unavailable"]


def test_a_bucket_refills_with_time_and_a_server_failure_is_outcome_8() -> None:
    now = [0.0]
    limiter = RefusalLimiter(per_min=6.0, burst=2, clock=lambda: now[0])
    assert limiter.admit("a") == (0.0, False) and limiter.admit("a") == (0.0, False)
    wait, first = limiter.admit("a")
    assert wait == 10.0 and first
    assert limiter.admit("a")[1] is False  # still throttled: not the first refusal any more
    now[0] = 10.0
    assert limiter.admit("a") == (0.0, False)

    failed = login_failure(Hub("MSCC-HUB", "REN", "https://hub"), datetime.now(UTC), "10.0.0.1", None, 500, "x")
    assert failed["outcome"] == "8" and failed["resource"]["agent"][0]["who"] == {"display": "unidentified caller"}
