"""Notification Bundles and status Parameters, as the backport's R4 profiles shape them.

- ``notification_bundle``: a ``history`` Bundle; the first entry is the status ``Parameters``
  (``GET Subscription/{id}/$status``, ``200``), then one entry per event: none (``empty``), the focus's
  ``fullUrl`` (``id-only``), or the focus resource at the event's version (``full-resource``).
- ``status_parameters``: subscription, topic, status, type, events-since-subscription-start, one
  ``notification-event`` per event (event-number, timestamp, focus unless ``empty``), ``error`` when
  the subscription is in error, and any of the hub's additions (``mscc-*`` parameters, for ``$status``).

Pure functions: the caller supplies the resources and the time.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.fhir import Resource
from shared.ids import NAMESPACE

from .backport import NOTIFICATION_PROFILE, STATUS_PROFILE, event_detail_extension
from .model import DATETIME_DETAILS, Delivery, PayloadContent, Status, instant
from .topics import topic_url

NotificationType = str  # handshake | heartbeat | event-notification | query-status | query-event
ROUTINE_KINDS = ("created", "updated")


@dataclass(frozen=True)
class StatusView:
    """What the status Parameters say about a subscription."""

    subscription_id: str
    topic: str
    status: Status
    events_since_start: int
    error: str | None = None


def fhir_base(base_url: str) -> str:
    return base_url.rstrip("/") + "/fhir"


def stable_uuid(name: str) -> str:
    """The same UUID for the same name: a notification's Bundle id is the same on every attempt."""
    return str(uuid.uuid5(NAMESPACE, name))


def _detail(delivery: Delivery, base_url: str) -> list[dict[str, Any]]:
    event = delivery.event
    if event.kind in ROUTINE_KINDS and not event.detail:
        return []
    parts: list[dict[str, Any]] = [{"url": "kind", "valueCode": event.kind}]
    for key, value in sorted(event.detail.items()):
        kind = "valueDateTime" if key in DATETIME_DETAILS else "valueCode"
        parts.append({"url": key.replace("_", "-"), kind: value})
    return [{"url": event_detail_extension(base_url), "extension": parts}]


def notification_event(delivery: Delivery, base_url: str, content: PayloadContent) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"name": "event-number", "valueString": str(delivery.event_number)},
        {"name": "timestamp", "valueInstant": instant(delivery.event.occurred_at)},
    ]
    item: dict[str, Any] = {"name": "notification-event", "part": parts}
    if content != "empty":  # empty carries nothing about the event beyond its number and time
        parts.append(
            {
                "name": "focus",
                "valueReference": {"reference": f"{fhir_base(base_url)}/{delivery.event.focus.reference}"},
            }
        )
        detail = _detail(delivery, base_url)
        if detail:
            item["extension"] = detail
    return item


def status_parameters(
    view: StatusView,
    base_url: str,
    kind: NotificationType,
    deliveries: list[Delivery] | None = None,
    content: PayloadContent = "id-only",
    additions: list[dict[str, Any]] | None = None,
) -> Resource:
    base = fhir_base(base_url)
    parameters: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": f"{base}/Subscription/{view.subscription_id}"}},
        {"name": "topic", "valueCanonical": topic_url(base_url, view.topic)},
        {"name": "status", "valueCode": view.status},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(view.events_since_start)},
    ]
    parameters += [notification_event(d, base_url, content) for d in deliveries or []]
    if view.error:
        parameters.append({"name": "error", "valueCodeableConcept": {"text": view.error}})
    parameters += additions or []
    return {"resourceType": "Parameters", "meta": {"profile": [STATUS_PROFILE]}, "parameter": parameters}


def focus_entry(
    delivery: Delivery, base_url: str, resource: Resource | None, content: PayloadContent
) -> dict[str, Any]:
    """The entry for an event's focus: fullUrl, the resource when ``full-resource``, request/response as a
    history Bundle needs them (an SLA event changed nothing: it is a read of the version it is about)."""
    focus = delivery.event.focus
    entry: dict[str, Any] = {"fullUrl": f"{fhir_base(base_url)}/{focus.type}/{focus.id}"}
    if content == "full-resource" and resource is not None:
        entry["resource"] = resource
    if delivery.event.kind == "sla" or focus.version is None:
        entry["request"] = {"method": "GET", "url": focus.reference}
        entry["response"] = {"status": "200"}
    elif focus.version == 1:
        entry["request"] = {"method": "POST", "url": focus.type}
        entry["response"] = {"status": "201", "etag": 'W/"1"'}
    else:
        entry["request"] = {"method": "PUT", "url": focus.key}
        entry["response"] = {"status": "200", "etag": f'W/"{focus.version}"'}
    return entry


def notification_bundle(
    view: StatusView,
    base_url: str,
    kind: NotificationType,
    deliveries: list[Delivery],
    resources: dict[str, Resource],
    content: PayloadContent,
    now: datetime,
    bundle_id: str,
) -> Resource:
    """The Bundle POSTed to a rest-hook endpoint (and returned by ``$events``). ``resources`` maps a
    focus reference (``Type/id/_history/N``) to the resource at that version, for ``full-resource``."""
    parameters = status_parameters(view, base_url, kind, deliveries, content)
    parameters["id"] = stable_uuid(f"{bundle_id}:status")
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"urn:uuid:{parameters['id']}",
            "resource": parameters,
            "request": {"method": "GET", "url": f"Subscription/{view.subscription_id}/$status"},
            "response": {"status": "200"},
        }
    ]
    if content != "empty":
        entries += [focus_entry(d, base_url, resources.get(d.event.focus.reference), content) for d in deliveries]
    return {
        "resourceType": "Bundle",
        "id": bundle_id,
        "meta": {"profile": [NOTIFICATION_PROFILE]},
        "type": "history",
        "timestamp": instant(now),
        "entry": entries,
    }


def status_bundle(parameters: Resource, now: datetime) -> Resource:
    """What ``$status`` returns: a searchset Bundle holding the status Parameters."""
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "timestamp": instant(now),
        "total": 1,
        "entry": [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": parameters, "search": {"mode": "match"}}],
    }
