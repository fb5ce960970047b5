"""The HL7v2 intake flow shared by MLLP and HTTP: read lean, store durably, then acknowledge.

``receive(data)`` returns the reply to send (or none, where MSH-15 asks for none). Every frame is
stored before the reply is built from what was stored: accepted messages with status "ready" (the
mapper's queue), rejected ones with status "rejected" and the reason. Nothing is acknowledged if the
store did not confirm the write: the reply is then AE/CE with code 207, asking the sender to resend, when
the failure is transient; a message the database can never store is refused (AR 207) and kept if it can be.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from pymongo.errors import PyMongoError

from shared.auth import Caller
from shared.db_errors import log_failure, refused_input
from shared.limits import DEFAULT_LIMITS, Limits
from shared.messages import HL7V2, HL7V2_BATCH, RAW_FROM_TEXT_BYTES, MessageRecord
from shared.store import Document
from shared.visibility import TRUSTS

from .ack import ack_code, build_ack, should_reply
from .committer import Committed, GroupCommitter, StoreUnavailable
from .header import APPLICATION_INTERNAL_ERROR, HeaderRead, Issue, MessageHeader, Rejection
from .hl7_keys import control_key, dedup_key, indexed_header
from .hl7_scan import FrameScan, MessageScan, header_of, scan_frame
from .offload import ParsePool
from .origin import Origin
from .policy import SenderPolicy
from .trust import hl7_trust

log = logging.getLogger(__name__)


# Reply and Arrival are named tuples, not frozen dataclasses: as immutable, and made three times faster
# (a frozen dataclass sets each field through object.__setattr__); one of each is made for every frame.
class Reply(NamedTuple):
    """The acknowledgement. ``send`` is False where MSH-15 asked for none (MLLP then stays silent);
    ``stored`` is False when nothing could be written (the ACK then asks the sender to resend)."""

    body: bytes
    code: str
    record_ids: tuple[str, ...]
    duplicate: bool = False
    send: bool = True
    stored: bool = True
    charset: str = "utf-8"


class Arrival(NamedTuple):
    """Where and when a frame came from: kept on every record made from it."""

    now: datetime
    channel: str
    peer: str
    caller: Caller
    charset: str | None = None  # an HTTP Content-Type charset, which wins over MSH-18
    origin: Origin | None = None  # listener, peer address, client certificate: for the sender allow-list

    def accepted(
        self,
        record_id: str,
        raw: bytes,
        read: HeaderRead,
        ack: str,
        dedup: str | None,
        batch: dict[str, Any] | None,
        trust: str = "",
        text_is_raw: bool = False,
    ) -> MessageRecord:
        """The record of an accepted message: queued for the mapper ("ready"), raw bytes kept exactly,
        with the trust it speaks for (``trust.py``). ``text_is_raw``: the text encodes back to exactly
        ``raw`` with the read's charset, so the record stores the text alone (``raw_from_text``)."""
        return MessageRecord(
            id=record_id,
            received_at=self.now,
            protocol=HL7V2,
            channel=self.channel,
            peer=self.peer,
            caller=self.caller.to_doc(),
            raw=raw,
            status="ready",
            header=indexed_header(read.header),
            text=read.text,
            charset=read.charset,
            issues=[i.to_doc() for i in read.issues],
            control_key=control_key(read.header),
            ack={"code": "AA", "text": ack},
            dedup_key=dedup,
            batch=batch,
            extra={TRUSTS: [trust] if trust else []},
            raw_from_text=read.charset if text_is_raw else None,
        )

    def rejected(
        self,
        record_id: str,
        raw: bytes,
        reason: str,
        issue: Issue,
        header: MessageHeader | None,
        ack: dict[str, Any] | None,
        *,
        batch: dict[str, Any] | None = None,
        size: int | None = None,
        truncated: bool = False,
    ) -> MessageRecord:
        """The record of refused bytes, kept with the reason (and the AR answered, if any). ``size`` is
        the full size of a frame of which only the first bytes are kept (``truncated``)."""
        return MessageRecord(
            id=record_id,
            received_at=self.now,
            protocol=HL7V2,
            channel=self.channel,
            peer=self.peer,
            caller=self.caller.to_doc(),
            raw=raw,
            size=size,
            status="rejected",
            reason=reason,
            issues=[issue.to_doc()],
            header=indexed_header(header) if header else None,
            text=raw.decode("latin-1"),
            charset=None,
            ack=ack,
            batch=batch,
            truncated=truncated,
            # latin-1 maps every byte to one character and back: a large refused record keeps its text alone
            raw_from_text="latin-1" if len(raw) >= RAW_FROM_TEXT_BYTES else None,
        )

    def envelope(self, batch_id: str, data: bytes, children: list[str]) -> MessageRecord:
        """The record of a batch's envelope (the whole frame); its messages are records of their own."""
        return MessageRecord(
            id=batch_id,
            received_at=self.now,
            protocol=HL7V2_BATCH,
            channel=self.channel,
            peer=self.peer,
            caller=self.caller.to_doc(),
            raw=data,
            status="split",
            text=data.decode("latin-1"),
            charset=None,
            children=children,
            issues=[],
        )


@dataclass(frozen=True)
class IntakeConfig:
    application: str
    facility: str
    default_charset: str
    fallback_charset: str
    limits: Limits = DEFAULT_LIMITS  # shared/limits.py: checked before the ACK


# The version (4) and variant (RFC 4122) bits of a random UUID, as ``uuid.uuid4()`` sets them.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_id() -> str:
    """A random UUID (version 4) as 32 hex digits: ``uuid.uuid4().hex``, without building a ``UUID``
    (a record id is made for every message)."""
    return f"{int.from_bytes(os.urandom(16)) & _UUID4_CLEAR | _UUID4_SET:032x}"


class Hl7Intake:
    def __init__(
        self,
        committer: GroupCommitter,
        policy: SenderPolicy,
        config: IntakeConfig,
        clock: Callable[[], datetime] | None = None,
        pool: ParsePool | None = None,
    ) -> None:
        self._committer = committer
        self._policy = policy
        self._config = config
        self._clock = clock or (lambda: datetime.now(UTC))
        # Large frames are read in worker processes (offload.py); without a pool, inline.
        self._pool = pool or ParsePool(0, 0)

    def _arrival(self, channel: str, peer: str, caller: Caller, charset: str | None = None) -> Arrival:
        return Arrival(self._clock(), channel, peer, caller, charset)

    async def receive(
        self,
        data: bytes,
        *,
        channel: str,
        peer: str,
        caller: Caller,
        charset: str | None = None,
        origin: Origin | None = None,
    ) -> Reply:
        """Store one frame (a message or a batch) and return the acknowledgement to send."""
        arrival = Arrival(self._clock(), channel, peer, caller, charset, origin)
        # What the frame's bytes alone decide (``hl7_scan``): a large frame is read in the parse pool,
        # a small one (nearly every frame) here, as the pool would read it, with no await in between.
        charsets, limits = (self._config.default_charset, self._config.fallback_charset, charset), self._config.limits
        if self._pool.pooled(len(data)):
            scan: FrameScan = await self._pool.run(scan_frame, data, charsets, limits, size=len(data))
        else:
            scan = scan_frame(data, charsets, limits)
        if scan.refusal is not None:  # over a frame limit, or a malformed envelope (answered in original mode)
            rejection = scan.refusal.rejection()
            return await self._store_rejection(data, scan.header, rejection, arrival, original_mode=scan.envelope)
        if not scan.is_batch:
            return await self._receive_one(data, scan.messages[0], arrival)
        return await self._receive_batch(data, scan.messages, scan.file_header, arrival)

    def _ack(
        self,
        header: MessageHeader | None,
        code: str,
        record_id: str,
        issues: list[Issue],
        now: datetime,
        *,
        original_mode: bool = False,
    ) -> str:
        return build_ack(
            header,
            code if original_mode else ack_code(code, header),
            ack_control_id=record_id[:20],
            issues=issues,
            application=self._config.application,
            facility=self._config.facility,
            now=now,
        )

    def _prepare(
        self,
        scan: MessageScan,
        raw: bytes,
        arrival: Arrival,
        batch: dict[str, Any] | None = None,
    ) -> tuple[MessageRecord, MessageHeader | None]:
        """Build the record for one message (read by ``hl7_scan``): accepted ("ready") or rejected,
        with its ACK inside.

        ``raw`` is what is kept byte-exact: the whole frame, or the message's slice of a batch (whose
        place in it is ``batch``: id, index, count).
        """
        record_id = new_id()
        header = scan.header
        try:
            read: HeaderRead = scan.accepted()
            header = read.header
            self._policy.check(header)
            self._policy.check_origin(header, arrival.origin)
            trust = hl7_trust(self._policy, header, arrival.caller, arrival.channel, self._config.facility)
        except Rejection as rejection:
            issue = Issue("E", rejection.code, rejection.reason, rejection.location)
            ack = {"code": rejection.ack, "text": self._ack(header, rejection.ack, record_id, [issue], arrival.now)}
            return arrival.rejected(record_id, raw, rejection.reason, issue, header, ack, batch=batch), header
        ack_text = self._ack(header, "AA", record_id, read.issues, arrival.now)
        dedup = dedup_key(header, scan.digest)
        text_is_raw = scan.text_is_raw and len(raw) == scan.stop - scan.start
        record = arrival.accepted(record_id, raw, read, ack_text, dedup or None, batch, trust, text_is_raw)
        return record, header

    async def _commit(
        self, docs: list[Document], *, kept_if_refused: bool = False
    ) -> list[Committed] | StoreUnavailable:
        """The records written, or why not (its text names only the database error's class and code),
        logged in one line: an outage as an error, a refusal the records caused as a warning, unless
        ``kept_if_refused`` (the caller keeps the bytes as a rejected record and names that one)."""
        try:
            return await self._committer.commit(docs)
        except StoreUnavailable as exc:
            if not (kept_if_refused and refused_input(exc.failure)):
                ids = [doc["_id"] for doc in docs[:20]]  # a batch's first records: the line stays short
                log_failure(
                    log, "inbound records not stored", exc.failure, records=ids, count=len(docs), reason=str(exc)
                )
            return exc

    def _unavailable(self, header: MessageHeader | None, now: datetime) -> Reply:
        issue = Issue(
            "E",
            APPLICATION_INTERNAL_ERROR,
            "the message was not stored (the database did not confirm the write): resend it",
        )
        text = self._ack(header, "AE", new_id(), [issue], now)
        return Reply(text.encode("utf-8"), ack_code("AE", header), (), stored=False)

    async def _stored(self, result: Committed, now: datetime) -> Document:
        """The record that answers: the one just written, or the original a duplicate resends."""
        if not result.inserted:
            await self._note_duplicate(result.document["_id"], now)
        return result.document

    async def _receive_one(self, data: bytes, scan: MessageScan, arrival: Arrival) -> Reply:
        record, header = self._prepare(scan, data, arrival)
        committed = await self._commit([record.to_doc()], kept_if_refused=True)
        if isinstance(committed, StoreUnavailable) and not committed.transient:
            # Never "resend" what can never be stored (a sender would retry for ever): AR, kept if it can be.
            reason = f"the message cannot be stored ({committed}): sending it again will not help"
            rejection = Rejection(APPLICATION_INTERNAL_ERROR, reason)
            return await self._store_rejection(data, header, rejection, arrival, refused=committed.failure)
        if isinstance(committed, StoreUnavailable):
            return self._unavailable(header, arrival.now)
        stored = await self._stored(committed[0], arrival.now)
        mode_code = ack_code(stored["ack"]["code"], header)
        charset = stored.get("charset") or "utf-8"
        return Reply(
            stored["ack"]["text"].encode(charset, errors="replace"),
            mode_code,
            (stored["_id"],),
            duplicate=not committed[0].inserted,
            send=should_reply(mode_code, header),
            charset=charset,
        )

    async def _note_duplicate(self, record_id: str, now: datetime) -> None:
        """Count a resend on the original record; the resend itself is not stored again."""
        try:
            await self._committer.collection.update_one(
                {"_id": record_id}, {"$inc": {"duplicates": 1}, "$set": {"last_duplicate_at": now}}
            )
        except PyMongoError:  # the reply does not depend on this bookkeeping
            log.warning("could not record a duplicate arrival", extra={"record": record_id})

    async def _store_rejection(
        self,
        data: bytes,
        header: MessageHeader | None,
        rejection: Rejection,
        arrival: Arrival,
        *,
        size: int | None = None,
        original_mode: bool = False,
        refused: BaseException | None = None,
    ) -> Reply:
        """Keep refused bytes with the reason and answer AR (always sent). ``size``: the full size of a
        frame of which only ``data``, its first bytes, is kept. ``original_mode`` answers an envelope:
        its messages' MSH-15/16 say nothing about how to answer the envelope itself. ``refused``: the
        database's refusal of the message as accepted; one warning names the record kept for it."""
        record_id = new_id()
        issue = Issue("E", rejection.code, rejection.reason, rejection.location)
        text = self._ack(header, rejection.ack, record_id, [issue], arrival.now, original_mode=original_mode)
        ack = {"code": rejection.ack, "text": text}
        record = arrival.rejected(
            record_id, data, rejection.reason, issue, header, ack, size=size, truncated=size is not None
        ).to_doc()
        failed = await self._commit([record], kept_if_refused=header is not None)
        if isinstance(failed, StoreUnavailable) and not failed.transient and header is not None:
            # The header itself cannot be stored (an indexed field no index takes): keep the bytes without it.
            refused = refused or (failed.failure if refused_input(failed.failure) else None)
            failed = await self._commit([{**record, "header": None}])
        if isinstance(failed, StoreUnavailable):
            return self._unavailable(header, arrival.now)
        if refused_input(refused):
            log_failure(log, "message refused and kept as a rejected record", refused, record=record_id)
        code = rejection.ack if original_mode else ack_code(rejection.ack, header)
        return Reply(text.encode("utf-8"), code, (record_id,))

    async def receive_oversize(
        self, head: bytes, size: int, limit: int, *, channel: str, peer: str, caller: Caller
    ) -> Reply:
        """Reject a frame larger than ``limit``: its first ``limit`` bytes are kept, with its size."""
        header = await self._pool.run(header_of, head, size=len(head))
        rejection = Rejection(
            APPLICATION_INTERNAL_ERROR,
            f"message of {size} bytes exceeds the limit of {limit} bytes "
            "(MSCC_MLLP_MAX_MESSAGE_BYTES); its first bytes are kept",
        )
        arrival = self._arrival(channel, peer, caller)
        return await self._store_rejection(head, header, rejection, arrival, size=size)

    async def keep_unacknowledged(
        self, data: bytes, reason: str, *, channel: str, peer: str, caller: Caller
    ) -> str | None:
        """Keep bytes that cannot be answered (outside a frame, an unfinished frame) with the reason."""
        record_id = new_id()
        record = self._arrival(channel, peer, caller).rejected(
            record_id, data, reason, Issue("E", 100, reason), None, None
        )
        if isinstance(await self._commit([record.to_doc()]), StoreUnavailable):
            return None
        log.warning("kept unacknowledged bytes", extra={"record": record_id, "reason": reason, "peer": peer})
        return record_id

    async def _receive_batch(
        self, data: bytes, messages: tuple[MessageScan, ...], file_header: bool, arrival: Arrival
    ) -> Reply:
        batch_id = new_id()
        count = len(messages)
        prepared = [
            self._prepare(scan, data[scan.start : scan.stop], arrival, {"id": batch_id, "index": i, "count": count})
            for i, scan in enumerate(messages)
        ]
        envelope = arrival.envelope(batch_id, data, [record.id for record, _ in prepared])
        committed = await self._commit([envelope.to_doc()] + [record.to_doc() for record, _ in prepared])
        first_header = next((h for _, h in prepared if h is not None), None)
        if isinstance(committed, StoreUnavailable):
            return self._unavailable(first_header, arrival.now)
        stored = [await self._stored(result, arrival.now) for result in committed[1:]]
        codes = [doc["ack"]["code"] for doc in stored]
        body = self._batch_ack([doc["ack"]["text"] for doc in stored], first_header, file_header, batch_id, arrival.now)
        worst = "AR" if "AR" in codes else "AE" if "AE" in codes else "AA"
        return Reply(body.encode("utf-8"), worst, (batch_id, *(record.id for record, _ in prepared)))

    def _batch_ack(
        self, acks: list[str], header: MessageHeader | None, file_header: bool, batch_id: str, now: datetime
    ) -> str:
        fs = header.separators.field if header else "|"
        enc = header.separators.encoding_characters if header else "^~\\&"
        stamp = now.strftime("%Y%m%d%H%M%S+0000")
        head = [
            self._config.application,
            self._config.facility,
            header.get(3) if header else "",
            header.get(4) if header else "",
            stamp,
        ]
        out = []
        if file_header:
            out.append(fs.join(["FHS", enc, *head, "", "", batch_id[:20]]) + "\r")
        out.append(fs.join(["BHS", enc, *head, "", "", batch_id[:20]]) + "\r")
        out.extend(acks)
        out.append(f"BTS{fs}{len(acks)}\r")
        if file_header:
            out.append(f"FTS{fs}1\r")
        return "".join(out)
