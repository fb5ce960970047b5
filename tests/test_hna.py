"""The Holistic Needs Assessment: which responses the hub takes, how answers are checked, the support plan,
and the "HNA completed" notification that follows the plan.

Pure checks first (``shared/hna.py``), then the whole route over the real app and a real mongod: intake
refuses what does not fit (422, kept as a rejected record), the mapper makes the plan or records why not,
and the notifier's fan-out announces the plan to the trust that referred the patient.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from receivers import RBL_REFERRALS, loopback_settings, subscription_body
from trusts import client_as

from services.mapper.fhir_records import map_bundle
from services.mapper.service import MapperService
from services.notifier.fanout import FanOut
from services.notifier.model import ChangeEvent, Focus
from services.notifier.subscriptions import SubscriptionService
from services.notifier.topics import triggered
from services.pathway.derive import derive
from services.pathway.hna import support_plan, support_plan_id
from shared.auth import Caller
from shared.fhir import FhirError, validate
from shared.hna import accepted_references, check_responses, definition, is_support_plan, problems
from shared.settings import Settings
from shared.store import Document, Store

FHIR = {"Content-Type": "application/fhir+json"}
NHS = "https://fhir.nhs.uk/Id/nhs-number"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
PATIENT_NHS = "9449305552"
URL = definition()["url"]


def hna(questionnaire: str = URL, *, status: str = "completed", **scores: Any) -> dict[str, Any]:
    """An HNA response as a cancer support worker's system sends it: scores by linkId, nested by domain."""
    items: dict[str, list[dict[str, Any]]] = {}
    top: list[dict[str, Any]] = []
    for link, score in scores.items():
        link = link.replace("__", ".").replace("_", "-")
        answer = {"linkId": link, "answer": [{"valueInteger": score} if isinstance(score, int) else score]}
        if "." in link:
            items.setdefault(link.split(".")[0], []).append(answer)
        else:
            top.append(answer)
    return {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": questionnaire,
        "status": status,
        "subject": {"identifier": {"system": NHS, "value": PATIENT_NHS}},
        "authored": "2026-01-20T14:05:00+00:00",
        "item": [*({"linkId": d, "item": i} for d, i in items.items()), *top],
    }


def message(*resources: dict[str, Any]) -> dict[str, Any]:
    header = {
        "resourceType": "MessageHeader",
        "id": str(uuid.uuid4()),
        "eventUri": "urn:mscc:event:hna-completed",
        "source": {"endpoint": "urn:trust:rbl:macmillan-cancer-support"},
    }
    return {
        "resourceType": "Bundle",
        "type": "message",
        "entry": [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": r} for r in (header, *resources)],
    }


# --- which questionnaire ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "named", [URL, f"{URL}|1", "Questionnaire/mscc-hna", "Questionnaire/mscc-hna/_history/1", f" {URL} "]
)
def test_every_way_of_naming_the_questionnaire_is_accepted(named: str) -> None:
    response = {**hna(named, physical__pain=8), "id": "qr-1", "subject": {"reference": "Patient/p1"}}
    assert problems(response) == []
    [plan] = support_plan(response)
    assert plan["activity"][0]["detail"]["description"] == "Agree support for: Pain (scored 8/10)"


@pytest.mark.parametrize("named", [f"{URL}|2", "http://example.org/Questionnaire/phq9", "Questionnaire/other", None, 7])
def test_other_questionnaires_are_named_as_not_known(named: Any) -> None:
    [problem] = problems({**hna(physical__pain=8), "questionnaire": named})
    assert problem["expression"] == ["QuestionnaireResponse.questionnaire"]
    assert "not a questionnaire this hub knows" in problem["diagnostics"]
    assert all(ref in problem["diagnostics"] for ref in accepted_references())


# --- answers against the Questionnaire --------------------------------------------------------------------


def test_a_score_out_of_range_names_the_item() -> None:
    [problem] = problems(hna(physical__pain=12, distress=4))
    assert "'physical.pain'" in problem["diagnostics"] and "0 to 10" in problem["diagnostics"]
    assert problem["expression"] == ["QuestionnaireResponse.item[0].item[0].answer[0]"]


def test_an_unknown_item_is_refused_not_ignored() -> None:
    [problem] = problems(hna(physical__pain=3, physical__itching=9))
    assert "'physical.itching' is not an item" in problem["diagnostics"]
    assert problem["expression"] == ["QuestionnaireResponse.item[0].item[1]"]


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ({"valueString": "8"}, "must be an integer"),
        ({"valueInteger": -1}, "must be an integer"),
        ({"valueBoolean": True}, "must be an integer"),
        ({"valueDecimal": 7.5}, "must be an integer"),
    ],
)
def test_answers_must_be_whole_scores(answer: dict[str, Any], why: str) -> None:
    [problem] = problems(hna(distress=answer))
    assert why in problem["diagnostics"] and "'distress'" in problem["diagnostics"]


def test_structure_is_checked_and_nothing_raises_on_odd_shapes() -> None:
    response = hna(physical__pain=3)
    response["item"] += [
        {"linkId": "physical", "answer": [{"valueInteger": 2}]},  # a group takes no answer
        {"linkId": "distress", "answer": [{"valueInteger": 2}, {"valueInteger": 3}]},  # one answer only
        "junk",
    ]
    found = problems(response)
    assert len(found) == 3
    assert problems({"resourceType": "QuestionnaireResponse", "questionnaire": URL, "item": "x"}) == []


def test_a_bundle_with_an_unfit_response_is_refused_with_every_problem() -> None:
    bundle = message(hna(physical__pain=12), hna(emotional__worry=2, spiritual__faith=9))
    with pytest.raises(FhirError) as refused:
        check_responses(bundle)
    assert refused.value.status == 422
    where = [i["expression"][0] for i in refused.value.issues]
    assert where == ["Bundle.entry[1].resource.item[0].item[0].answer[0]", "Bundle.entry[2].resource.item[1].item[0]"]
    check_responses(message(hna(physical__pain=10)))  # fits: nothing raised


# --- the support plan and the HNA completed topic ---------------------------------------------------------


def test_plan_status_follows_the_response_and_is_what_the_topic_announces() -> None:
    def plan(status: str) -> dict[str, Any]:
        response = {**hna(status=status, physical__pain=7), "id": "qr-2", "subject": {"reference": "Patient/p1"}}
        [made] = support_plan(response)
        validate(made)
        return {**made, "meta": {"versionId": "1"}}

    def event(resource: dict[str, Any], version: int = 1) -> ChangeEvent:
        when = datetime(2026, 1, 20, 14, 6, tzinfo=UTC)
        focus = Focus(resource["resourceType"], resource["id"], version)
        kind = "created" if version == 1 else "updated"
        return ChangeEvent(f"{focus.key}/_history/{version}", kind, focus, when, when)

    completed, in_progress = plan("completed"), plan("in-progress")
    assert (completed["status"], in_progress["status"], plan("amended")["status"]) == ("active", "draft", "active")
    assert is_support_plan(completed)
    assert triggered("hna-completed", event(completed), completed, None)
    assert not triggered("hna-completed", event(in_progress), in_progress, None)
    assert triggered("hna-completed", event(completed, 2), completed, in_progress)  # draft -> active
    assert not triggered("hna-completed", event(completed, 2), completed, completed)  # already announced
    response = {**hna(physical__pain=7), "id": "qr-2", "meta": {"versionId": "1"}}
    assert not triggered("hna-completed", event(response), response, None)  # the response alone: never


def test_mapper_records_why_a_response_gets_no_plan() -> None:
    # stored before intake checked responses: the mapper still says why there is no plan
    bundle = message(hna("Questionnaire/phq9", physical__pain=8), {**hna(physical__pain=8), "subject": None})
    record = {
        "_id": uuid.uuid4().hex,
        "raw": json.dumps(bundle).encode(),
        "received_at": datetime(2026, 1, 20, 14, 6, tzinfo=UTC),
        "fhir": {
            "entries": [
                {"fullUrl": e["fullUrl"], "method": None, "type": e["resource"]["resourceType"], "id": f"r{n}"}
                for n, e in enumerate(bundle["entry"])
            ]
        },
    }
    result = map_bundle(record, derive)
    assert [r["resourceType"] for r in result.resources] == ["QuestionnaireResponse", "QuestionnaireResponse"]
    reasons = [i["diagnostics"] for i in result.issues if "no support plan" in i["diagnostics"]]
    assert len(reasons) == 2
    assert "QuestionnaireResponse/r1" in reasons[0] and "not a questionnaire this hub knows" in reasons[0]
    assert "QuestionnaireResponse/r2" in reasons[1] and "names no patient" in reasons[1]


# --- over the real app, mapper and fan-out ----------------------------------------------------------------


async def rejected(store: Store) -> list[Document]:
    return [d async for d in store.messages.find({"status": "rejected"})]


@pytest.mark.parametrize(
    ("response", "named"),
    [
        (hna(physical__pain=12), "physical.pain"),
        (hna(physical__pain=4, practical__parking=9), "practical.parking"),
        (hna("https://www.macmillan.org.uk/Questionnaire/hna", physical__pain=4), "QuestionnaireResponse"),
    ],
)
async def test_intake_refuses_an_unfit_response_with_422_and_keeps_it(
    http: httpx.AsyncClient, store: Store, response: dict[str, Any], named: str
) -> None:
    answer = await http.post("/fhir", json=message(response), headers=FHIR)
    assert answer.status_code == 422, answer.text
    outcome = answer.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert named in outcome["issue"][0]["diagnostics"]
    assert outcome["issue"][0]["expression"][0].startswith("Bundle.entry[1].resource")
    [kept] = await rejected(store)
    assert kept["http_status"] == 422 and named in kept["reason"]
    assert await store.messages.count_documents({"status": "ready"}) == 0  # nothing queued for the mapper


async def test_hna_completed_is_announced_with_its_plan_to_the_referring_trust(
    http: httpx.AsyncClient, store: Store, settings: Settings
) -> None:
    # RBL referred the patient; two HNAs arrive: one names the questionnaire canonical|version and gets a
    # plan (announced), one has no patient and gets none (not announced; the reason on its record)
    referral = {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": "https://wirral.example.nhs.uk/Id/referral", "value": "ICE-500001"}],
        "status": "active",
        "intent": "order",
        "subject": {"identifier": {"system": NHS, "value": PATIENT_NHS}},
        "requester": {"identifier": {"system": ODS, "value": "RBL"}},
        "authoredOn": "2026-01-15T09:55:00+00:00",
    }
    assert (await http.post("/fhir/ServiceRequest", json=referral, headers=FHIR)).status_code == 201
    settings = loopback_settings(settings)
    clock = lambda: datetime.now(UTC)  # noqa: E731
    channel = {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook", "payload": "application/fhir+json"}
    reason = "Wirral Acute Oncology: HNA"
    body = subscription_body(settings, channel, topic="hna-completed", reason=reason, filters=[RBL_REFERRALS])
    created = await SubscriptionService(store, settings, clock).create(body, Caller("aos-rbl", "RBL"))
    sub_id = created.resource["id"]

    with_plan = hna(f"{URL}|1", physical__pain=8, emotional__worry=6, distress=7)
    without_plan = {**hna("Questionnaire/mscc-hna", physical__fatigue=9)}
    del without_plan["subject"]
    async with client_as(http, "RBL") as rbl:  # the referring trust sends its patient's assessments
        for response in (with_plan, without_plan):
            answer = await rbl.post("/fhir", json=message(response), headers=FHIR)
            assert answer.status_code == 200, answer.text
    await MapperService(store).run(asyncio.Event(), burst=True)

    responses = [d async for d in store.resources.find({"type": "QuestionnaireResponse"})]
    assert len(responses) == 2
    planned = next(d for d in responses if d["resource"].get("subject"))
    plan = await store.resources.find_one({"_id": f"CarePlan/{support_plan_id(planned['id'])}"})
    assert plan is not None and plan["resource"]["status"] == "active"
    assert [a["detail"]["description"] for a in plan["resource"]["activity"]] == [
        "Agree support for: Pain (scored 8/10)",
        "Agree support for: Distress (scored 7/10)",
        "Agree support for: Worry, fear or anxiety (scored 6/10)",
    ]
    unplanned = next(d for d in responses if not d["resource"].get("subject"))
    record = await store.messages.find_one({"processing.resources.id": unplanned["id"]})
    assert record is not None and record["status"] == "mapped"
    assert any("names no patient" in i["diagnostics"] for i in record["processing"]["issues"])

    await FanOut(store, clock).run_once()
    sent = [d["event"]["outbox_id"] async for d in store.deliveries.find({"subscription_id": sub_id})]
    assert sent == [f"CarePlan/{plan['id']}/_history/1"]
