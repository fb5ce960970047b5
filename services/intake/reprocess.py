"""Running a kept message again after a fix (``mscc messages reprocess``), keeping its history.

What happens depends on where the message stopped:

- ``rejected`` (refused at intake): its exact bytes go through intake again, as if the sender had sent
  them now, so a configuration change (a sender allowed a new type) or a fix to intake applies. Intake
  makes new records (accepted or rejected again) and answers as it would the sender.
- ``failed`` or ``dead`` (accepted, acknowledged, then not mapped): a copy of the record is queued for the
  mapper (status ``ready``), keeping its arrival time, so a referral's clocks still start when it first
  arrived. Going through intake again would be answered as a duplicate of the original.

Either way the original record stays as it was, with ``reprocessed`` (when, by whom, the outcome) and
``reprocessed_as`` (the new record ids); each new record has ``reprocess_of`` (the original's id). A
record is reprocessed once: the new record is the one to reprocess next. The original is claimed by a
guarded update before anything is made, so two operators cannot both reprocess it. The claim is a
leased mark (``shared/reprocess_mark.py``), renewed while intake works: a run killed before it wrote
the outcome leaves a mark that expires, and the record is then interrupted, not reprocessed, and taken
over by the next run (which links the records the killed run made, if any). A copy for the mapper is
claimed and queued in one transaction: a kill leaves nothing.

Not reprocessed, with the reason: records in any other status; records cut at intake (only their first
bytes are kept) or kept without an answer (a cut or stalled frame), which may be incomplete; rejected
FHIR requests other than a create or a Bundle (a pathway step is sent again by whoever made it).
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shared import reprocess_mark
from shared.auth import Caller
from shared.fhir import FhirError
from shared.leases import LeaseKeeper
from shared.message_query import MessageFilter
from shared.messages import FHIR, MessageRecord
from shared.retry import TransientError, run_transaction
from shared.settings import Settings
from shared.store import DURABLE, Document, Store

from .service import IntakeService

THROUGH_INTAKE = frozenset({"rejected"})
TO_MAPPER = frozenset({"failed", "dead"})
_COPY_DROPS = ("reprocessed_as", "reprocess_of")


@dataclass(frozen=True)
class Outcome:
    """What reprocessing one record did (``done``) or why it did not (``note``)."""

    record: str
    status: str
    action: str  # "intake", "mapper", or "none"
    done: bool
    new_records: tuple[str, ...] = ()
    answer: str = ""  # intake's answer (ACK code, HTTP status) for the "intake" action
    note: str = ""

    def to_json(self) -> Document:
        return {
            "record": self.record,
            "status": self.status,
            "action": self.action,
            "done": self.done,
            "new_records": list(self.new_records),
            "answer": self.answer,
            "note": self.note,
        }


def plan(record: MessageRecord, raw_kept: bool = True, now: datetime | None = None) -> Outcome:
    """What reprocessing ``record`` would do, without doing it (``done`` False either way). A record whose
    earlier run was interrupted is reprocessed as if it had not been."""

    def refused(why: str) -> Outcome:
        return Outcome(record.id, record.status, "none", False, note=why)

    mark = reprocess_mark.state(record, now or datetime.now(UTC))
    if mark == reprocess_mark.DONE:
        made = ", ".join(str(r) for r in record.extra.get("reprocessed_as") or [] if r) or "another record"
        return refused(f"already reprocessed as {made}: reprocess that record instead")
    if mark == reprocess_mark.RUNNING:
        by, until = (record.reprocessed or {}).get("by") or "?", reprocess_mark.expires(record)
        when = until.strftime("%Y-%m-%dT%H:%M:%SZ") if until else "?"
        return refused(f"being reprocessed by {by} now (its mark holds until {when} unless renewed): look again later")
    if record.status == "needs-review":
        return refused("held for review: decide it with 'mscc messages apply' or 'mscc messages reject'")
    if record.status not in THROUGH_INTAKE | TO_MAPPER:
        return refused(f"status {record.status!r}: only rejected, failed and dead records are reprocessed")
    if record.truncated:
        return refused("cut at intake (only its first bytes are kept): ask the sender to resend it")
    if not raw_kept:
        return refused("its bytes are not kept")
    if record.status in TO_MAPPER:
        return Outcome(record.id, record.status, "mapper", False, note="a copy queued for the mapper")
    if record.protocol != FHIR and record.ack is None:
        return refused(
            "kept without an answer (a cut or stalled frame) and may be incomplete: the sender resends "
            "unacknowledged messages; a corrected file can be sent with 'mscc replay'"
        )
    header = record.fhir_header
    if record.protocol == FHIR and (header is None or header.interaction not in ("create", "bundle")):
        what = header.interaction if header else "request"
        return refused(f"a rejected FHIR {what} is not reprocessed here: whoever made it sends it again")
    return Outcome(record.id, record.status, "intake", False, note="through intake again")


async def select(store: Store, where: MessageFilter, limit: int) -> list[MessageRecord]:
    """The records a ``--status`` (and other filters) selection names that were not reprocessed yet (or
    whose run was interrupted), oldest first (the order they arrived in), at most ``limit``."""
    query = dataclasses.replace(where, extra=reprocess_mark.claimable(datetime.now(UTC))).query()
    cursor = store.messages.find(query).sort("received_at", 1).limit(limit)
    return [MessageRecord.from_doc(doc) async for doc in cursor]


async def by_ids(store: Store, ids: list[str]) -> tuple[list[MessageRecord], list[str]]:
    """The records named, in the order given, and the ids that name no record."""
    found = {doc["_id"]: MessageRecord.from_doc(doc) async for doc in store.messages.find({"_id": {"$in": ids}})}
    return [found[i] for i in ids if i in found], [i for i in ids if i not in found]


class Reprocessor:
    """Reprocesses records one by one; starts intake (without its MLLP listener) only when a rejected
    record needs it. Use as an async context manager: intake is stopped on exit."""

    def __init__(self, settings: Settings, store: Store, by: str) -> None:
        self._settings = settings
        self._store = store
        self._by = by
        self._intake: IntakeService | None = None
        self._token = f"reprocess-{uuid.uuid4().hex[:12]}"  # the owner of this run's marks
        self._leases = LeaseKeeper(
            store.messages, "reprocessed", settings.reprocess_lease_s, settings.lease_heartbeat_s
        )

    async def __aenter__(self) -> Reprocessor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._intake is not None:
            await self._intake.stop()

    async def run(self, record: MessageRecord) -> Outcome:
        """Reprocess ``record`` as ``plan`` says; the outcome says what was made or why nothing was."""
        planned = plan(record, raw_kept=record.raw is not None)
        if planned.action == "mapper":
            return await self._to_mapper(record)
        if planned.action == "intake":
            return await self._through_intake(record)
        return planned

    async def _claim(self, record: MessageRecord, now: datetime, session: Any = None) -> bool:
        """Mark the original as being reprocessed (a leased mark), if it is still as read and not
        reprocessed yet, or its earlier run was interrupted."""
        claimed = await self._store.messages.update_one(
            {"_id": record.id, "status": record.status, **reprocess_mark.claimable(now)},
            {"$set": {"reprocessed": reprocess_mark.mark(self._by, self._token, now, self._leases.until())}},
            session=session,
        )
        return claimed.modified_count == 1

    async def _to_mapper(self, record: MessageRecord) -> Outcome:
        now = datetime.now(UTC)
        copy = dataclasses.replace(
            record,
            id=uuid.uuid4().hex,
            channel="reprocess",
            peer=f"reprocess:{record.id}",
            status="ready",
            attempts=0,
            ack=None,
            dedup_key=None,  # the original keeps answering resends; the copy is no duplicate
            batch=None,
            reply=None,
            processing=None,
            duplicates=None,
            last_duplicate_at=None,
            lease=None,
            map_attempts=None,
            next_attempt_at=None,
            review=None,
            reprocessed=None,
            extra={**{k: v for k, v in record.extra.items() if k not in _COPY_DROPS}, "reprocess_of": record.id},
            order=None,
        )

        async def once() -> bool:
            async with self._store.client.start_session() as session:
                async with await session.start_transaction(write_concern=DURABLE):
                    if not await self._claim(record, now, session):
                        await session.abort_transaction()
                        return False
                    await self._store.messages.insert_one(copy.to_doc(), session=session)
                    done = {"at": now, "by": self._by, "outcome": "queued for the mapper", "records": [copy.id]}
                    await self._store.messages.update_one(
                        {"_id": record.id},
                        {"$set": {"reprocessed": done, "reprocessed_as": [copy.id]}},
                        session=session,
                    )
                    return True

        try:
            made = await run_transaction(once, what="reprocess")
        except TransientError as exc:
            return Outcome(record.id, record.status, "mapper", False, note=f"the database did not confirm: {exc}")
        if not made:
            return Outcome(record.id, record.status, "none", False, note="changed or reprocessed meanwhile: look again")
        return Outcome(record.id, record.status, "mapper", True, (copy.id,), note="a copy queued for the mapper")

    async def _through_intake(self, record: MessageRecord) -> Outcome:
        now = datetime.now(UTC)
        # A run killed after intake stored its records: those are this record's too, so look from then.
        was = reprocess_mark.state(record, now)
        interrupted = reprocess_mark.started(record) if was == reprocess_mark.INTERRUPTED else None
        if not await self._claim(record, now):
            return Outcome(record.id, record.status, "none", False, note="changed or reprocessed meanwhile: look again")
        async with self._leases.holding(self._token):
            return await self._send_claimed(record, now, interrupted)

    async def _send_claimed(self, record: MessageRecord, now: datetime, interrupted: datetime | None) -> Outcome:
        if self._intake is None:
            self._intake = IntakeService(self._settings, self._store)
            await self._intake.start(mllp=False)
        marker = f"reprocess:{record.id}"
        started = min(now, interrupted or now) - timedelta(seconds=1)  # stored times keep milliseconds only
        mine = {"_id": record.id, "reprocessed.owner": self._token}
        try:
            answer = await self._send(self._intake, record, marker)
        except BaseException:
            # Nothing was answered: release the claim so the record can be reprocessed again.
            await self._store.messages.update_one(mine, {"$unset": {"reprocessed": ""}})
            raise
        new_ids = [
            doc["_id"]
            async for doc in self._store.messages.find(
                {"received_at": {"$gte": started}, "peer": marker}, {"_id": 1}
            ).sort("received_at", 1)
        ]
        if new_ids:
            await self._store.messages.update_many({"_id": {"$in": new_ids}}, {"$set": {"reprocess_of": record.id}})
        done = {"at": now, "by": self._by, "outcome": answer, "records": new_ids}
        written = await self._store.messages.update_one(
            mine, {"$set": {"reprocessed": done, "reprocessed_as": new_ids}}
        )
        note = "through intake again" + (" (taking over an interrupted run)" if interrupted else "")
        if written.matched_count == 0:  # the lease ran out (the database away) and another run took over
            note += "; another run took the record over meanwhile: see 'mscc messages show'"
        return Outcome(record.id, record.status, "intake", True, tuple(new_ids), answer, note)

    @staticmethod
    async def _send(service: IntakeService, record: MessageRecord, marker: str) -> str:
        """Intake's answer to the record's bytes, sent as its original caller sent them."""
        caller_doc = record.caller or {}
        caller = Caller(
            client_id=str(caller_doc.get("client_id") or "reprocess"),
            ods_code=str(caller_doc.get("ods_code") or ""),
            scopes=frozenset(caller_doc.get("scopes") or ()),
        )
        raw = record.raw or b""
        if record.protocol != FHIR:  # HL7V2 or an HL7V2_BATCH envelope
            ack = await service.hl7.receive(raw, channel="reprocess", peer=marker, caller=caller)
            return f"ACK {ack.code}" + (" (a duplicate of a record already accepted)" if ack.duplicate else "")
        header = record.fhir_header
        try:
            if header is not None and header.interaction == "create" and header.resource_type:
                reply = await service.fhir.create(
                    header.resource_type, raw, "application/fhir+json", None, caller, marker
                )
            else:
                reply = await service.fhir.post_bundle(raw, "application/fhir+json", caller, marker)
        except FhirError as exc:
            return f"HTTP {exc.status}: {exc}"
        return f"HTTP {reply.status}"
