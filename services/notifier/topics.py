"""The topics a subscription can name, and which events belong to each.

R4 has no SubscriptionTopic resource: a topic is a canonical URL, ``{base}/fhir/SubscriptionTopic/{code}``,
advertised in the CapabilityStatement (backport ``capabilitystatement-subscriptiontopic-canonical``) and
described in docs/notifications.md. Nothing is served at that URL.

    referral-status  a ServiceRequest is created, or its status or MSCC pathway step changes; every
                     "transition" event (a pathway step recorded), whatever its focus
    hna-completed    the support plan of a Holistic Needs Assessment becomes active (its response is
                     "completed" or "amended"): the event follows the plan, so "HNA completed" is never
                     announced for a response that got no plan (the mapper records why on the message)
    sla              every "sla" event (out-of-hours, at-risk, breached)
    data-quality     a referral's data-quality Task is created with something missing, or what it lists
                     as missing, or its status, changes (completed when the referral has it all)
    patient-review   a message is held because its patient conflicts with the stored one: its "Review
                     patient match" Task is created, or its status changes (applied: completed,
                     rejected). The Task is owned and requested by the hub's own organisation, so only
                     the MSCC team's subscription (``Task?owner=Organization/<hub>``) matches it

An update that changes nothing a topic is about (a profile added, a note edited) notifies no one: the
previous version of the focus is compared with the event's version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.fhir import Resource
from shared.hna import is_support_plan
from shared.review_task import is_review_task

from .backport import hub_url
from .model import ChangeEvent

# The pathway step extension, as services/pathway/record.py writes it on the referral ServiceRequest.
PATHWAY_STEP_URL = "urn:mscc:fhir:StructureDefinition:pathway-step"


@dataclass(frozen=True)
class Topic:
    code: str
    title: str
    description: str
    # Resource types a filter of this topic may name. A ServiceRequest filter on an event about another
    # resource is evaluated on the referrals that resource belongs to (see ``matching``).
    filter_types: tuple[str, ...]


TOPICS: dict[str, Topic] = {
    t.code: t
    for t in (
        Topic(
            "referral-status",
            "MSCC referral status",
            "A referral (ServiceRequest) is created, its status or its MSCC pathway step changes, or a "
            "pathway transition is recorded.",
            ("ServiceRequest",),
        ),
        Topic(
            "hna-completed",
            "Holistic Needs Assessment completed",
            "A Holistic Needs Assessment is completed and its Personalised Care and Support Plan (CarePlan) "
            "is made: the focus is the plan, which names the QuestionnaireResponse in supportingInfo.",
            ("CarePlan", "ServiceRequest"),
        ),
        Topic(
            "sla",
            "MSCC SLA events",
            "A referral's NICE NG234 clock event: out-of-hours arrival, at risk, or breached.",
            ("ServiceRequest",),
        ),
        Topic(
            "data-quality",
            "MSCC referral data quality",
            "A referral lacks part of the MSCC minimum data (NHS number, referring organisation, referrer "
            "contact, primary cancer, neurological status): its Task is created, what it lists as missing "
            "changes, or it is completed.",
            ("Task", "ServiceRequest"),
        ),
        Topic(
            "patient-review",
            "MSCC patient match review",
            "A message is held because its patient conflicts with the stored patient (nothing from it is on "
            "the pathway): its 'Review patient match' Task is created, applied (completed) or rejected. "
            "For the MSCC team only: filter on Task?owner=Organization/<the hub's ODS code>.",
            ("Task",),
        ),
    )
}


def topic_url(base_url: str, code: str) -> str:
    return hub_url(base_url, "SubscriptionTopic", code)


def topic_of(criteria: str, base_url: str) -> Topic | None:
    """The topic whose canonical URL is ``criteria`` (a ``|version`` suffix is ignored)."""
    canonical = criteria.split("|", 1)[0].strip()
    for topic in TOPICS.values():
        if canonical == topic_url(base_url, topic.code):
            return topic
    return None


def _step(resource: Resource) -> Any:
    for ext in resource.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == PATHWAY_STEP_URL:
            return ext.get("valueCode")
    return None


def _missing(task: Resource) -> tuple[Any, tuple[str, ...]]:
    """A data-quality Task's status and the item codes it lists as missing (``Task.input``)."""
    codes = [
        str(coding.get("code"))
        for entry in task.get("input") or []
        if isinstance(entry, dict)
        for coding in (entry.get("type") or {}).get("coding") or []
        if isinstance(coding, dict)
    ]
    return task.get("status"), tuple(sorted(codes))


def _data_quality(event: ChangeEvent, current: Resource | None, previous: Resource | None) -> bool:
    # Referrals' data-quality Tasks (services/mapper/data_quality.py); not the review Tasks of held
    # messages (their own topic, below).
    if event.focus.type != "Task" or event.kind == "transition" or is_review_task(current):
        return False
    if current is None:
        return True
    if previous is None:
        # A referral complete from its first message gets a completed Task: nothing to tell anyone.
        return current.get("status") != "completed"
    return _missing(current) != _missing(previous)


def _patient_review(event: ChangeEvent, current: Resource | None, previous: Resource | None) -> bool:
    """A held message's review Task: created (always told: the hold is the news), or its status changed."""
    if event.focus.type != "Task" or event.kind == "transition" or not is_review_task(current):
        return False
    assert current is not None
    return previous is None or current.get("status") != previous.get("status")


def triggered(code: str, event: ChangeEvent, current: Resource | None, previous: Resource | None) -> bool:
    """Whether ``event`` belongs to topic ``code``. ``current`` is the focus at the event's version and
    ``previous`` the version before (None when unknown: the event then counts, as losing a status
    change is worse than a duplicate)."""
    if code == "sla":
        return event.kind == "sla"
    if event.kind == "sla":
        return False
    if code == "referral-status":
        if event.kind == "transition":
            return True
        if event.focus.type != "ServiceRequest":
            return False
        if event.kind == "created" or current is None or previous is None:
            return True
        return (current.get("status"), _step(current)) != (previous.get("status"), _step(previous))
    if code == "data-quality":
        return _data_quality(event, current, previous)
    if code == "patient-review":
        return _patient_review(event, current, previous)
    if code == "hna-completed":
        if event.focus.type != "CarePlan" or event.kind == "transition" or not is_support_plan(current):
            return False
        return current.get("status") == "active" and (previous is None or previous.get("status") != "active")
    return False
