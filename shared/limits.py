"""The limits on what the hub accepts, in one place: intake checks them before it acknowledges, and the
mapper uses them, so that whatever is acknowledged can be mapped and written within MongoDB's limits.

Acknowledged means processable. MongoDB stores no document over 16 MiB, and a transaction must commit
quickly (within ``MSCC_TRANSACTION_MAX_COMMIT_S``; on MongoDB 4.0 it must also stay under 16 MiB). A
message that fits the wire can still break both: a million tiny segments gave an outcome document of
24 MB; a 3.9 MB message, or a Bundle of 20,000 entries, a transaction over 16 MB. So intake refuses, with
the limit named (HL7v2 ``AR``, FHIR 413) and the input kept, anything over:

- ``message_bytes``: the size on the wire (``MSCC_MLLP_MAX_MESSAGE_BYTES``, checked while reading);
- ``segments``: HL7v2 segments in one frame (a batch counts as a whole), ``MSCC_LIMIT_SEGMENTS``;
- ``field_repetitions``: repetitions of one HL7v2 field, ``MSCC_LIMIT_FIELD_REPETITIONS``;
- ``bundle_entries`` and ``contained_resources``: FHIR entries in a Bundle, contained resources in a
  body, ``MSCC_LIMIT_BUNDLE_ENTRIES`` and ``MSCC_LIMIT_CONTAINED_RESOURCES``;
- ``document_bytes``: the estimated size of the message's own record (its bytes, its decoded text, room
  for its processing outcome), ``MSCC_LIMIT_DOCUMENT_BYTES``;
- ``transaction_bytes``: the estimated size of what mapping the message writes (every resource version
  twice: current and history), ``MSCC_LIMIT_TRANSACTION_BYTES``.

The estimates are cheap upper bounds, not measurements: counts of bytes and separators, never a parse,
so the acknowledgement path stays fast. Their factors were measured on every corpus message (the
largest amplification of a field's bytes into mapped resources is 3, a DG1-4 diagnosis text; a sending
facility is copied into each resource's identifier systems; a segment yields at most about 1 KiB of
resource) and ``tests/test_limits.py`` checks that they stay above what mapping really writes. The
mapper packs each claimed batch into transactions of at most ``transaction_bytes`` by the same
estimate, and bounds every list of a processing outcome (``bounded``) so that the outcome fits the
room the record estimate keeps for it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pymongo.errors import BulkWriteError, DocumentTooLarge

from .db_errors import TOO_LARGE_CODES as DOCUMENT_TOO_LARGE_CODES
from .db_errors import TRANSACTION_TOO_LARGE
from .er7 import segment_spans
from .messages import kept_bytes

KIB = 1024
MIB = 1024 * KIB

# Estimate factors (see the module docstring).
CONTENT_COPIES = 3  # an HL7v2 field's bytes appear at most this often across the mapped resources
SEGMENT_BYTES = KIB  # resource bytes one segment can yield beyond its own content
HEADER_COPIES = 2  # copies of MSH-3/MSH-4 per segment's resource (identifier systems, sources)
REPETITION_BYTES = 512  # one repetition can become an element of its own (an identifier, a name)
MAPPING_BASE_BYTES = 16 * KIB  # what every message adds: Patient, Encounter, CarePlan, data-quality Task
FHIR_CONTENT_COPIES = 2  # BSON of a FHIR body, normalised, against its JSON
FHIR_ENTRY_BYTES = 512  # version, history and outbox bookkeeping of each entry
FHIR_DERIVED_BYTES = 8 * KIB  # what a referral or an HNA response derives (Encounter, CarePlan, Task)
DERIVING_TYPES = frozenset({"ServiceRequest", "QuestionnaireResponse"})
RECORD_OVERHEAD_BYTES = 64 * KIB  # header, ACK or answer, issues, keys of a message record
FHIR_PLAN_ENTRY_BYTES = KIB  # one Bundle entry's plan and its receipt entry on the record

# Processing outcomes: how many items each list keeps (unmapped content, resources written; issues) and
# how long one item (an issue's diagnostics) may be. Together at most about 600 KiB, within the room a
# record estimate keeps for the outcome.
OUTCOME_LIST_ITEMS = 500
OUTCOME_ISSUES = 200
OUTCOME_ITEM_CHARS = 300
OUTCOME_DIAGNOSTICS_CHARS = 2000
OUTCOME_RESERVE_BYTES = MIB

_LINE = re.compile(rb"\S[^\r\n]*")  # one non-blank line (a CR, LF or CRLF ends it)
_HEADER = re.compile(rb"(?:MSH|BHS|FHS)(.)(.)(.)", re.DOTALL)
_RESOURCE_TYPE = b'"resourceType"'


class LimitSettings(Protocol):
    mllp_max_message_bytes: int
    limit_segments: int
    limit_field_repetitions: int
    limit_bundle_entries: int
    limit_contained_resources: int
    limit_document_bytes: int
    limit_transaction_bytes: int


@dataclass(frozen=True)
class Limits:
    """The limits (defaults: the settings' defaults)."""

    message_bytes: int = 4 * MIB
    segments: int = 10_000
    field_repetitions: int = 1_000
    bundle_entries: int = 1_000
    contained_resources: int = 100
    document_bytes: int = 15 * MIB
    transaction_bytes: int = 12 * MIB

    @classmethod
    def from_settings(cls, settings: LimitSettings) -> Limits:
        return cls(
            message_bytes=settings.mllp_max_message_bytes,
            segments=settings.limit_segments,
            field_repetitions=settings.limit_field_repetitions,
            bundle_entries=settings.limit_bundle_entries,
            contained_resources=settings.limit_contained_resources,
            document_bytes=settings.limit_document_bytes,
            transaction_bytes=settings.limit_transaction_bytes,
        )


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class LimitExceeded:
    """One limit a message is over: the setting that sets it, its value, what was found, and why it
    matters, in words a sender can act on. ``location`` names an HL7v2 field (``PID-3``) where known."""

    setting: str
    limit: int
    found: int
    what: str
    location: str = ""

    @property
    def reason(self) -> str:
        return (
            f"{self.what}: {self.found}, over the limit of {self.limit} ({self.setting}); split the content "
            "into smaller messages (sending this one again will not help)"
        )


# --- HL7v2 -------------------------------------------------------------------------------------------


def segments_over(data: bytes, limit: int) -> int | None:
    """None when ``data`` holds at most ``limit`` segments, else a count over ``limit`` (counting stops
    just past it). Counting bytes, not parsing: every non-blank line counts (a CR, LF or CRLF ends
    one); a message over the limit only by lines that a line feed inside a field makes is counted again
    exactly (``er7.segment_spans``), so text wrapped with line feeds never counts against it."""
    if len(data) < limit:
        return None  # fewer bytes than the limit: fewer line ends too
    if data.count(b"\r") + data.count(b"\n") < limit:
        return None
    count = 0
    for _ in _LINE.finditer(data):
        count += 1
        if count > limit:
            break
    if count <= limit:
        return None
    if b"\n" in data:
        exact = len(segment_spans(data))
        return exact if exact > limit else None
    return count


def separators(data: bytes) -> tuple[bytes, bytes] | None:
    """The field and repetition separators of the first MSH, BHS or FHS of ``data``, if readable."""
    match = _HEADER.search(data)
    if match is None:
        return None
    field, repetition = match.group(1), match.group(3)
    if field in (b"\r", b"\n") or repetition in (b"\r", b"\n") or field == repetition:
        return None
    return field, repetition


def repetitions_over(data: bytes, limit: int) -> tuple[int, str] | None:
    """The repetitions of the first field of ``data`` with more than ``limit``, and where it is
    (``PID-3``); None when there is none. The common case is one count of the separator in the bytes."""
    if len(data) < limit:
        return None  # fewer bytes than the limit: fewer repetitions too
    found = separators(data)
    if found is None:
        return None
    field, repetition = found
    if data.count(repetition) < limit:
        return None
    for line in _LINE.finditer(data):
        text = line.group()
        if text.count(repetition) < limit:
            continue
        name = text[:3].decode("latin-1")
        values = text.split(field)
        for index, value in enumerate(values[1:], start=1):
            count = value.count(repetition) + 1
            if count > limit:
                # MSH-1 is the field separator itself: MSH's fields are numbered one on.
                number = index + 1 if name in ("MSH", "BHS", "FHS") else index
                return count, f"{name}-{number}"
    return None


def check_hl7_frame(data: bytes, limits: Limits) -> LimitExceeded | None:
    """The segment and repetition limits of one HL7v2 frame (a message or a batch), before any parse."""
    segments = segments_over(data, limits.segments)
    if segments is not None:
        return LimitExceeded(
            "MSCC_LIMIT_SEGMENTS", limits.segments, segments, "the message has more segments than the limit"
        )
    repeated = repetitions_over(data, limits.field_repetitions)
    if repeated is not None:
        count, location = repeated
        return LimitExceeded(
            "MSCC_LIMIT_FIELD_REPETITIONS",
            limits.field_repetitions,
            count,
            f"{location} has more repetitions than the limit",
            location,
        )
    return None


def text_bytes(text: str) -> int:
    """The UTF-8 size of decoded text, as MongoDB stores it."""
    return len(text) if text.isascii() else len(text.encode("utf-8", errors="surrogatepass"))


def hl7_record_bytes(raw_bytes: int, text_size: int) -> int:
    """Upper bound of an HL7v2 message record: its bytes, its decoded text, and room for its outcome."""
    return raw_bytes + text_size + RECORD_OVERHEAD_BYTES + OUTCOME_RESERVE_BYTES


def hl7_write_bytes(text_size: int, segments: int, repetitions: int, header_bytes: int) -> int:
    """Upper bound of what mapping one HL7v2 message writes: each resource version twice (current and
    history), from the content, the segments, the repetitions and the MSH-3/MSH-4 copies."""
    once = (
        MAPPING_BASE_BYTES
        + CONTENT_COPIES * text_size
        + segments * (SEGMENT_BYTES + HEADER_COPIES * header_bytes)
        + repetitions * REPETITION_BYTES
    )
    return 2 * once


def check_hl7_message(raw: bytes, text: str, segments: int, limits: Limits) -> LimitExceeded | None:
    """The record and write estimates of one HL7v2 message (``raw`` its bytes, ``text`` as decoded,
    ``segments`` how many it has), once its header is read."""
    size = text_bytes(text)
    record = hl7_record_bytes(len(raw), size)
    if record > limits.document_bytes:
        return LimitExceeded(
            "MSCC_LIMIT_DOCUMENT_BYTES",
            limits.document_bytes,
            record,
            "the message's record (its bytes and decoded text) would be larger than the limit, in bytes",
        )
    if hl7_write_bytes(size, segments, len(raw), len(raw)) <= limits.transaction_bytes:
        # Repetitions and the header's size are at most the message's bytes: if the estimate fits even
        # with those, they need not be counted (the common case, a message of a few kilobytes).
        return None
    written = hl7_write_bytes(size, segments, repetition_count(raw), header_bytes(raw))
    if written > limits.transaction_bytes:
        return LimitExceeded(
            "MSCC_LIMIT_TRANSACTION_BYTES",
            limits.transaction_bytes,
            written,
            "the resources mapped from the message would be larger than the limit, in bytes (estimated)",
        )
    return None


def repetition_count(raw: bytes) -> int:
    found = separators(raw)
    return raw.count(found[1]) if found else 0


def header_bytes(raw: bytes) -> int:
    """The size of the header segment (MSH-3 and MSH-4 are copied into mapped resources)."""
    match = _HEADER.search(raw)
    if match is None:
        return 0
    start = match.start()
    ends = [end for end in (raw.find(b"\r", start), raw.find(b"\n", start)) if end >= 0]
    return (min(ends) if ends else len(raw)) - start


# --- FHIR --------------------------------------------------------------------------------------------


def _contained(resource: Any) -> int:
    if not isinstance(resource, dict):
        return 0
    contained = resource.get("contained")
    return len(contained) if isinstance(contained, list) else 0


def fhir_counts(data: Any) -> tuple[int, int, int]:
    """(Bundle entries, contained resources, entries whose resources derive more) of a FHIR body."""
    if not isinstance(data, dict):
        return 0, 0, 0
    contained = _contained(data)
    deriving = 1 if data.get("resourceType") in DERIVING_TYPES else 0
    entries = data.get("entry") if data.get("resourceType") == "Bundle" else None
    if not isinstance(entries, list):
        return 0, contained, deriving
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        contained += _contained(resource)
        deriving += 1 if isinstance(resource, dict) and resource.get("resourceType") in DERIVING_TYPES else 0
    return len(entries), contained, deriving


def fhir_write_bytes(body_bytes: int, entries: int, deriving: int) -> int:
    """Upper bound of what mapping a FHIR body writes (each version twice: current and history)."""
    once = (
        MAPPING_BASE_BYTES
        + FHIR_CONTENT_COPIES * body_bytes
        + entries * FHIR_ENTRY_BYTES
        + deriving * FHIR_DERIVED_BYTES
    )
    return 2 * once


def check_fhir(data: Any, body_bytes: int, limits: Limits) -> LimitExceeded | None:
    """Every limit of a parsed FHIR body (a resource or a Bundle) of ``body_bytes`` bytes."""
    entries, contained, deriving = fhir_counts(data)
    if entries > limits.bundle_entries:
        return LimitExceeded(
            "MSCC_LIMIT_BUNDLE_ENTRIES", limits.bundle_entries, entries, "the Bundle has more entries than the limit"
        )
    if contained > limits.contained_resources:
        return LimitExceeded(
            "MSCC_LIMIT_CONTAINED_RESOURCES",
            limits.contained_resources,
            contained,
            "the body has more contained resources than the limit",
        )
    record = body_bytes + entries * FHIR_PLAN_ENTRY_BYTES + RECORD_OVERHEAD_BYTES + OUTCOME_RESERVE_BYTES
    if record > limits.document_bytes:
        return LimitExceeded(
            "MSCC_LIMIT_DOCUMENT_BYTES",
            limits.document_bytes,
            record,
            "the body's record would be larger than the limit, in bytes",
        )
    written = fhir_write_bytes(body_bytes, entries, deriving)
    if written > limits.transaction_bytes:
        return LimitExceeded(
            "MSCC_LIMIT_TRANSACTION_BYTES",
            limits.transaction_bytes,
            written,
            "the resources mapped from the body would be larger than the limit, in bytes (estimated)",
        )
    return None


def check_fhir_bytes(body: bytes, limits: Limits) -> LimitExceeded | None:
    """The limits of a FHIR body before it is validated (validating 20,000 entries takes long): a
    count of ``"resourceType"`` in the bytes bounds its entries and contained resources; only a body
    with more of them than a limit is parsed to count them exactly. A body that is not JSON passes
    (validation answers it)."""
    if body.count(_RESOURCE_TYPE) <= min(limits.bundle_entries, limits.contained_resources):
        return None
    try:
        data = json.loads(body.decode("utf-8").removeprefix("\ufeff"))
    except (ValueError, RecursionError):
        return None
    return check_fhir(data, len(body), limits)


# --- the mapper ----------------------------------------------------------------------------------------


def record_write_bytes(record: dict[str, Any]) -> int:
    """The write estimate of a stored message record, as the mapper packs transactions by it."""
    raw = kept_bytes(record) or b""
    if record.get("protocol") == "fhir":
        plan = (record.get("fhir") or {}).get("entries") or []
        deriving = sum(1 for item in plan if isinstance(item, dict) and item.get("type") in DERIVING_TYPES)
        if not plan:
            deriving = 1
        return fhir_write_bytes(len(raw), len(plan), deriving)
    text = record.get("text") or ""
    text = text if isinstance(text, str) else ""
    segments = text.count("\r") + text.count("\n") + 1
    return hl7_write_bytes(text_bytes(text), segments, repetition_count(raw), header_bytes(raw))


# BSONObjectTooLarge and kin, and TransactionTooLarge (MongoDB 4.0: a transaction over 16 MiB).
TOO_LARGE_CODES = DOCUMENT_TOO_LARGE_CODES | {TRANSACTION_TOO_LARGE}
TOO_LARGE_TEXT = (
    "the mapped resources are larger than MongoDB can write (a document over 16 MiB, or a transaction over "
    "its limit): this message cannot be mapped as it is; MSCC_LIMIT_TRANSACTION_BYTES and "
    "MSCC_LIMIT_DOCUMENT_BYTES keep such messages out at intake"
)


def too_large(exc: BaseException) -> bool:
    """Whether ``exc`` (or the failure it wraps) says a document or a transaction was too large to
    write: permanent, never worth a retry."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DocumentTooLarge):
            return True
        codes = [getattr(current, "code", None)]
        if isinstance(current, BulkWriteError):
            codes += [err.get("code") for err in (current.details or {}).get("writeErrors", [])]
        if any(code in TOO_LARGE_CODES for code in codes if isinstance(code, int)):
            return True
        current = current.__cause__
    return False


def pack(sizes: Sequence[int], limit: int) -> list[list[int]]:
    """Indexes of ``sizes`` in order, grouped so that each group's total stays within ``limit``; an item
    over the limit alone is a group of its own."""
    groups: list[list[int]] = []
    total = 0
    for index, size in enumerate(sizes):
        if groups and total + size <= limit:
            groups[-1].append(index)
            total += size
        else:
            groups.append([index])
            total = size
    return groups


def bounded(items: Sequence[Any], limit: int = OUTCOME_LIST_ITEMS) -> tuple[list[Any], int]:
    """The first ``limit`` items and how many were left out; a string item is cut to
    ``OUTCOME_ITEM_CHARS``, an issue's diagnostics to ``OUTCOME_DIAGNOSTICS_CHARS``."""
    kept = [_short(item) for item in items[:limit]]
    return kept, max(0, len(items) - limit)


def _cut(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _short(item: Any) -> Any:
    if isinstance(item, str):
        return _cut(item, OUTCOME_ITEM_CHARS)
    if isinstance(item, dict) and isinstance(item.get("diagnostics"), str):
        return {**item, "diagnostics": _cut(item["diagnostics"], OUTCOME_DIAGNOSTICS_CHARS)}
    return item
