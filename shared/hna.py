"""The Holistic Needs Assessment (HNA) the hub publishes, and whether a QuestionnaireResponse fits it.

Here, not in the mapper, because two parts need it and neither may import the other: intake refuses a
response that does not fit (422, kept as a rejected record), and the mapper turns one that does into
its support plan. The notifier asks ``is_support_plan`` for the ``hna-completed`` topic.

The questionnaire (domains, item texts, the support threshold) is data (``data/hna_questionnaire.json``):
the checklist wording may be licensed, so no text lives in code. A response names it by any of:

    urn:mscc:Questionnaire:hna              the canonical URL
    urn:mscc:Questionnaire:hna|1            canonical|version (the published version only)
    Questionnaire/mscc-hna                  a reference to the published resource (also .../_history/1)

and fits it when every ``linkId`` is one of its items, groups carry no answers, and each concern and
the distress score has at most one answer, an integer from 0 to 10. A response may leave items out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources as package_files
from typing import Any, TypeGuard

from .fhir import FhirError, Resource, issue

MIN_SCORE, MAX_SCORE = 0, 10


@cache
def definition() -> dict[str, Any]:
    """The questionnaire data; a missing or broken file fails loudly (a broken deployment)."""
    text = package_files.files(__package__).joinpath("data/hna_questionnaire.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


@dataclass(frozen=True)
class Items:
    """The questionnaire's linkIds: groups (domains) and scored items (concerns and distress)."""

    groups: frozenset[str]
    scored: dict[str, str]  # linkId -> text


@cache
def items() -> Items:
    spec = definition()
    scored = {i["linkId"]: i["text"] for d in spec["domains"] for i in d["items"]}
    scored[spec["distress"]["linkId"]] = spec["distress"]["text"]
    return Items(frozenset(d["linkId"] for d in spec["domains"]), scored)


def accepted_references() -> frozenset[str]:
    """Every way a response may name the hub's questionnaire."""
    spec = definition()
    url, version, rid = spec["url"], spec["version"], spec["id"]
    return frozenset({url, f"{url}|{version}", f"Questionnaire/{rid}", f"Questionnaire/{rid}/_history/{version}"})


def is_hna(response: Resource) -> bool:
    """Whether a QuestionnaireResponse names the hub's HNA questionnaire (in any accepted form)."""
    named = response.get("questionnaire")
    return isinstance(named, str) and named.strip() in accepted_references()


def _item_problems(entries: Any, path: str, groups: frozenset[str], scored: dict[str, str]) -> list[dict[str, Any]]:
    problems: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, item in enumerate(entries if isinstance(entries, list) else []):
        where = f"{path}.item[{index}]"
        link = item.get("linkId") if isinstance(item, dict) else None
        if not isinstance(link, str) or (link not in groups and link not in scored):
            problems.append(issue("error", "value", f"item {link!r} is not an item of the HNA questionnaire", [where]))
            continue
        answers = item.get("answer") or []
        if link in groups:
            if answers:
                problems.append(issue("error", "structure", f"item {link!r} is a group: it takes no answer", [where]))
            problems += _item_problems(item.get("item"), where, groups, scored)
            continue
        if link in seen:
            problems.append(issue("error", "structure", f"item {link!r} is answered more than once", [where]))
        seen.add(link)
        if item.get("item"):
            problems.append(issue("error", "structure", f"item {link!r} is a score: it holds no items", [where]))
        if not isinstance(answers, list) or len(answers) > 1:
            problems.append(issue("error", "structure", f"item {link!r} takes one answer", [f"{where}.answer"]))
            continue
        for answer in answers:
            value = answer.get("valueInteger") if isinstance(answer, dict) else None
            # bool is an int in Python, never a score
            if isinstance(value, bool) or not isinstance(value, int) or not MIN_SCORE <= value <= MAX_SCORE:
                shown = value if value is not None else answer
                problems.append(
                    issue(
                        "error",
                        "value",
                        f"item {link!r} ({scored[link]}): the answer must be an integer from {MIN_SCORE} to "
                        f"{MAX_SCORE}, not {shown!r}",
                        [f"{where}.answer[0]"],
                    )
                )
    return problems


def problems(response: Resource, path: str = "QuestionnaireResponse") -> list[dict[str, Any]]:
    """Why ``response`` does not fit the HNA questionnaire, as OperationOutcome issues naming each item
    (``expression`` under ``path``); empty when it fits. Never raises, whatever the shape."""
    if not is_hna(response):
        named = response.get("questionnaire")
        choices = ", ".join(sorted(accepted_references()))
        return [
            issue(
                "error",
                "not-supported",
                f"QuestionnaireResponse.questionnaire {named!r} is not a questionnaire this hub knows: use {choices}",
                [f"{path}.questionnaire"],
            )
        ]
    found = items()
    return _item_problems(response.get("item"), path, found.groups, found.scored)


def check_responses(data: Resource) -> None:
    """Refuse (``FhirError`` 422, every problem listed) a QuestionnaireResponse, or a Bundle holding
    one, that does not fit the HNA questionnaire. Anything else passes."""
    found: list[dict[str, Any]] = []
    if data.get("resourceType") == "QuestionnaireResponse":
        found = problems(data)
    elif data.get("resourceType") == "Bundle":
        for index, entry in enumerate(data.get("entry") or []):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict) and resource.get("resourceType") == "QuestionnaireResponse":
                found += problems(resource, f"Bundle.entry[{index}].resource")
    if found:
        raise FhirError(422, "processing", found[0]["diagnostics"], issues=found)


def scores(response: Resource) -> dict[str, int]:
    """linkId -> score of a response that fits (``problems`` is empty), through nested groups."""

    def walk(entries: Any) -> dict[str, int]:
        out: dict[str, int] = {}
        for item in entries if isinstance(entries, list) else []:
            if not isinstance(item, dict):
                continue
            for answer in item.get("answer") or []:
                value = answer.get("valueInteger") if isinstance(answer, dict) else None
                if isinstance(value, int) and not isinstance(value, bool):
                    out[str(item.get("linkId"))] = value
            out.update(walk(item.get("item")))
        return out

    return walk(response.get("item"))


def is_support_plan(resource: Resource | None) -> TypeGuard[Resource]:
    """Whether a CarePlan is an HNA support plan: the mapper lists its QuestionnaireResponse in
    ``supportingInfo`` (the MSCC pathway plan lists its ServiceRequest there)."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "CarePlan":
        return False
    refs = resource.get("supportingInfo")
    return any(
        isinstance(ref, dict) and str(ref.get("reference", "")).startswith("QuestionnaireResponse/")
        for ref in (refs if isinstance(refs, list) else [])
    )
