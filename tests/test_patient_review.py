"""A message held for a patient conflict is visible to the MSCC team as a "Review patient match" Task.

End to end: HL7v2 referrals from two trusts (RBL, RJR) over HTTP into intake, the mapper holding the
conflicting one, the Task read through the FHIR API, an operator's decision over /admin/messages, and
the notifier delivering the Task to the MSCC team's subscription on a real aiohttp receiver.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from receivers import Receiver, loopback_settings, receiving, subscribe_rest_hook

from services.intake.service import IntakeService
from services.mapper.service import MapperService
from services.notifier.http import client_session
from services.notifier.service import NotifierService
from shared.settings import Settings

ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
NHS = "9449305552"

MARGARET = f"PID|1||{NHS}^^^NHS^NH~X100234^^^PAS^MR||HUGHES^MARGARET^ANN||19700312|F|||12 Beach Rd^^Wirral^^CH41 1AA"
# RJR mistypes the NHS number of a man born in 1940: same number, another person.
ROBERT = f"PID|1||{NHS}^^^NHS^NH~R88812^^^PAS^MR||DAVIES^ROBERT||19400102|M|||3 Mill Lane^^Liverpool^^L9 7AL"
# Masked values keep the year of birth and initials (enough to see "1970 against 1940"), never more.
SECRETS = (
    "HUGHES",
    "Hughes",
    "MARGARET",
    "DAVIES",
    "Davies",
    "ROBERT",
    "19700312",
    "1970-03-12",
    "19400102",
    "1940-01-02",
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return loopback_settings(settings, notifier_timeout_s=2.0)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """One receiver for every path: each subscription posts to its own (``receiver.focus(path)``)."""
    async with receiving("/{path}") as rec:
        yield rec


async def subscribe(http: httpx.AsyncClient, settings: Settings, url: str, topic: str, flt: str) -> None:
    await subscribe_rest_hook(http, settings, url, reason="MSCC coordinators' worklist", topic=topic, filters=[flt])


def referral(trust: str, control_id: str, pid: str, number: str) -> str:
    lines = [
        f"MSH|^~\\&|ICE|{trust}|MSCC-HUB|REN|20261125080000||REF^I12^REF_I12|{control_id}|P|2.5",
        f"RF1|P^Pending|S^STAT|MSCC^Metastatic spinal cord compression||R^Referral|{number}^ICE|20261125|||"
        "Suspected MSCC",
        f"PRD|RP|JONES^SARAH^^^DR|^^^{trust}||^WPN^PH^^^^^^^^^0151 678 5111|||||^^^^^^^^^{trust}",
        pid,
        f"PV1|1|I|AMU^BED 4^^{trust}||||||||||||||||V{control_id}^^^PAS^VN",
        "OBX|1|TX|NEURO^Neurological status||back pain 3/52, legs heavy since last night ?cord||||||F",
    ]
    return "\r".join(lines) + "\r"


async def send(http: httpx.AsyncClient, message: str) -> None:
    answer = await http.post("/hl7v2", content=message, headers={"Content-Type": "application/hl7-v2"})
    assert "MSA|AA" in answer.text, answer.text


async def run(intake: IntakeService) -> None:
    await MapperService(intake.store).run(asyncio.Event(), burst=True)
    async with client_session(intake.settings) as session:
        await NotifierService(intake.store, intake.settings, session).run(asyncio.Event(), burst=True)


async def review_tasks(http: httpx.AsyncClient, **params: str) -> list[dict[str, Any]]:
    found = await http.get("/fhir/Task", params={"owner": "Organization/REN", **params})
    assert found.status_code == 200, found.text
    return [
        e["resource"] for e in found.json().get("entry", []) if e["resource"]["code"]["text"] == "Review patient match"
    ]


async def held_record(intake: IntakeService, control_id: str) -> dict[str, Any]:
    found = await intake.store.messages.find_one({"header.control_id": control_id})
    assert found is not None and found["status"] == "needs-review"
    return found


async def test_a_held_referral_gives_the_mscc_team_a_review_task_and_applying_completes_it(
    http: httpx.AsyncClient, intake: IntakeService, receiver: Receiver
) -> None:
    settings = intake.settings
    await subscribe(http, settings, f"{receiver.base}/mscc", "patient-review", "Task?owner=Organization/REN")
    # A trust cannot be told about the hub's review Tasks, even with a subscription of its own.
    await subscribe(http, settings, f"{receiver.base}/rbl", "patient-review", "Task?owner=Organization/RBL")
    # ... and the MSCC team's data-quality view does not mix them in.
    await subscribe(http, settings, f"{receiver.base}/quality", "data-quality", "Task?requester=Organization/REN")
    await send(http, referral("RBL", "RBL0002", MARGARET, "500001"))
    await run(intake)
    quality_before = len(receiver.focus("/quality"))
    await send(http, referral("RJR", "RJR0002", ROBERT, "500001"))
    await run(intake)

    held = await held_record(intake, "RJR0002")
    [task] = await review_tasks(http, status="requested")
    assert task["priority"] == "urgent" and task["intent"] == "order"
    assert task["owner"]["identifier"] == {"system": ODS, "value": "REN"}
    assert held["_id"] in [i["value"] for i in task["identifier"]]
    assert held["_id"] in [i["valueString"] for i in task["input"]]
    assert held["review"]["task"] == f"Task/{task['id']}"
    for field in ("birthDate", "gender", "name"):
        assert field in task["description"]
    assert "RJR" in task["description"] and "RJR0002" in task["description"]
    text = json.dumps(task)
    for secret in SECRETS:
        assert secret not in text, secret
    history = await http.get(f"/fhir/Task/{task['id']}/_history")
    assert history.json()["total"] == 1
    assert [(t["id"], t["status"]) for t in receiver.focus("/mscc")] == [(task["id"], "requested")]
    assert receiver.focus("/rbl") == []
    assert len(receiver.focus("/quality")) == quality_before

    applied = await http.post(f"/admin/messages/{held['_id']}/apply")
    assert applied.status_code == 200, applied.text
    await run(intake)
    [done] = await review_tasks(http, _id=task["id"])
    assert done["status"] == "completed" and done["meta"]["versionId"] == "2"
    assert done["note"][-1]["authorString"] == settings.dev_client_id
    assert [t["status"] for t in receiver.focus("/mscc")] == ["requested", "completed"]
    assert (await intake.store.messages.find_one({"_id": held["_id"]}) or {})["status"] == "mapped"
    assert receiver.focus("/rbl") == []


async def test_rejecting_a_held_message_rejects_its_review_task_with_who_and_why(
    http: httpx.AsyncClient, intake: IntakeService, receiver: Receiver
) -> None:
    settings = intake.settings
    await subscribe(http, settings, f"{receiver.base}/mscc", "patient-review", "Task?owner=Organization/REN")
    await send(http, referral("RBL", "RBL0003", MARGARET, "500001"))
    await send(http, referral("RJR", "RJR0003", ROBERT, "500077"))
    await run(intake)
    held = await held_record(intake, "RJR0003")
    [task] = await review_tasks(http, status="requested")

    reason = "wrong NHS number keyed at RJR, asked them to resend with the right one"
    rejected = await http.post(f"/admin/messages/{held['_id']}/reject", json={"reason": reason})
    assert rejected.status_code == 200, rejected.text
    assert (await http.post(f"/admin/messages/{held['_id']}/reject", json={"reason": reason})).status_code == 409
    await run(intake)
    [closed] = await review_tasks(http, _id=task["id"])
    assert closed["status"] == "rejected" and closed["statusReason"]["text"] == reason
    assert closed["note"][-1]["authorString"] == settings.dev_client_id and reason in closed["note"][-1]["text"]
    assert [t["status"] for t in receiver.focus("/mscc")] == ["requested", "rejected"]
    event = await intake.store.outbox.find_one({"_id": f"Task/{task['id']}/_history/2"})
    assert event is not None and event["message_id"] == held["_id"]
    for secret in SECRETS:
        assert secret not in json.dumps(closed), secret


async def test_a_message_held_again_keeps_one_review_task(http: httpx.AsyncClient, intake: IntakeService) -> None:
    """A held record handed back to the mapper (its status set to ready again) is held again onto the
    same Task, never a second one and never a failed write."""
    await send(http, referral("RBL", "RBL0004", MARGARET, "500001"))
    await send(http, referral("RJR", "RJR0004", ROBERT, "500088"))
    await run(intake)
    held = await held_record(intake, "RJR0004")
    await intake.store.messages.update_one({"_id": held["_id"]}, {"$set": {"status": "ready"}})
    await run(intake)
    again = await held_record(intake, "RJR0004")
    assert again["review"]["task"] == held["review"]["task"]
    [task] = await review_tasks(http)
    assert task["status"] == "requested" and f"Task/{task['id']}" == held["review"]["task"]
