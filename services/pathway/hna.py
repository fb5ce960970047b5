"""The Holistic Needs Assessment: the Questionnaire the hub publishes, and the support plan an HNA implies.

Domains, item texts and the support threshold are data (``shared/data/hna_questionnaire.json``, read by
``shared/hna.py``, which intake uses too): the checklist wording may be licensed, so no text lives in
code. A QuestionnaireResponse answering this Questionnaire (by canonical URL, ``canonical|version`` or
``Questionnaire/mscc-hna``) gives a CarePlan (the Personalised Care and Support Plan) with one activity
per concern scored at or above the threshold, and one for the distress score when it reaches it.

Intake refuses responses that do not fit the Questionnaire; one that reaches the mapper anyway (stored
before that check, or without a patient) gets no plan, and ``plan_issues`` says why on the message's
processing record: never a silent drop.
"""

from __future__ import annotations

from typing import Any

from shared.hna import definition as definition  # re-exported: the pathway's view of the questionnaire
from shared.hna import is_hna, items, problems, scores
from shared.ids import resource_id
from shared.patches import OutcomeIssue, Resource, issue

UK_CORE_CAREPLAN = "https://fhir.hl7.org.uk/StructureDefinition/UKCore-CarePlan"
SUPPORT_PLAN_NAMESPACE = "urn:mscc:hna-support-plan"
# QuestionnaireResponse.status -> the support plan's status: a completed (or amended) HNA gives an active
# plan, which is what the hna-completed topic announces.
_PLAN_STATUS = {
    "completed": "active",
    "amended": "active",
    "stopped": "revoked",
    "entered-in-error": "entered-in-error",
}


def questionnaire() -> Resource:
    """The HNA Questionnaire: one group per domain, each concern scored 0-10, plus the distress score."""
    spec = definition()

    def scored(linkid: str, text: str) -> dict[str, Any]:
        return {
            "linkId": linkid,
            "text": text,
            "type": "integer",
            "extension": [
                {"url": "http://hl7.org/fhir/StructureDefinition/minValue", "valueInteger": 0},
                {"url": "http://hl7.org/fhir/StructureDefinition/maxValue", "valueInteger": 10},
            ],
        }

    items = [
        {
            "linkId": d["linkId"],
            "text": d["text"],
            "type": "group",
            "item": [scored(i["linkId"], i["text"]) for i in d["items"]],
        }
        for d in spec["domains"]
    ]
    items.append(scored(spec["distress"]["linkId"], spec["distress"]["text"]))
    return {
        "resourceType": "Questionnaire",
        "id": spec["id"],
        "url": spec["url"],
        "version": spec["version"],
        "title": spec["title"],
        "status": "active",
        "subjectType": ["Patient"],
        "item": items,
    }


def support_plan_id(response_id: str) -> str:
    return resource_id("CarePlan", SUPPORT_PLAN_NAMESPACE, response_id)


def plan_issues(response: Resource) -> list[OutcomeIssue]:
    """Why a QuestionnaireResponse gets no support plan, as warnings for the message's processing
    record (a response to a questionnaire the hub does not know, answers that do not fit, no patient);
    empty when it gets one, or when ``response`` is not a QuestionnaireResponse."""
    if response.get("resourceType") != "QuestionnaireResponse":
        return []
    found = problems(response)
    if found:
        reasons = "; ".join(p["diagnostics"] for p in found)
        return [
            issue(
                "warning", "business-rule", f"no support plan for QuestionnaireResponse/{response.get('id')}: {reasons}"
            )
        ]
    if not response.get("subject"):
        return [
            issue(
                "warning",
                "required",
                f"no support plan for QuestionnaireResponse/{response.get('id')}: it names no patient (subject)",
                "QuestionnaireResponse.subject",
            )
        ]
    return []


def support_plan(response: Resource) -> list[Resource]:
    """The CarePlan an HNA response implies; nothing (and ``plan_issues`` says why) when it does not fit
    the hub's Questionnaire or names no patient."""
    spec = definition()
    if response.get("resourceType") != "QuestionnaireResponse" or not is_hna(response) or problems(response):
        return []
    threshold = int(spec["support_threshold"])
    texts = {**items().scored, spec["distress"]["linkId"]: "Distress"}
    concerns = sorted(
        ((score, link) for link, score in scores(response).items() if link in texts and score >= threshold),
        reverse=True,
    )
    plan: Resource = {
        "resourceType": "CarePlan",
        "id": support_plan_id(response["id"]),
        "meta": {"profile": [UK_CORE_CAREPLAN]},
        "status": _PLAN_STATUS.get(str(response.get("status")), "draft"),
        "intent": "plan",
        "title": "Personalised Care and Support Plan",
        "category": [{"text": "Personalised care and support plan (holistic needs assessment)"}],
        "supportingInfo": [{"reference": f"QuestionnaireResponse/{response['id']}"}],
        "activity": [
            {
                "detail": {
                    "status": "not-started",
                    "description": f"Agree support for: {texts[link]} (scored {score}/10)",
                }
            }
            for score, link in concerns
        ],
    }
    if response.get("subject"):
        plan["subject"] = response["subject"]
    else:
        return []  # CarePlan.subject is required: without a patient there is no plan to make
    if response.get("authored"):
        plan["created"] = response["authored"]
    return [plan]
