"""The message record: how every inbound message is kept in ``messages``, typed.

Each message the hub receives (HL7v2 over MLLP or HTTP, a batch envelope, a FHIR request body) is kept
as one record with its exact bytes, where it came from, its status and what became of it. Intake builds
records with ``MessageRecord(...)`` and writes ``to_doc()``; the mapper worker, the review and the
operator tools read them with ``from_doc``. ``from_doc`` raises ``KeyError`` (or ``TypeError``) when the
document is not a message record (no ``_id``, ``received_at`` or ``protocol``); every other field may be
missing, as in a read that projects out ``raw`` and ``text``.

A large record keeps its bytes once. Every HL7v2 record also keeps its ``text`` (the bytes decoded, for
the mapper and for searching), so a 4 MB message would otherwise be written, journaled and replicated
as 8 MB, and the database's work on it holds up every small record committed meanwhile. A record of at
least ``RAW_FROM_TEXT_BYTES`` whose text encodes back to exactly its bytes with one codec stores
``raw_from_text: codec`` instead of ``raw``; ``from_doc`` rebuilds ``raw`` from ``text``, byte for byte
(``kept_bytes`` does the same for a plain document). Intake sets it only after checking the encoding
round trip (a refused record's text is its bytes read as latin-1, which always round-trips).

A round trip keeps a stored document exactly (``to_doc(from_doc(doc))`` encodes to the same BSON): the
field order of the document read is kept, and fields this module does not name are kept in ``extra``.
A field whose value is None is not written, except where None is itself stored: ``caller`` and
``charset`` always, ``header`` on every record but a batch envelope (None: a rejected frame whose MSH
could not be read), ``ack`` on every HL7v2 record (None: bytes kept without an answer).

Document::

    messages  {_id, received_at, protocol, channel, peer, caller, raw | raw_from_text, size, attempts, status, [reason],
               [http_status], header, text, charset, issues, [control_key], ack, [dedup_key], [batch],
               [children], [fhir], [reply], [truncated], [processing], [duplicates], [last_duplicate_at],
               [lease], [map_attempts], [next_attempt_at], [review], [reprocessed], ...}
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from .records import MessageOutcome
from .store import Document

HL7V2 = "hl7v2"
HL7V2_BATCH = "hl7v2-batch"  # the envelope of a batch; its messages are records of their own
FHIR = "fhir"

# Written in this order (the order of an accepted HL7v2 record, the hot path); a document read keeps
# its own order.
_FIELDS = (
    "_id",
    "received_at",
    "protocol",
    "channel",
    "peer",
    "caller",
    "raw",
    "raw_from_text",
    "size",
    "attempts",
    "status",
    "reason",
    "http_status",
    "header",
    "text",
    "charset",
    "issues",
    "control_key",
    "ack",
    "dedup_key",
    "batch",
    "children",
    "fhir",
    "reply",
    "truncated",
    "processing",
    "duplicates",
    "last_duplicate_at",
    "lease",
    "map_attempts",
    "next_attempt_at",
    "review",
    "reprocessed",
)
_KNOWN = frozenset(_FIELDS)

# From this size on, a record whose text encodes back to its exact bytes keeps only the text.
RAW_FROM_TEXT_BYTES = 64 * 1024


def kept_bytes(doc: Document) -> bytes | None:
    """The exact bytes a stored message document keeps: ``raw``, or its text encoded back when it
    stores ``raw_from_text``; None when neither was read."""
    raw = doc.get("raw")
    if isinstance(raw, bytes):
        return raw
    codec, text = doc.get("raw_from_text"), doc.get("text")
    if isinstance(codec, str) and isinstance(text, str):
        return text.encode(codec)
    return None


def text_encodes_to(text: str, codec: str, raw: bytes) -> bool:
    """Whether ``text`` encoded with ``codec`` gives back exactly ``raw`` (so ``raw`` need not be kept)."""
    try:
        return text.encode(codec) == raw
    except (UnicodeError, LookupError):
        return False


@dataclass(frozen=True, slots=True)
class Hl7Header:
    """The MSH fields an HL7v2 record keeps (``header``), as intake read them."""

    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    datetime: str = ""  # MSH-7 as sent
    message_type: str = ""  # e.g. REF^I12
    structure: str = ""
    control_id: str = ""
    processing_id: str = ""
    version: str = ""
    accept_ack_type: str = ""
    application_ack_type: str = ""
    charset: str = ""

    @classmethod
    def from_doc(cls, doc: Document) -> Hl7Header:
        return cls(**{f.name: str(doc.get(f.name) or "") for f in fields(cls)})


@dataclass(frozen=True, slots=True)
class FhirHeader:
    """What a FHIR record's ``header`` says about the request: the interaction ("create", "bundle",
    "update", "operation"), the resource type and id it names, and for a Bundle its type and the id of
    its MessageHeader."""

    interaction: str
    resource_type: str | None = None
    id: str | None = None
    bundle_type: str | None = None
    message_header: str | None = None
    operation: str | None = None

    @classmethod
    def from_doc(cls, doc: Document) -> FhirHeader:
        def text(name: str) -> str | None:
            value = doc.get(name)
            return None if value is None else str(value)

        return cls(
            interaction=str(doc.get("interaction") or ""),
            resource_type=text("resource_type"),
            id=text("id"),
            bundle_type=text("bundle_type"),
            message_header=text("message_header"),
            operation=text("operation"),
        )


# Not frozen: a frozen dataclass sets each of these fields through object.__setattr__, which made
# building a record four times slower (about 6 us against 1.5 us), once per message on intake's hot path.
@dataclass(slots=True)
class MessageRecord:
    """One ``messages`` document. Lists and sub-documents are held as they are (never copied): the
    record is the document's typed view, built once and written once (treat it as read-only).

    ``status``: "ready" (the mapper's queue), "mapping" (claimed, with ``lease``), "mapped", "failed",
    "dead", "needs-review", "review-rejected", "rejected" (refused at intake, with ``reason``), "split"
    (a batch envelope, with ``children``), "applied" (a pathway request written directly).
    """

    id: str
    received_at: datetime
    protocol: str  # HL7V2, HL7V2_BATCH or FHIR
    channel: str  # "mllp", "http", "reprocess"
    peer: str
    caller: dict[str, Any] | None
    raw: bytes | None  # the exact bytes received (None only when a read projected them out)
    status: str
    issues: list[dict[str, Any]] = field(default_factory=list)
    text: str | None = None
    charset: str | None = None
    header: dict[str, Any] | None = None
    size: int | None = None  # len(raw) unless the body was cut (``truncated``): then its full size
    attempts: int = 0
    reason: str | None = None
    http_status: int | None = None
    control_key: str | None = None  # HL7v2: MSH-3|MSH-4|MSH-10
    ack: dict[str, Any] | None = None  # HL7v2: {code, text}, the acknowledgement answered
    dedup_key: str | None = None
    batch: dict[str, Any] | None = None  # a batch's message: {id, index, count}
    children: list[str] | None = None  # a batch envelope: its messages' record ids
    fhir: dict[str, Any] | None = None  # FHIR: the Bundle's entry plan, or the resources created
    reply: dict[str, Any] | None = None  # a FHIR Bundle: the answer given, for a resend
    truncated: bool = False
    processing: MessageOutcome | None = None
    duplicates: int | None = None  # resends answered from this record
    last_duplicate_at: datetime | None = None
    lease: dict[str, Any] | None = None  # {owner, until} while a mapper holds it
    map_attempts: int | None = None
    next_attempt_at: datetime | None = None
    review: dict[str, Any] | None = None
    reprocessed: dict[str, Any] | None = None  # {at, outcome, records}: the operator ran it again
    raw_from_text: str | None = None  # the codec that rebuilds ``raw`` from ``text``, when raw is not stored
    extra: dict[str, Any] = field(default_factory=dict)
    order: tuple[str, ...] | None = None  # the field order of the document read

    @property
    def hl7v2_header(self) -> Hl7Header | None:
        """The MSH fields, for an HL7v2 record whose MSH was read; else None."""
        if self.protocol != HL7V2 or not self.header:
            return None
        return Hl7Header.from_doc(self.header)

    @property
    def fhir_header(self) -> FhirHeader | None:
        """The request, for a FHIR record; else None."""
        if self.protocol != FHIR or not self.header:
            return None
        return FhirHeader.from_doc(self.header)

    @property
    def what(self) -> str:
        """What the message is, for people: the HL7v2 message type, the FHIR interaction, or the protocol."""
        header = self.header or {}
        return str(header.get("message_type") or header.get("interaction") or self.protocol)

    @classmethod
    def from_doc(cls, doc: Document) -> MessageRecord:
        processing = doc.get("processing")
        return cls(
            id=doc["_id"],
            received_at=doc["received_at"],
            protocol=doc["protocol"],
            channel=doc.get("channel", ""),
            peer=doc.get("peer", ""),
            caller=doc.get("caller"),
            raw=kept_bytes(doc),
            status=doc.get("status", ""),
            issues=doc.get("issues") or [],
            text=doc.get("text"),
            charset=doc.get("charset"),
            header=doc.get("header"),
            size=doc.get("size"),
            attempts=int(doc.get("attempts", 0)),
            reason=doc.get("reason"),
            http_status=doc.get("http_status"),
            control_key=doc.get("control_key"),
            ack=doc.get("ack"),
            dedup_key=doc.get("dedup_key"),
            batch=doc.get("batch"),
            children=doc.get("children"),
            fhir=doc.get("fhir"),
            reply=doc.get("reply"),
            truncated=bool(doc.get("truncated", False)),
            processing=MessageOutcome.from_doc(processing) if processing is not None else None,
            duplicates=doc.get("duplicates"),
            last_duplicate_at=doc.get("last_duplicate_at"),
            lease=doc.get("lease"),
            map_attempts=doc.get("map_attempts"),
            next_attempt_at=doc.get("next_attempt_at"),
            review=doc.get("review"),
            reprocessed=doc.get("reprocessed"),
            raw_from_text=doc.get("raw_from_text"),
            extra={k: v for k, v in doc.items() if k not in _KNOWN},
            order=tuple(doc),
        )

    def to_doc(self) -> Document:
        """The document to store: built directly (nothing copied), in the order it was read."""
        doc: Document = {
            "_id": self.id,
            "received_at": self.received_at,
            "protocol": self.protocol,
            "channel": self.channel,
            "peer": self.peer,
            "caller": self.caller,
        }
        if self.raw_from_text is not None:
            doc["raw_from_text"] = self.raw_from_text
        elif self.raw is not None:
            doc["raw"] = self.raw
        if self.size is not None:
            doc["size"] = self.size
        elif self.raw is not None:
            doc["size"] = len(self.raw)
        doc["attempts"] = self.attempts
        doc["status"] = self.status
        if self.reason is not None:
            doc["reason"] = self.reason
        if self.http_status is not None:
            doc["http_status"] = self.http_status
        if self.protocol != HL7V2_BATCH:
            doc["header"] = self.header
        if self.text is not None:
            doc["text"] = self.text
        doc["charset"] = self.charset
        doc["issues"] = self.issues
        if self.control_key is not None:
            doc["control_key"] = self.control_key
        if self.protocol == HL7V2:
            doc["ack"] = self.ack
        # One test per field, not a loop over pairs: this runs once per message on intake's hot path.
        if self.dedup_key is not None:
            doc["dedup_key"] = self.dedup_key
        if self.batch is not None:
            doc["batch"] = self.batch
        if self.children is not None:
            doc["children"] = self.children
        if self.fhir is not None:
            doc["fhir"] = self.fhir
        if self.reply is not None:
            doc["reply"] = self.reply
        if self.truncated:
            doc["truncated"] = True
        if self.processing is not None:
            doc["processing"] = self.processing.to_doc()
        if self.duplicates is not None:
            doc["duplicates"] = self.duplicates
        if self.last_duplicate_at is not None:
            doc["last_duplicate_at"] = self.last_duplicate_at
        if self.lease is not None:
            doc["lease"] = self.lease
        if self.map_attempts is not None:
            doc["map_attempts"] = self.map_attempts
        if self.next_attempt_at is not None:
            doc["next_attempt_at"] = self.next_attempt_at
        if self.review is not None:
            doc["review"] = self.review
        if self.reprocessed is not None:
            doc["reprocessed"] = self.reprocessed
        if self.extra:
            doc.update(self.extra)
        if self.order is None or tuple(doc) == self.order:
            return doc
        # Read from a document whose fields were written in another order (later updates append
        # fields): keep that order, then anything set since.
        return {**{k: doc[k] for k in self.order if k in doc}, **doc}
