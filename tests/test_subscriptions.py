"""The FHIR Subscription API: create/read/update/delete/search, validation, callback URL checks, trusts,
the secret, $status, $events, and the CapabilityStatement. Real store, the intake app over ASGI."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.subscription import Subscription
from receivers import loopback_settings

from services.notifier.backport import (
    CHANNEL_TYPE,
    FILTER_CRITERIA,
    HEARTBEAT_PERIOD,
    MAX_COUNT,
    PAYLOAD_CONTENT,
    TOPIC_CANONICAL,
    channel_type_system,
    secret_extension,
)
from services.notifier.subscriptions import SubscriptionService
from services.notifier.topics import TOPICS, topic_url
from shared.auth import Caller
from shared.fhir import FhirError
from shared.settings import Settings
from shared.store import Store

FHIR = {"Content-Type": "application/fhir+json"}
HOOK = "http://127.0.0.1:9/hook"  # never called here: only checked


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings, with loopback http callbacks allowed (the receivers are local)."""
    return loopback_settings(settings)


def subscription(settings: Settings, endpoint: str = HOOK, trust: str = "RBL", **channel: Any) -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "Acute Oncology updates for Wirral",
        "criteria": topic_url(settings.base_url, "referral-status"),
        "_criteria": {
            "extension": [{"url": FILTER_CRITERIA, "valueString": f"ServiceRequest?requester=Organization/{trust}"}]
        },
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": "id-only"}]},
            "header": ["Authorization: Bearer abc"],
            **channel,
        },
    }


async def test_create_returns_the_secret_once_and_reads_back_without_it(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    created = await http.post("/fhir/Subscription", json=subscription(settings), headers=FHIR)
    assert created.status_code == 201, created.text
    body = created.json()
    secret = created.headers["X-Subscription-Secret"]
    assert len(secret) >= 32 and created.headers["Cache-Control"] == "no-store"
    assert created.headers["ETag"] == 'W/"1"'
    assert created.headers["Location"].endswith(f"/fhir/Subscription/{body['id']}/_history/1")
    assert body["status"] == "requested"
    assert body["meta"]["profile"] == [
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription"
    ]
    Subscription.model_validate(body)
    read = await http.get(f"/fhir/Subscription/{body['id']}")
    assert read.status_code == 200 and "X-Subscription-Secret" not in read.headers
    assert read.json() == body and secret not in read.text
    found = await http.get("/fhir/Subscription", params={"status": "requested"})
    assert [e["resource"]["id"] for e in found.json()["entry"]] == [body["id"]]
    Bundle.model_validate(found.json())


async def test_a_supplied_secret_is_used_and_never_returned(
    http: httpx.AsyncClient, settings: Settings, store: Store
) -> None:
    chosen = "s" * 40
    body = subscription(settings)
    body["extension"] = [{"url": secret_extension(settings.base_url), "valueString": chosen}]
    created = await http.post("/fhir/Subscription", json=body, headers=FHIR)
    assert created.status_code == 201 and "X-Subscription-Secret" not in created.headers
    assert "extension" not in created.json() and chosen not in created.text
    doc = await store.subscriptions.find_one({"_id": created.json()["id"]})
    assert doc is not None and doc["secret"] == chosen
    body["extension"][0]["valueString"] = "short"
    refused = await http.post("/fhir/Subscription", json=body, headers=FHIR)
    assert refused.status_code == 400 and "32 characters" in refused.text


def _mutate(settings: Settings, change: str) -> dict[str, Any]:
    body = subscription(settings)
    filters = body["_criteria"]["extension"]
    channel = body["channel"]
    if change == "unknown topic":
        body["criteria"] = "https://elsewhere.example/SubscriptionTopic/admissions"
    elif change == "no requester filter":
        filters[0]["valueString"] = "ServiceRequest?status=active"
    elif change == "two trusts":
        filters.append({"url": FILTER_CRITERIA, "valueString": "ServiceRequest?requester=Organization/RJR"})
    elif change == "unknown search parameter":
        filters.append({"url": FILTER_CRITERIA, "valueString": "ServiceRequest?colour=red"})
    elif change == "filter on another type":
        filters.append({"url": FILTER_CRITERIA, "valueString": "Patient?family=Smith"})
    elif change == "malformed filter":
        filters.append({"url": FILTER_CRITERIA, "valueString": "requester=RBL"})
    elif change == "websocket":
        channel["type"] = "websocket"
    elif change == "heartbeat":
        channel["extension"] = [{"url": HEARTBEAT_PERIOD, "valueUnsignedInt": 60}]
    elif change == "max count":
        channel["extension"] = [{"url": MAX_COUNT, "valuePositiveInt": 10}]
    elif change == "xml payload":
        channel["payload"] = "application/fhir+xml"
    elif change == "unknown content":
        channel["_payload"]["extension"][0]["valueCode"] = "everything"
    elif change == "reserved header":
        channel["header"] = ["X-Signature: forged"]
    elif change == "header without colon":
        channel["header"] = ["Authorization Bearer"]
    elif change == "bad status":
        body["status"] = "paused"
    elif change == "no reason":
        del body["reason"]
    return body


@pytest.mark.parametrize(
    ("change", "expression"),
    [
        ("unknown topic", "Subscription.criteria"),
        ("no requester filter", "Subscription.criteria.extension"),
        ("two trusts", "Subscription.criteria.extension"),
        ("unknown search parameter", "Subscription.criteria.extension[1]"),
        ("filter on another type", "Subscription.criteria.extension[1]"),
        ("malformed filter", "Subscription.criteria.extension[1]"),
        ("websocket", "Subscription.channel.type"),
        ("heartbeat", "Subscription.channel.extension"),
        ("max count", "Subscription.channel.extension"),
        ("xml payload", "Subscription.channel.payload"),
        ("unknown content", "Subscription.channel.payload.extension"),
        ("reserved header", "Subscription.channel.header[0]"),
        ("header without colon", "Subscription.channel.header[0]"),
        ("bad status", "Subscription.status"),
        ("no reason", "Subscription.reason"),
    ],
)
async def test_invalid_subscriptions_are_refused_saying_where(
    http: httpx.AsyncClient, settings: Settings, change: str, expression: str
) -> None:
    answer = await http.post("/fhir/Subscription", json=_mutate(settings, change), headers=FHIR)
    assert answer.status_code == 400, answer.text
    outcome = answer.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert any(expression in e for i in outcome["issue"] for e in i.get("expression", [])), outcome


async def test_bodies_that_are_not_fhir_json_are_refused(http: httpx.AsyncClient) -> None:
    assert (await http.post("/fhir/Subscription", content=b"{", headers=FHIR)).status_code == 400
    wrong = await http.post("/fhir/Subscription", content=b"{}", headers={"Content-Type": "text/plain"})
    assert wrong.status_code == 415
    patient = await http.post("/fhir/Subscription", json={"resourceType": "Patient"}, headers=FHIR)
    assert patient.status_code == 400


@pytest.mark.parametrize(
    ("endpoint", "reason"),
    [
        ("http://93.184.215.14/hook", "scheme 'http' is not allowed"),
        ("ftp://93.184.215.14/hook", "scheme 'ftp'"),
        ("https://127.0.0.1/hook", "loopback"),
        ("https://[::1]:8443/hook", "loopback"),
        ("https://localhost/hook", "loopback"),
        ("https://10.1.2.3/hook", "private"),
        ("https://192.168.0.10/hook", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://[fe80::1]/hook", "link-local"),
        ("https://[::ffff:127.0.0.1]/hook", "loopback"),
        ("https://0.0.0.0/hook", "unspecified"),
        ("https://user:pw@93.184.215.14/hook", "user name or password"),
        ("https://93.184.215.14/hook#x", "fragment"),
        ("https:///hook", "no host"),
        ("https://does-not-exist.invalid/hook", "does not resolve"),
    ],
)
async def test_callback_urls_must_be_public_https(store: Store, tmp_path: Path, endpoint: str, reason: str) -> None:
    strict = Settings(_env_file=None, state_dir=tmp_path, http_port=0)  # no allowances, as in production
    service = SubscriptionService(store, strict)
    with pytest.raises(FhirError) as refused:
        await service.create(subscription(strict, endpoint), Caller("dev", "REN"))
    assert refused.value.status == 400
    [item] = refused.value.issues
    assert reason in item["diagnostics"] and item["expression"] == ["Subscription.channel.endpoint"]


async def test_allowed_hosts_and_networks_open_private_callbacks(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    public = Settings(_env_file=None, state_dir=tmp_path, http_port=0)
    created = await SubscriptionService(store, public).create(
        subscription(public, "https://93.184.215.14/hook"), Caller("dev", "REN")
    )
    assert created.resource["status"] == "requested"
    monkeypatch.setenv("MSCC_NOTIFIER_ALLOWED_HOSTS", "10.0.0.0/8, localhost")  # as an operator writes it
    allowing = Settings(_env_file=None, state_dir=tmp_path, http_port=0)
    service = SubscriptionService(store, allowing)
    for endpoint in ("https://10.1.2.3/hook", "https://localhost:8443/hook"):
        assert (await service.create(subscription(allowing, endpoint), Caller("dev", "REN"))).resource["id"]
    with pytest.raises(FhirError, match="private"):
        await service.create(subscription(allowing, "https://192.168.1.1/hook"), Caller("dev", "REN"))


async def test_a_trust_manages_only_its_own_subscriptions(store: Store, settings: Settings) -> None:
    service = SubscriptionService(store, settings)
    rbl, rjr, centre = Caller("aos-rbl", "RBL"), Caller("aos-rjr", "RJR"), Caller("hub-ops", "REN")
    mine = (await service.create(subscription(settings), rbl)).resource["id"]
    with pytest.raises(FhirError) as forbidden:
        await service.create(subscription(settings), rjr)  # RJR asking for RBL's referrals
    assert forbidden.value.status == 403
    with pytest.raises(FhirError) as hidden:
        await service.read(mine, rjr)
    assert hidden.value.status == 404
    assert (await service.search([], rjr))["total"] == 0
    assert (await service.search([], rbl))["total"] == 1
    theirs = (await service.create(subscription(settings, trust="RJR"), centre)).resource["id"]  # the hub operator
    assert (await service.search([], centre))["total"] == 2
    assert (await service.read(theirs, rjr)).resource["id"] == theirs
    with pytest.raises(FhirError) as hidden:
        await service.delete(mine, rjr)
    assert hidden.value.status == 404


async def test_update_with_if_match_then_delete(http: httpx.AsyncClient, settings: Settings, store: Store) -> None:
    created = (await http.post("/fhir/Subscription", json=subscription(settings), headers=FHIR)).json()
    sub_id = created["id"]
    await store.subscriptions.update_one({"_id": sub_id}, {"$set": {"status": "active", "events_since_start": 5}})
    changed = copy.deepcopy(created)
    changed["channel"]["endpoint"] = "http://127.0.0.1:10/new-hook"
    updated = await http.put(f"/fhir/Subscription/{sub_id}", json=changed, headers={**FHIR, "If-Match": 'W/"1"'})
    assert updated.status_code == 200, updated.text
    assert updated.headers["ETag"] == 'W/"2"' and updated.json()["status"] == "requested"  # a new endpoint: handshake
    doc = await store.subscriptions.find_one({"_id": sub_id})
    assert doc is not None and doc["events_since_start"] == 5  # the event numbers go on
    stale = await http.put(f"/fhir/Subscription/{sub_id}", json=changed, headers={**FHIR, "If-Match": 'W/"1"'})
    assert stale.status_code == 412
    changed["status"] = "off"
    off = await http.put(f"/fhir/Subscription/{sub_id}", json=changed, headers=FHIR)
    assert off.json()["status"] == "off"
    other = await http.put(f"/fhir/Subscription/{sub_id}", json={**changed, "id": "another"}, headers=FHIR)
    assert other.status_code == 400
    assert (await http.delete(f"/fhir/Subscription/{sub_id}")).status_code == 204
    gone = await http.get(f"/fhir/Subscription/{sub_id}")
    assert gone.status_code == 404 and gone.json()["resourceType"] == "OperationOutcome"


async def test_an_mllp_subscription_is_active_at_once(http: httpx.AsyncClient, settings: Settings) -> None:
    body = subscription(settings)
    coding = {"system": channel_type_system(settings.base_url), "code": "mllp"}
    body["channel"] = {
        "type": "message",
        "_type": {"extension": [{"url": CHANNEL_TYPE, "valueCoding": coding}]},
        "endpoint": "mllp://127.0.0.1:2575",
        "header": ["MSH-5: AOS", "MSH-6: RBL"],
    }
    created = await http.post("/fhir/Subscription", json=body, headers=FHIR)
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "active"
    body["channel"]["header"] = ["Authorization: Bearer x"]
    refused = await http.post("/fhir/Subscription", json=body, headers=FHIR)
    assert refused.status_code == 400 and "MSH-5" in refused.text
    body["channel"]["header"] = []
    body["channel"]["endpoint"] = "https://127.0.0.1/hook"
    assert (await http.post("/fhir/Subscription", json=body, headers=FHIR)).status_code == 400


async def test_status_and_events_of_a_new_subscription(http: httpx.AsyncClient, settings: Settings) -> None:
    sub_id = (await http.post("/fhir/Subscription", json=subscription(settings), headers=FHIR)).json()["id"]
    status = await http.get(f"/fhir/Subscription/{sub_id}/$status")
    assert status.status_code == 200
    Bundle.model_validate(status.json())
    params = {p["name"]: p for p in status.json()["entry"][0]["resource"]["parameter"]}
    assert params["type"]["valueCode"] == "query-status" and params["status"]["valueCode"] == "requested"
    assert params["events-since-subscription-start"]["valueString"] == "0"
    assert params["topic"]["valueCanonical"] == topic_url(settings.base_url, "referral-status")
    assert params["mscc-pending-events"]["valueUnsignedInt"] == 0
    events = await http.post(f"/fhir/Subscription/{sub_id}/$events")
    assert events.status_code == 200 and events.json()["type"] == "history" and len(events.json()["entry"]) == 1
    bad = await http.get(f"/fhir/Subscription/{sub_id}/$events", params={"eventsSinceNumber": "two"})
    assert bad.status_code == 400
    unknown = await http.get(f"/fhir/Subscription/{uuid.uuid4()}/$status")
    assert unknown.status_code == 404 and unknown.json()["resourceType"] == "OperationOutcome"
    nothing = await http.post(f"/fhir/Subscription/{sub_id}/$redeliver")
    assert {p["name"]: p for p in nothing.json()["parameter"]}["redelivered"]["valueUnsignedInt"] == 0


async def test_the_capability_statement_declares_subscriptions_and_topics(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    statement = (await http.get("/fhir/metadata")).json()
    [entry] = [r for r in statement["rest"][0]["resource"] if r["type"] == "Subscription"]
    topics = {e["valueCanonical"] for e in entry["extension"] if e["url"] == TOPIC_CANONICAL}
    assert topics == {topic_url(settings.base_url, code) for code in TOPICS}
    assert {i["code"] for i in entry["interaction"]} == {"create", "read", "update", "delete", "search-type"}
    assert {o["name"] for o in entry["operation"]} == {"status", "events", "redeliver", "skip"}
    assert "mllp" in entry["documentation"] and "X-Signature" in entry["documentation"]
