"""Where a referral's pathway state lives: two extensions on its ServiceRequest.

::

    {"url": STEP_URL, "valueCode": "mri-requested"}                       the current step (one)
    {"url": HISTORY_URL, "extension": [                                   one per step reached, in order
        {"url": "step", "valueCode": "mri-requested"},
        {"url": "at", "valueDateTime": "2026-11-25T09:40:00.000Z"},       when it happened (audit time)
        {"url": "from", "valueCode": "triaged-accepted"},                 the step before (absent for received)
        {"url": "recorded", "valueInstant": "..."},                       when the hub recorded it
        {"url": "who", "valueReference": {...}} | {"url": "who", "valueString": "..."},
        {"url": "note", "valueString": "..."},
        {"url": "basis", "valueReference": {"reference": "DiagnosticReport/..."}},
        {"url": "source", "valueString": "api:dev-client" | "hl7v2:<message id>" | "update"}]}

A referral without them is at ``received`` since its first contact. Everything here is pure.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.fhir import Resource

from .steps import START, STEPS

STEP_URL = "urn:mscc:fhir:StructureDefinition:pathway-step"
HISTORY_URL = "urn:mscc:fhir:StructureDefinition:pathway-history"
PATHWAY_URLS = (STEP_URL, HISTORY_URL)


def fhir_time(when: datetime) -> str:
    """A FHIR dateTime/instant in UTC with milliseconds (``Z``); naive times are taken as UTC."""
    aware = when if when.tzinfo else when.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: Any) -> datetime | None:
    """A FHIR dateTime with a time of day as an aware datetime (milliseconds kept); None otherwise."""
    if not isinstance(value, str) or "T" not in value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return truncate(parsed)


def truncate(when: datetime) -> datetime:
    """``when`` in UTC at millisecond precision: the precision the pathway records."""
    aware = when if when.tzinfo else when.replace(tzinfo=UTC)
    return aware.astimezone(UTC).replace(microsecond=aware.microsecond // 1000 * 1000)


@dataclass(frozen=True)
class Entry:
    """One step reached: what, when, from where, who said so."""

    step: str
    at: datetime
    previous: str | None = None
    recorded: datetime | None = None
    who: Resource | str | None = None
    note: str | None = None
    basis: str | None = None
    source: str | None = None

    def to_extension(self) -> Resource:
        parts: list[Resource] = [
            {"url": "step", "valueCode": self.step},
            {"url": "at", "valueDateTime": fhir_time(self.at)},
        ]
        if self.previous:
            parts.append({"url": "from", "valueCode": self.previous})
        if self.recorded:
            parts.append({"url": "recorded", "valueInstant": fhir_time(self.recorded)})
        if isinstance(self.who, dict):
            parts.append({"url": "who", "valueReference": self.who})
        elif self.who:
            parts.append({"url": "who", "valueString": self.who})
        if self.note:
            parts.append({"url": "note", "valueString": self.note})
        if self.basis:
            parts.append({"url": "basis", "valueReference": {"reference": self.basis}})
        if self.source:
            parts.append({"url": "source", "valueString": self.source})
        return {"url": HISTORY_URL, "extension": parts}

    @classmethod
    def from_extension(cls, ext: Resource) -> Entry | None:
        """The entry an extension holds; None when it lacks a known step or a time."""
        parts = {p.get("url"): p for p in ext.get("extension") or [] if isinstance(p, dict)}
        code = (parts.get("step") or {}).get("valueCode")
        at = parse_time((parts.get("at") or {}).get("valueDateTime"))
        if code not in STEPS or at is None:
            return None
        who_part = parts.get("who") or {}
        basis = (parts.get("basis") or {}).get("valueReference") or {}
        return cls(
            step=str(code),
            at=at,
            previous=(parts.get("from") or {}).get("valueCode"),
            recorded=parse_time((parts.get("recorded") or {}).get("valueInstant")),
            who=who_part.get("valueReference") or who_part.get("valueString"),
            note=(parts.get("note") or {}).get("valueString"),
            basis=basis.get("reference"),
            source=(parts.get("source") or {}).get("valueString"),
        )


def has_pathway(request: Resource) -> bool:
    return any(e.get("url") == STEP_URL for e in request.get("extension") or [] if isinstance(e, dict))


def current_step(request: Resource) -> str:
    """The step the extension names; ``received`` when there is none (or it names an unknown step)."""
    for ext in request.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == STEP_URL and ext.get("valueCode") in STEPS:
            return str(ext["valueCode"])
    return START


def history(request: Resource) -> list[Entry]:
    """The steps reached, in the order they were recorded."""
    entries = [
        Entry.from_extension(ext)
        for ext in request.get("extension") or []
        if isinstance(ext, dict) and ext.get("url") == HISTORY_URL
    ]
    return [e for e in entries if e is not None]


def pathway_extensions(request: Resource) -> list[Resource]:
    return [e for e in request.get("extension") or [] if isinstance(e, dict) and e.get("url") in PATHWAY_URLS]


def with_pathway(request: Resource, step_code: str, entries: list[Entry]) -> Resource:
    """A copy of ``request`` whose pathway extensions say ``step_code`` and ``entries`` (other
    extensions kept, in place, before them)."""
    out = copy.deepcopy(request)
    others = [e for e in out.get("extension") or [] if not (isinstance(e, dict) and e.get("url") in PATHWAY_URLS)]
    out["extension"] = [*others, {"url": STEP_URL, "valueCode": step_code}, *(e.to_extension() for e in entries)]
    return out


def keep_pathway(current: Resource | None, new: Resource) -> Resource:
    """``new`` (a referral as a message describes it) with the pathway state of ``current`` kept.

    Referral messages (REF^I13, a resent REF^I12, a FHIR Bundle) know nothing of the pathway: without
    this the next one would erase the step and its history. The ServiceRequest.status the step implies
    is kept too, unless the message cancels the referral (revoked / entered-in-error). For the mapper's
    writer, next to ``_keep_links``; see docs/pathway.md.
    """
    if current is None or new.get("resourceType") != "ServiceRequest" or not has_pathway(current):
        return new
    if has_pathway(new):
        return new
    out = copy.deepcopy(new)
    out["extension"] = [*(out.get("extension") or []), *copy.deepcopy(pathway_extensions(current))]
    if out.get("status") not in ("revoked", "entered-in-error"):
        out["status"] = STEPS[current_step(current)].request_status
    return out
