"""Writing mapped resources: new versions only on change, history, outbox events, all in one transaction.

For a batch of mapped messages (in arrival order) the writer reads the current version of every
resource they touch, applies each message's resources and patches in memory, and commits in one
MongoDB transaction: the history versions, the new current versions (each guarded by the version it
was read at), one outbox event per change, and the messages' processing records. A concurrent writer
makes the guard fail; the whole batch is then retried from a fresh read, so no change is lost or doubled.

Rules:
- content that equals the current version (ids, versionId, lastUpdated and source aside) is no change;
- a message older (MSH-7, Bundle.timestamp) than the one that last changed a resource does not
  overwrite it (out-of-order arrival); it is reported as stale on the processing record;
- a message dated more than ``future_skew`` ahead of the hub's clock (a sender's clock or time zone
  wrong) is ordered by its arrival time instead, with a warning, so it cannot make later messages stale;
- a message's Patient is matched to the stored patient by identifier (``matching.py``: the NHS number
  across trusts, local numbers within their trust), so a sparser message (an ORU with the hospital
  number only) updates the same Patient; references to it in the message's other resources follow;
- a message whose demographics conflict with the matched patient is held: status ``needs-review``, an
  OperationOutcome naming the conflict, nothing from it written but the MSCC team's "Review patient
  match" Task (``shared/review_task.py``, with its history and outbox event, in the same transaction);
  an operator applies it (the record's ``review.decision`` is then "apply" and the conflict check is
  skipped) or rejects it;
- Patient updates merge: identifiers are unioned, and what a message leaves out (telecom, address, GP,
  ...) is kept (``matching.merge_patient``); Patient.link entries (merges) are kept;
- a referral's pathway step and its history (set by transitions) are kept when a later referral
  message describes the referral without them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.errors import PyMongoError

from services.pathway.record import keep_pathway
from services.pathway.table import service_ods
from shared import correlation
from shared.ids import identifier_key
from shared.nhs import NHS_NUMBER_SYSTEM
from shared.retry import TransactionRetry, run_transaction
from shared.review_task import review_task, review_task_id
from shared.store import DURABLE, Document, Store
from shared.versions import NewVersion, next_version, read_version, source_of, write_versions
from shared.visibility import message_trusts

from .matching import Candidates, matching_identifiers, merge_patient, replaced_by, resolve
from .model import MappingResult, OutcomeIssue, Patch, Resource, TransientError, issue
from .outcomes import Written, outcome_update
from .retarget import keep_links, retarget, retarget_patch

log = logging.getLogger(__name__)
# Hot resources (one patient, many messages) make concurrent writers conflict: more, longer pauses.
RETRY = TransactionRetry(attempts=10, low_s=0.01, high_s=0.05)
DEFAULT_FUTURE_SKEW = timedelta(minutes=5)


def _key(resource_type: str, resource_id: str) -> str:
    return f"{resource_type}/{resource_id}"


@dataclass
class _Batch:
    now: datetime
    current: dict[str, Document]
    read_versions: dict[str, int]
    versions: list[NewVersion]
    # Patient identifier key -> keys ("Patient/id") of the Patients holding it, as of this batch.
    patients_by_identifier: dict[str, set[str]] = field(default_factory=dict)
    # Per message: issues the writer adds (a future message time) and the conflicts that held it.
    notes: dict[str, list[OutcomeIssue]] = field(default_factory=dict)
    held: dict[str, list[OutcomeIssue]] = field(default_factory=dict)

    def index_patient(self, doc: Document) -> None:
        if doc.get("type") != "Patient":
            return
        for k in doc.get("identifier_keys") or []:
            self.patients_by_identifier.setdefault(k, set()).add(doc["_id"])


def _run_patch(batch: _Batch, patch: Patch) -> Resource:
    """The patched content: from the current version, and the resources the patch reads, if any."""
    existing = batch.current.get(_key(patch.resource_type, patch.resource_id))
    current = existing["resource"] if existing else None
    if patch.apply_with is None:
        return patch.apply(current)
    context = {k: batch.current[k]["resource"] for k in patch.reads if k in batch.current}
    return patch.apply_with(current, context)


@dataclass(frozen=True)
class Committed:
    """What one commit did: each message's resource facts, and the messages held for review (status
    ``needs-review``: nothing of theirs written but the review Task), which are not "mapped"."""

    written: dict[str, list[Written]]
    held: frozenset[str]


class ResourceWriter:
    def __init__(
        self,
        store: Store,
        clock: Callable[[], datetime] | None = None,
        future_skew: timedelta = DEFAULT_FUTURE_SKEW,
    ) -> None:
        self._store = store
        self._clock = clock or (lambda: datetime.now(UTC))
        self._future_skew = future_skew

    async def commit(self, mapped: list[tuple[Document, MappingResult]], owner: str) -> Committed:
        """Write every result and mark its message "mapped", or "needs-review" when it is held (if
        ``owner`` still holds its lease).

        Retries conflicts with backoff; ``TransientError`` if the database keeps failing.
        """
        try:
            return await run_transaction(lambda: self._commit_once(mapped, owner), RETRY, what="writing resources")
        except PyMongoError as exc:
            raise TransientError(f"database error while writing resources: {exc}") from exc

    async def _commit_once(self, mapped: list[tuple[Document, MappingResult]], owner: str) -> Committed:
        keys = {_key(r["resourceType"], r["id"]) for _, res in mapped for r in res.resources}
        keys |= {_key(p.resource_type, p.resource_id) for _, res in mapped for p in res.patches}
        keys |= {k for _, res in mapped for p in res.patches for k in p.reads}
        # A message held again (reprocessed) finds the review Task of its earlier hold (a held message
        # carries ``review`` from then on).
        keys |= {f"Task/{review_task_id(message['_id'])}" for message, _ in mapped if message.get("review")}
        # Patients are also found by identifier, in the same read: a message naming the patient by
        # hospital number only must reach the Patient stored under its NHS number.
        patient_keys = {
            identifier_key("Patient", system, value)
            for _, res in mapped
            for r in res.resources
            if r.get("resourceType") == "Patient"
            for system, value in matching_identifiers(r)
        }
        query: dict[str, Any] = {"_id": {"$in": sorted(keys)}}
        if patient_keys:
            by_identifier = {"type": "Patient", "identifier_keys": {"$in": sorted(patient_keys)}}
            query = {"$or": [query, by_identifier]}
        current = {d["_id"]: d async for d in self._store.resources.find(query)}
        if patient_keys:
            # ... and so are the survivors of the merges those patients were merged into.
            patients = [d["resource"] for d in current.values() if d["type"] == "Patient"]
            missing = {f"Patient/{rid}" for p in patients if (rid := replaced_by(p))} - current.keys()
            if missing:
                async for doc in self._store.resources.find({"_id": {"$in": sorted(missing)}}):
                    current.setdefault(doc["_id"], doc)
        batch = _Batch(self._clock(), current, {k: d["version"] for k, d in current.items()}, [])
        for doc in current.values():
            batch.index_patient(doc)
        written: dict[str, list[Written]] = {}
        for message, result in mapped:
            with correlation.bound(correlation.of_message(message)):  # its events carry the message's id
                written[message["_id"]] = self._apply_message(batch, message, result)
        async with self._store.client.start_session() as session:
            async with await session.start_transaction(write_concern=DURABLE):
                await write_versions(self._store, batch.versions, session=session)
                await self._finish_messages(mapped, written, owner, batch, session)
        return Committed(written, frozenset(batch.held))

    def _apply_message(self, batch: _Batch, message: Document, result: MappingResult) -> list[Written]:
        """Apply one message's resources and patches to the batch; [] when it is held for review."""
        message_id = message["_id"]
        source_time = self._ordering_time(batch, message, result)
        aliases, conflicts = self._match_patients(batch, message, result)
        if conflicts:
            batch.held[message_id] = conflicts
            log.warning(
                "message held for review: its patient conflicts with the stored one",
                extra={"record": message_id, "fields": sorted({str(i.get("expression")) for i in conflicts})},
            )
            # The hold must not be silent: the MSCC team gets a Task (and its notification) at once.
            diagnostics = [str(i.get("diagnostics")) for i in conflicts]
            task = review_task(message_id, message.get("header") or {}, diagnostics, service_ods(), batch.now)
            # The MSCC team's own Task: its conflicts name the stored patient, so no trust sees it.
            self._apply(batch, task, message, None, trusts=(), built=True)
            return []
        resources = [retarget(r, aliases) for r in result.resources] if aliases else result.resources
        patches = [retarget_patch(p, aliases) for p in result.patches] if aliases else result.patches
        # What the hub built (HL7v2 mapping, patches) gets the quick validation; FHIR content, full.
        built = message.get("protocol") == "hl7v2"
        out = [self._apply(batch, r, message, source_time, built=built) for r in resources]
        for patch in patches:
            patched = _run_patch(batch, patch)
            out.append(self._apply(batch, patched, message, source_time if patch.ordered else None, built=True))
        return out

    def _ordering_time(self, batch: _Batch, message: Document, result: MappingResult) -> datetime | None:
        """The message's own time (MSH-7, Bundle.timestamp), or its arrival time when that lies in the
        future: a wrong clock at the sender must not make every later message look stale."""
        stated = result.source_time
        if stated is None or stated <= batch.now + self._future_skew:
            return stated
        arrival = message.get("received_at")
        if not isinstance(arrival, datetime):
            arrival = batch.now
        elif arrival.tzinfo is None:
            arrival = arrival.replace(tzinfo=UTC)
        ahead = int((stated - batch.now).total_seconds() // 60)
        where = "MSH-7" if message.get("protocol") == "hl7v2" else "Bundle.timestamp"
        batch.notes.setdefault(message["_id"], []).append(
            issue(
                "warning",
                "value",
                f"{where} ({stated.isoformat()}) is {ahead} minutes ahead of the hub's clock: the sender's "
                f"clock or time zone is wrong; the message is ordered by its arrival time "
                f"({arrival.isoformat()}) instead",
                where,
            )
        )
        return arrival

    def _match_patients(
        self, batch: _Batch, message: Document, result: MappingResult
    ) -> tuple[dict[str, str], list[OutcomeIssue]]:
        """For each Patient in the message, the stored patient it is (``matching.resolve``): aliases
        ("Patient/<mapped id>" -> "Patient/<stored id>") and the conflicts that hold the message.

        Only HL7v2 patients are re-targeted: a FHIR client chose (or was told) its Patient's id, so
        there the check is against the Patient stored under that id."""
        review = message.get("review") or {}
        override = review.get("decision") == "apply"
        hl7 = message.get("protocol") == "hl7v2"
        aliases: dict[str, str] = {}
        conflicts: list[OutcomeIssue] = []
        # A merge (ADT^A40) names the patients it retires: they are expected to match, not a conflict.
        retiring = {_key("Patient", p.resource_id) for p in result.patches if p.resource_type == "Patient"}
        for patient in result.resources:
            if patient.get("resourceType") != "Patient":
                continue
            own_key = _key("Patient", patient["id"])
            match = resolve(patient, self._candidates(batch, patient, own_key, hl7, retiring))
            if match.target and match.target != patient["id"] and hl7:
                aliases[own_key] = _key("Patient", match.target)
            if match.conflicts and not override:
                conflicts += match.issues(patient["id"])
        if override:
            batch.notes.setdefault(message["_id"], []).append(
                issue(
                    "information",
                    "informational",
                    f"applied after review by {review.get('by', 'an operator')} despite the conflict "
                    "with the stored patient",
                )
            )
        return aliases, conflicts

    def _candidates(self, batch: _Batch, patient: Resource, own_key: str, hl7: bool, retiring: set[str]) -> Candidates:
        found = Candidates()
        own = batch.current.get(own_key)
        if not hl7:
            found.by_local = [own["resource"]] if own else []
            return found
        for system, value in matching_identifiers(patient):
            holders = batch.patients_by_identifier.get(identifier_key("Patient", system, value), set())
            docs = [batch.current[k]["resource"] for k in sorted(holders - retiring) if k in batch.current]
            (found.by_nhs if system == NHS_NUMBER_SYSTEM else found.by_local).extend(docs)
        for doc in (*found.by_nhs, *found.by_local):
            survivor = replaced_by(doc)
            if survivor and _key("Patient", survivor) in batch.current:
                found.survivors[survivor] = batch.current[_key("Patient", survivor)]["resource"]
        if own and own["resource"]["id"] not in {r["id"] for r in found.by_nhs + found.by_local}:
            # The Patient under the mapped id itself (a message-scoped or failed-NHS-number id).
            found.by_local.append(own["resource"])
        return found

    def _apply(
        self,
        batch: _Batch,
        resource: Resource,
        message: Document,
        source_time: datetime | None,
        trusts: tuple[str, ...] | None = None,
        built: bool = False,
    ) -> Written:
        """Apply one resource; it becomes visible to the message's trusts (``trusts``, when given, instead).
        ``built``: the hub built it (validated by ``validate_built``); else it is validated in full."""
        rtype, rid = resource["resourceType"], resource["id"]
        key = _key(rtype, rid)
        cur = batch.current.get(key)
        stored_time: datetime | None = cur.get("source_time") if cur else None
        if stored_time and stored_time > batch.now + self._future_skew:
            # Written before future times were caught (or the clock was turned back): not trusted, so
            # it cannot keep refusing every later message.
            stored_time = None
        if cur and source_time and stored_time and source_time < stored_time:
            return Written(rtype, rid, cur["version"], changed=False, stale=True)
        previous = cur["resource"] if cur else None
        if rtype == "Patient":
            resource = merge_patient(previous, resource)
        resource = keep_pathway(previous, keep_links(previous, resource))
        newest = max((t for t in (source_time, stored_time) if t), default=None)
        new = next_version(
            read_version(cur),
            resource,
            now=batch.now,
            source=source_of(message["_id"], "urn:mscc:mapper"),
            message_id=message["_id"],
            source_time=newest,
            trusts=message_trusts(message) if trusts is None else trusts,
            built=built,
        )
        if new is None:
            assert cur is not None
            return Written(rtype, rid, cur["version"], changed=False)
        batch.current[key] = new.current.to_doc()
        batch.versions.append(new)
        batch.index_patient(batch.current[key])
        return Written(rtype, rid, new.current.version, changed=True)

    async def _finish_messages(
        self,
        mapped: list[tuple[Document, MappingResult]],
        written: dict[str, list[Written]],
        owner: str,
        batch: _Batch,
        session: Any,
    ) -> None:
        """Mark the batch mapped, if ``owner`` still holds every lease (one ``update_many``: the lease
        check), then record each message's outcome (updates by ``_id``, cheaper than guarded ones): a
        message held for review gets status "needs-review" and an OperationOutcome naming the conflict."""
        if not mapped:
            return
        ids = [message["_id"] for message, _ in mapped]
        marked = await self._store.messages.update_many(
            {"_id": {"$in": ids}, "lease.owner": owner},
            {"$set": {"status": "mapped"}, "$unset": {"lease": "", "next_attempt_at": ""}},
            session=session,
        )
        if marked.matched_count != len(ids):
            raise LeaseLost(f"{len(ids) - marked.matched_count} message(s) were claimed by another worker")
        outcomes = [
            outcome_update(
                message["_id"],
                mapping,
                written[message["_id"]],
                batch.now,
                batch.notes.get(message["_id"], []),
                batch.held.get(message["_id"]),
            )
            for message, mapping in mapped
        ]
        await self._store.messages.bulk_write(outcomes, ordered=False, session=session)


class LeaseLost(Exception):
    """A message's lease expired and another worker took it: this worker's results are abandoned."""
