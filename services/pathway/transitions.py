"""Moving a referral along the pathway: check the move, build the new versions, write them atomically.

``apply_transition`` reads the referral ServiceRequest, its assessment Encounter and its pathway
CarePlan (ids from ``plan.py``), checks the move against ``steps.py``, and writes new
versions of those that change plus exactly one outbox event (kind "transition") in one transaction,
each resource guarded by the version it was read at. A concurrent change makes the guard fail; the
whole move is then re-read and re-checked, so of two moves from the same step only one can win.

Failures are ``FhirError`` (answered as OperationOutcome):
  404  no such referral
  409  the move is not allowed from the current step (the issue lists the allowed ones, also as codes
       in ``issue.details``), the referral has no pathway CarePlan (yet), it is already at that step
       since another time, or it kept changing under us
  412  ``expected_version`` (If-Match) is not the current version
  422  an unknown step, or a time in the future or before first contact
Repeating a move (same step and time, or the same step with no time given) changes nothing and
returns the current state.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.fhir import FhirError, Resource, issue
from shared.resources import content_of
from shared.retry import TransientError, run_transaction
from shared.store import Document, Store
from shared.visibility import trusts_of

from . import commit
from .effects import care_plan_after, encounter_after, request_after
from .plan import assessment_id, care_plan_id
from .record import STEP_URL, Entry, current_step, fhir_time, has_pathway, history, parse_time, truncate
from .steps import START, STEPS, allowed

log = logging.getLogger(__name__)

STEP_SYSTEM = "urn:mscc:fhir:CodeSystem:pathway-step"
CLOCK_SKEW = timedelta(minutes=5)  # a time this far ahead of the hub's clock is still "now"


@dataclass(frozen=True)
class Move:
    """What is asked: the step, when it happened (None: now), and who says so."""

    step: str
    at: datetime | None = None
    note: str | None = None
    who: Resource | str | None = None
    basis: str | None = None  # a reference to what shows it (e.g. the MRI DiagnosticReport)


@dataclass(frozen=True)
class Origin:
    """Where a change comes from: ``source`` for the history ("api:<client>", "hl7v2:<id>", "update"),
    the message it was caused by, and the inbound request to keep (written with the change)."""

    source: str = "api"
    message_id: str | None = None
    record: Document | None = None


@dataclass
class Loaded:
    """The pathway resources of one referral as read (``resources`` documents)."""

    request: Document
    plan: Document
    encounter: Document | None
    step: str
    entries: list[Entry]
    first_contact: datetime


@dataclass
class TransitionResult:
    request: Document  # the referral's current ``resources`` document after the move
    step: str
    previous_step: str
    changed: bool
    event_id: str | None = None
    versions: list[str] = field(default_factory=list)


async def load(store: Store, referral_id: str) -> Loaded:
    """The referral's pathway; ``FhirError`` 404 (no referral) or 409 (no pathway CarePlan)."""
    request = await store.resources.find_one({"_id": f"ServiceRequest/{referral_id}"})
    if request is None:
        raise FhirError(404, "not-found", f"ServiceRequest/{referral_id} is not known")
    plan = await store.resources.find_one({"_id": f"CarePlan/{care_plan_id(referral_id)}"})
    if plan is None:
        raise FhirError(
            409,
            "business-rule",
            f"ServiceRequest/{referral_id} has no MSCC pathway (CarePlan) yet: it is not an MSCC referral, "
            "or the referral is still being processed (try again shortly)",
        )
    encounter = await store.resources.find_one({"_id": f"Encounter/{assessment_id(referral_id)}"})
    step, entries = await _state(store, request)
    return Loaded(request, plan, encounter, step, entries, await first_contact(store, request, plan["resource"]))


async def _state(store: Store, request: Document) -> tuple[str, list[Entry]]:
    """The step and history: from the referral, else from its latest version that had them (a referral
    message mapped since may have replaced the content without them; see ``record.keep_pathway``)."""
    resource = request["resource"]
    if has_pathway(resource):
        return current_step(resource), history(resource)
    if int(request["version"]) > 1:
        older = await store.history.find_one(
            {"type": "ServiceRequest", "id": request["id"], "resource.extension.url": STEP_URL},
            sort=[("version", -1)],
        )
        if older is not None:
            log.warning("pathway state recovered from an earlier version", extra={"referral": request["id"]})
            return current_step(older["resource"]), history(older["resource"])
    return START, []


async def first_contact(store: Store, request: Document, plan: Resource) -> datetime:
    """CarePlan.period.start (set by the mapper from the referral), else when the hub first stored it."""
    start = parse_time((plan.get("period") or {}).get("start"))
    if start is not None:
        return start
    first = await store.history.find_one({"_id": f"ServiceRequest/{request['id']}/_history/1"})
    when: datetime = (first or request)["last_updated"]
    return truncate(when)


def _not_allowed(current: str, wanted: str) -> FhirError:
    nexts = allowed(current)
    listed = ", ".join(nexts) if nexts else "none: it is a final step"
    diagnostics = f"the referral is at {current!r}; {current} -> {wanted} is not allowed. Allowed next steps: {listed}"
    item = issue("error", "business-rule", diagnostics, ["ServiceRequest.extension"])
    item["details"] = {
        "coding": [{"system": STEP_SYSTEM, "code": n, "display": STEPS[n].display} for n in nexts],
        "text": f"allowed next steps from {current}",
    }
    return FhirError(409, "business-rule", diagnostics, issues=[item])


def plan_entries(loaded: Loaded, move: Move, now: datetime, origin: Origin) -> list[Entry] | None:
    """The history after ``move``, or None when it was already made (idempotent repeat).

    ``FhirError`` 422 for an unknown step or an impossible time, 409 for a move not allowed.
    """
    if move.step not in STEPS:
        raise FhirError(
            422,
            "code-invalid",
            f"unknown pathway step {move.step!r}; from {loaded.step!r} the allowed next steps are: "
            f"{', '.join(allowed(loaded.step)) or 'none'}",
        )
    at = truncate(move.at) if move.at else None
    if at is None and loaded.step == move.step:
        return None  # a retry that did not say when: already there
    if at is not None and any(e.step == move.step and e.at == at for e in loaded.entries):
        return None  # the same move, made before
    if loaded.step == move.step:
        since = next((fhir_time(e.at) for e in reversed(loaded.entries) if e.step == move.step), "first contact")
        raise FhirError(409, "business-rule", f"the referral is already at {move.step!r}, since {since}")
    if move.step not in allowed(loaded.step):
        raise _not_allowed(loaded.step, move.step)
    when = at or truncate(now)
    if when > now + CLOCK_SKEW:
        raise FhirError(422, "invariant", f"time {fhir_time(when)} is in the future (now {fhir_time(now)})")
    if when < loaded.first_contact:
        raise FhirError(
            422, "invariant", f"time {fhir_time(when)} is before first contact ({fhir_time(loaded.first_contact)})"
        )
    entries = list(loaded.entries)
    if not entries:
        entries.append(Entry(START, loaded.first_contact, recorded=truncate(now), note="first contact"))
    entries.append(
        Entry(
            move.step,
            when,
            previous=loaded.step,
            recorded=truncate(now),
            who=move.who,
            note=move.note,
            basis=move.basis,
            source=origin.source,
        )
    )
    return entries


def changes_for(loaded: Loaded, entries: list[Entry], request_content: Resource | None = None) -> list[commit.Change]:
    """New content for the referral (``request_content`` if given, e.g. a PUT body) and for the
    Encounter and CarePlan where the step changes them."""
    reached = [e.step for e in entries]
    at = entries[-1].at
    base = request_content if request_content is not None else loaded.request["resource"]
    out = [commit.Change(loaded.request, request_after(base, entries))]
    if loaded.encounter is not None:
        encounter = encounter_after(loaded.encounter["resource"], reached[-1], at)
        if content_of(encounter) != content_of(loaded.encounter["resource"]):
            out.append(commit.Change(loaded.encounter, encounter))
    plan = care_plan_after(loaded.plan["resource"], reached, at)
    if content_of(plan) != content_of(loaded.plan["resource"]):
        out.append(commit.Change(loaded.plan, plan))
    return out


def check_version(doc: Document, expected_version: int | None) -> None:
    """``FhirError`` 412 when ``expected_version`` is given and is not the stored version."""
    if expected_version is not None and int(doc["version"]) != expected_version:
        raise FhirError(
            412,
            "conflict",
            f"{doc['_id']} is at version {doc['version']}, not {expected_version} (If-Match): read it again",
        )


def _source_uri(message_id: str | None, source: str) -> str:
    """meta.source: the causing message as ``urn:uuid:`` (as the mapper writes it), else the origin."""
    try:
        return f"urn:uuid:{uuid.UUID(str(message_id))}"
    except ValueError:
        return f"urn:mscc:{source}"


async def write_changes(
    store: Store,
    changes: list[commit.Change],
    event: dict[str, Any],
    now: datetime,
    origin: Origin,
    alongside: tuple[commit.Change, ...] = (),
) -> tuple[Document, dict[str, Any]]:
    """Write ``changes`` and ``event`` (on the first change's new version, naming every version the
    change wrote); the first change's new current document and the event. ``alongside``: changes to
    other resources the same request implies (the referral's data-quality Task), each with its own
    "created"/"updated" event, in the same transaction. ``commit.Conflict`` when something moved since
    it was read."""
    record = origin.record
    message_id = record["_id"] if record is not None else origin.message_id
    source = _source_uri(message_id, origin.source)
    first, *rest = changes
    # What the referral implies (its Encounter, CarePlan, data-quality Task) is visible to its trusts.
    trusts = trusts_of(first.current)
    head = commit.new_version(first, now, source, message_id, event, trusts)
    if head is None or head.event is None:
        raise commit.Conflict(f"{first.current['_id']}: the change changes nothing")
    versions = [head, *(v for c in rest if (v := commit.new_version(c, now, source, message_id, None, trusts)))]
    extra = [v for c in alongside if (v := commit.new_version(c, now, source, message_id, None, trusts)) is not None]
    # The head event names every version of the change (the referral, its Encounter and CarePlan).
    full = dataclasses.replace(head.event, resources=tuple(v.history.key for v in versions))
    versions = [dataclasses.replace(head, event=full), *[dataclasses.replace(v, event=None) for v in versions[1:]]]
    if record is not None:
        resources = [*(full.resources or ()), *(v.history.key for v in extra)]
        record = {**record, "processing": {**record["processing"], "resources": resources}}
    await commit.write(store, [*versions, *extra], record)
    return versions[0].current.to_doc(), full.to_doc()


async def apply_transition(
    store: Store,
    referral_id: str,
    step: str,
    at: datetime | None,
    note: str | None = None,
    who: Resource | str | None = None,
    expected_version: int | None = None,
    *,
    basis: str | None = None,
    origin: Origin | None = None,
    clock: Callable[[], datetime] | None = None,
) -> TransitionResult:
    """Move referral ``referral_id`` to ``step`` (at ``at``, default now); see the module docstring for
    the ``FhirError``s. ``PyMongoError`` if the database fails other than by a conflict."""
    origin = origin or Origin()
    now_of = clock or (lambda: datetime.now(UTC))
    move = Move(step, at, note, who, basis)

    async def once() -> TransitionResult:
        loaded = await load(store, referral_id)
        check_version(loaded.request, expected_version)
        now = truncate(now_of())
        entries = plan_entries(loaded, move, now, origin)
        if entries is None:
            return TransitionResult(loaded.request, loaded.step, loaded.step, changed=False)
        changes = changes_for(loaded, entries)
        try:
            event = {"kind": "transition", "step": step, "previous_step": loaded.step, "at": entries[-1].at}
            if who is not None:
                event["who"] = who
            if note:
                event["note"] = note
            head, written = await write_changes(store, changes, event, now, origin)
        except FhirError as exc:  # content the pathway built did not validate: a bug here, not the caller's
            log.error("pathway built invalid content", extra={"referral": referral_id, "reason": str(exc)})
            raise FhirError(500, "exception", f"the pathway could not build valid resources: {exc}") from exc
        return TransitionResult(head, step, loaded.step, True, written["_id"], written["resources"])

    try:
        return await run_transaction(once, commit.RETRY, what=f"moving ServiceRequest/{referral_id}")
    except TransientError as exc:
        raise FhirError(
            409, "conflict", f"ServiceRequest/{referral_id} kept changing while it was moved: try again"
        ) from exc
