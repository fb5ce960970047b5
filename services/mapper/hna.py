"""The Holistic Needs Assessment: the Questionnaire the hub publishes, and the support plan an HNA implies.

Domains, item texts and the support threshold are data (``data/hna_questionnaire.json``): the checklist
wording may be licensed, so no text lives in code. A QuestionnaireResponse answering this Questionnaire
gives a CarePlan (the Personalised Care and Support Plan) with one activity per concern scored at or
above the threshold, and one for the distress score when it reaches it; responses to other
Questionnaires are stored without a plan.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources as package_files
from typing import Any

from shared.ids import resource_id

from .model import Resource

UK_CORE_CAREPLAN = "https://fhir.hl7.org.uk/StructureDefinition/UKCore-CarePlan"


@cache
def definition() -> dict[str, Any]:
    text = package_files.files(__package__).joinpath("data/hna_questionnaire.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


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


def _answers(items: list[dict[str, Any]]) -> dict[str, int]:
    """linkId -> integer answer, through nested groups; non-integer answers are ignored."""
    out: dict[str, int] = {}
    for item in items:
        for answer in item.get("answer") or []:
            if isinstance(answer.get("valueInteger"), int):
                out[item["linkId"]] = answer["valueInteger"]
        out.update(_answers(item.get("item") or []))
    return out


def support_plan(response: Resource) -> list[Resource]:
    """The CarePlan an HNA response implies, or nothing when it answers another Questionnaire."""
    spec = definition()
    if response.get("resourceType") != "QuestionnaireResponse" or response.get("questionnaire") != spec["url"]:
        return []
    threshold = int(spec["support_threshold"])
    answers = _answers(response.get("item") or [])
    texts = {i["linkId"]: i["text"] for d in spec["domains"] for i in d["items"]}
    texts[spec["distress"]["linkId"]] = "Distress"
    concerns = sorted(
        ((score, link) for link, score in answers.items() if link in texts and score >= threshold), reverse=True
    )
    plan: Resource = {
        "resourceType": "CarePlan",
        "id": resource_id("CarePlan", "urn:mscc:hna-support-plan", response["id"]),
        "meta": {"profile": [UK_CORE_CAREPLAN]},
        "status": "active" if response.get("status") == "completed" else "draft",
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
