"""FHIR update (PUT with If-Match, or the body's meta.versionId) of a ServiceRequest, Encounter or CarePlan,
under the pathway's rules.

The pathway step is the one source of the pathway's statuses. So:
- a referral's step changes only through its step extension (or ``$transition``): a PUT that changes
  it is a transition, checked by the same rules, and moves the Encounter and CarePlan with it;
- the step history extensions are the server's: a body may leave them out (they are kept) or send
  them back unchanged, never edit them;
- ServiceRequest.status, the assessment Encounter's status, and the pathway CarePlan's status and
  MRI / MDT / plan activity statuses may only stay as stored or take the value the step implies.
Anything else in these resources may change. Each update is a new version with its history entry
and exactly one outbox event: kind "updated", or "transition" when the step changed. A referral's
data-quality Task (data_quality.py) is re-derived from the new content and, when it
changes, written in the same transaction with its own event.

Failures are ``FhirError``: 400 (id does not match), 405 (type not updatable, or no such resource:
update never creates),
409 (a step change not allowed; concurrent changes), 412 (If-Match or meta.versionId is not the current
version), 422 (a pathway-owned field or the history changed), 428 (neither If-Match nor meta.versionId).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.fhir import FhirError, Resource
from shared.resources import content_of
from shared.retry import TransientError, run_transaction
from shared.store import Document, Store

from . import commit
from .data_quality import referral_task
from .effects import expected_activities, plan_activity_statuses
from .neurological import referral_reading as neurological
from .plan import assessment_id, care_plan_id
from .record import HISTORY_URL, STEP_URL, current_step, truncate, with_pathway
from .steps import STEPS
from .transitions import (
    Loaded,
    Move,
    Origin,
    changes_for,
    check_version,
    load,
    plan_entries,
    write_changes,
)

UPDATABLE = ("ServiceRequest", "Encounter", "CarePlan")


@dataclass
class UpdateResult:
    current: Document
    changed: bool
    event_id: str | None = None


def parse_if_match(value: str | None) -> int:
    """The version an If-Match header names (``W/"3"`` or ``"3"``); ``FhirError`` 428 when absent,
    400 when it is not a version."""
    if value is None or not value.strip():
        raise FhirError(
            428, "required", 'If-Match is required for update: send the ETag of the version you read, e.g. W/"3"'
        )
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise FhirError(400, "invalid", f'If-Match {value!r} is not a version ETag such as W/"3"')
    return int(text)


def expected_version(if_match: str | None, body: Resource) -> int:
    """The version an update is made against: ``If-Match`` when sent, else the body's ``meta.versionId``
    (what a client sends back after reading the resource, as fhirpy's and fhirclient's ``save()`` do).
    ``FhirError`` 428 with neither, 400 when either is not a version. A stale one is refused later (412)."""
    if if_match is not None and if_match.strip():
        return parse_if_match(if_match)
    meta = body.get("meta")
    version = meta.get("versionId") if isinstance(meta, dict) else None
    if version is None:
        return parse_if_match(None)
    if not isinstance(version, str) or not version.isdigit():
        raise FhirError(400, "invalid", f"meta.versionId {version!r} is not a version", expression=["meta.versionId"])
    return int(version)


def _reference_id(value: Any, resource_type: str) -> str | None:
    ref = (value or {}).get("reference") if isinstance(value, dict) else None
    prefix = f"{resource_type}/"
    return ref[len(prefix) :] if isinstance(ref, str) and ref.startswith(prefix) else None


def referral_of(resource: Resource) -> str | None:
    """The referral whose assessment Encounter or pathway CarePlan this is; None for other ones."""
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if rtype == "Encounter":
        candidates = [_reference_id(r, "ServiceRequest") for r in resource.get("basedOn") or []]
        return next((c for c in candidates if c and assessment_id(c) == rid), None)
    if rtype == "CarePlan":
        candidates = [_reference_id(r, "ServiceRequest") for r in resource.get("supportingInfo") or []]
        return next((c for c in candidates if c and care_plan_id(c) == rid), None)
    return None


def _owned(field: str, stored: Any, sent: Any, implied: Any, step: str) -> None:
    """``FhirError`` 422 unless ``sent`` is what is stored or what the step implies."""
    if sent not in (stored, implied):
        raise FhirError(
            422,
            "business-rule",
            f"{field} is set by the pathway step ({step!r} implies {implied!r}; stored {stored!r}): "
            "move the referral with $transition or its pathway-step extension instead",
            expression=[field],
        )


def _check_owned(loaded: Loaded, stored: Resource, sent: Resource) -> None:
    step = loaded.step
    reached = [e.step for e in loaded.entries] or [step]
    rtype = sent["resourceType"]
    if rtype == "Encounter":
        _owned("Encounter.status", stored.get("status"), sent.get("status"), STEPS[step].encounter_status, step)
    elif rtype == "CarePlan":
        _owned("CarePlan.status", stored.get("status"), sent.get("status"), STEPS[step].plan_status, step)
        implied, was, now = expected_activities(reached), plan_activity_statuses(stored), plan_activity_statuses(sent)
        for key, status in now.items():
            _owned(f"CarePlan.activity[{key}].detail.status", was.get(key), status, implied[key], step)


def _sent_history(body: Resource) -> list[Resource]:
    return [e for e in body.get("extension") or [] if isinstance(e, dict) and e.get("url") == HISTORY_URL]


def _without_pathway(body: Resource) -> Resource:
    out = dict(body)
    kept = [
        e for e in body.get("extension") or [] if not (isinstance(e, dict) and e.get("url") in (STEP_URL, HISTORY_URL))
    ]
    if kept:
        out["extension"] = kept
    else:
        out.pop("extension", None)
    return out


def _sent_step(body: Resource) -> str | None:
    sent = [e for e in body.get("extension") or [] if isinstance(e, dict) and e.get("url") == STEP_URL]
    return current_step(body) if sent else None


class Updater:
    """FHIR update for the three pathway resource types; ``clock`` gives the time of each change."""

    def __init__(self, store: Store, clock: Callable[[], datetime] | None = None) -> None:
        self._store = store
        self._clock = clock or (lambda: datetime.now(UTC))

    async def update(
        self, body: Resource, resource_type: str, resource_id: str, expected_version: int, who: str, origin: Origin
    ) -> UpdateResult:
        """Apply a validated ``body`` as the next version of ``resource_type/resource_id``."""
        if resource_type not in UPDATABLE:
            raise FhirError(405, "not-supported", f"update is supported for {', '.join(UPDATABLE)} only")
        if body.get("id") != resource_id:
            raise FhirError(
                400,
                "invalid",
                f"the body's id {body.get('id')!r} is not {resource_id!r} (the URL's id)",
                expression=["id"],
            )

        async def once() -> UpdateResult:
            current = await self._store.resources.find_one({"_id": f"{resource_type}/{resource_id}"})
            if current is None:
                raise FhirError(
                    405, "not-supported", f"{resource_type}/{resource_id} does not exist: update never creates"
                )
            check_version(current, expected_version)
            now = truncate(self._clock())
            planned = await self._plan(current, body, now, who, origin)
            if planned is None:
                return UpdateResult(current, changed=False)
            changes, event = planned
            alongside = await self._data_quality(changes[0].content)
            head, written = await write_changes(self._store, changes, event, now, origin, alongside)
            return UpdateResult(head, True, written["_id"])

        try:
            return await run_transaction(once, commit.RETRY, what=f"updating {resource_type}/{resource_id}")
        except TransientError as exc:
            raise FhirError(
                409, "conflict", f"{resource_type}/{resource_id} kept changing while it was updated: try again"
            ) from exc

    async def _data_quality(self, content: Resource) -> tuple[commit.Change, ...]:
        """A referral's data-quality Task re-derived from the referral's new content (created when the
        referral has none yet); nothing for other resources or when the Task does not change."""
        if content.get("resourceType") != "ServiceRequest":
            return ()
        task = referral_task(content, None, neurological(content))
        current = await self._store.resources.find_one({"_id": f"Task/{task['id']}"})
        if current is not None and content_of(current["resource"]) == content_of(task):
            return ()
        return (commit.Change(current or commit.absent("Task", task["id"]), task),)

    async def _plan(
        self, current: Document, body: Resource, now: datetime, who: str, origin: Origin
    ) -> tuple[list[commit.Change], dict[str, Any]] | None:
        stored: Resource = current["resource"]
        if body["resourceType"] == "ServiceRequest":
            return await self._plan_request(current, body, now, who, origin)
        referral = referral_of(stored)
        if referral is not None:
            _check_owned(await load(self._store, referral), stored, body)
        if content_of(body) == content_of(stored):
            return None
        return [commit.Change(current, body)], {"kind": "updated"}

    async def _plan_request(
        self, current: Document, body: Resource, now: datetime, who: str, origin: Origin
    ) -> tuple[list[commit.Change], dict[str, Any]] | None:
        sent_step = _sent_step(body)
        has_plan = await self._store.resources.find_one({"_id": f"CarePlan/{care_plan_id(current['id'])}"}, {"_id": 1})
        if has_plan is None:
            if sent_step is not None or _sent_history(body):
                raise FhirError(
                    409,
                    "business-rule",
                    f"ServiceRequest/{current['id']} is not on the MSCC pathway: it takes no pathway extensions",
                )
            if content_of(body) == content_of(current["resource"]):
                return None
            return [commit.Change(current, body)], {"kind": "updated"}
        loaded = await load(self._store, current["id"])
        if loaded.request["version"] != current["version"]:
            raise commit.Conflict(f"ServiceRequest/{current['id']} changed while the update was checked")
        kept = [e.to_extension() for e in loaded.entries]
        sent_history = _sent_history(body)
        if sent_history and sent_history != kept:
            raise FhirError(
                422,
                "business-rule",
                "the pathway-history extensions are kept by the server: send them back unchanged or leave them out",
                expression=["ServiceRequest.extension"],
            )
        base = _without_pathway(body)
        stored_status = current["resource"].get("status")
        if sent_step is not None and sent_step != loaded.step:
            entries = plan_entries(loaded, Move(sent_step, None, "pathway step changed by update", who), now, origin)
            if entries is None:
                return None
            implied = STEPS[sent_step].request_status
            _owned("ServiceRequest.status", stored_status, body.get("status"), implied, sent_step)
            event = {"kind": "transition", "step": sent_step, "previous_step": loaded.step, "at": entries[-1].at}
            return changes_for(loaded, entries, base), event
        implied = STEPS[loaded.step].request_status
        _owned("ServiceRequest.status", stored_status, body.get("status"), implied, loaded.step)
        content = with_pathway(base, loaded.step, loaded.entries) if loaded.entries else base
        if content_of(content) == content_of(current["resource"]):
            return None
        return [commit.Change(current, content)], {"kind": "updated"}
