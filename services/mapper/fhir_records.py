"""FHIR messages to resources: a created ServiceRequest, and transaction / batch / message Bundles.

Intake already validated each body and gave every entry's resource its id (``fhir.entries`` on the
record: fullUrl, method, url, type, id). Here each supported entry becomes a resource with that id,
``urn:uuid:`` and other fullUrl references between entries are rewritten to ``Type/id``, and the UK
Core profile is added. Entries that are not resources to store (DELETE, GET, conditional requests,
operations, unsupported types) are reported as unmapped, never dropped silently.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from shared.store import Document

from .model import MappingError, MappingResult, Patch, Resource, issue

UK_CORE = "https://fhir.hl7.org.uk/StructureDefinition/UKCore-"
STORED_TYPES = ("Patient", "ServiceRequest", "Encounter", "CarePlan", "QuestionnaireResponse")
# Envelope resources of a message Bundle: consumed by the messaging layer, not stored as resources.
ENVELOPE_TYPES = ("MessageHeader",)

Derive = Callable[[Resource], tuple[list[Resource], list[Patch]]]


def with_profile(resource: Resource) -> Resource:
    """The resource with its UK Core profile in ``meta.profile`` (kept once, other profiles kept)."""
    out = copy.deepcopy(resource)
    meta = dict(out.get("meta") or {})
    profile = f"{UK_CORE}{out['resourceType']}"
    profiles = list(meta.get("profile") or [])
    if profile not in profiles:
        profiles.append(profile)
    meta["profile"] = profiles
    for server_field in ("versionId", "lastUpdated", "source"):
        meta.pop(server_field, None)
    out["meta"] = meta
    return out


def _rewrite_references(value: Any, targets: dict[str, str]) -> Any:
    """Every ``reference`` naming another entry (by its fullUrl) now names ``Type/id``."""
    if isinstance(value, dict):
        out = {k: _rewrite_references(v, targets) for k, v in value.items()}
        ref = out.get("reference")
        if isinstance(ref, str) and ref in targets:
            out["reference"] = targets[ref]
        return out
    if isinstance(value, list):
        return [_rewrite_references(v, targets) for v in value]
    return value


def _source_time(data: Resource, received: datetime | None) -> datetime | None:
    stamp = data.get("timestamp")
    if isinstance(stamp, str):
        try:
            return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            pass
    return received


def map_created(record: Document, derive: Derive) -> MappingResult:
    """A resource created through the FHIR API: normalised (UK Core profile) plus what it implies."""
    data: Resource = json.loads(record["raw"])
    rid = record["header"]["id"]
    resource = with_profile({**data, "id": rid})
    implied, patches = derive(resource)
    return MappingResult(resources=[resource, *implied], patches=patches, source_time=record.get("received_at"))


def map_bundle(record: Document, derive: Derive) -> MappingResult:
    """A transaction, batch or message Bundle: its supported entries, references resolved."""
    data: Resource = json.loads(record["raw"])
    entries: list[dict[str, Any]] = data.get("entry") or []
    plan: list[dict[str, Any]] = record.get("fhir", {}).get("entries") or []
    if len(plan) != len(entries):
        raise MappingError("the record's entry plan does not match the Bundle (stored by an older intake?)")
    targets: dict[str, str] = {}
    for item in plan:
        if item.get("fullUrl") and item.get("type") in STORED_TYPES and item.get("id"):
            targets[item["fullUrl"]] = f"{item['type']}/{item['id']}"
            # A resource may also be referred to by its relative Type/old-id from the same Bundle.
    result = MappingResult(source_time=_source_time(data, record.get("received_at")))
    bundle_type = data.get("type")
    for index, (entry, item) in enumerate(zip(entries, plan, strict=True)):
        resource = entry.get("resource") or {}
        rtype = resource.get("resourceType") or item.get("type")
        where = f"Bundle.entry[{index}]"
        method = item.get("method")
        if rtype in ENVELOPE_TYPES and bundle_type == "message":
            continue
        if rtype not in STORED_TYPES:
            result.unmapped.append(
                f"{where} {method or ''} {rtype or item.get('url') or ''}: not a type the hub stores".strip()
            )
            continue
        if method not in (None, "POST", "PUT") or not item.get("id"):
            result.unmapped.append(f"{where} {method} {item.get('url')}: only create and update by id are applied")
            continue
        mapped = with_profile(_rewrite_references({**resource, "id": item["id"]}, targets))
        implied, patches = derive(mapped)
        result.resources += [mapped, *implied]
        result.patches += patches
    if not result.resources:
        result.issues.append(issue("warning", "informational", "the Bundle holds no resource the hub stores"))
    return result
