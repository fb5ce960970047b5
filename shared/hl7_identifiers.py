"""The HL7v2 components that become FHIR ``Identifier.value``s, and the check that none is too long.

Identifiers are indexed for search (``resources``: ``resource.identifier.value``,
``resource.requester.identifier.value``), and MongoDB 4.0 refuses an index key over 1024 bytes: a
message with a longer identifier would be acknowledged and its resources could then never be stored.
Intake therefore refuses, before it answers, a message in which any of these values is over
``MAX_KEY_BYTES`` (as the FHIR side refuses such a resource, ``fhir_strings``). Identifiers inside
references (a GP practice's code, a practitioner's number) are not indexed today; they are held to the
same limit, as on the FHIR side, so that what the hub stores can be searched and sent on as FHIR.

``IDENTIFIER_COMPONENTS`` lists every component the HL7v2 mapping (services/mapper/hl7) makes an
identifier value of, and no other: tests/test_hl7_long_identifiers.py maps messages in which every
component of every segment mapped holds a mark naming its place, and checks that every identifier value
in the output comes from a listed component and that each listed one gives one, so the list cannot fall
behind the mapping. The only other identifier values the mapping
makes are ODS codes (an organisation's shape or the configured codes: a few characters) and NHS numbers
normalised to ten digits.

A value is measured as the mapping reads it: the component's first subcomponent, unescaped and
stripped, as UTF-8; in every repetition of the field (the mapping reads every one of some fields, the
first valued one of others). Only the segments listed are looked at, and in them only the fields whose
bytes could be that long once decoded: for a message of ordinary identifiers this is a look at each
segment's length, no parse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .er7 import SegmentSpan, Separators, unescape
from .ids import MAX_KEY_BYTES

# Segment -> (field, component) pairs whose value (the component's first subcomponent) becomes an
# Identifier.value; the datatype and the element it becomes in the comment.
IDENTIFIER_COMPONENTS: dict[str, tuple[tuple[int, int], ...]] = {
    # CX.1: Patient.identifier (PID-2 external, PID-3 primary with the NHS number, PID-4 alternate)
    "PID": ((2, 1), (3, 1), (4, 1)),
    # XON.3/XON.10 practice code, XCN.1 GP: Patient.generalPractitioner.identifier
    "PD1": ((3, 3), (3, 10), (4, 1)),
    # CX.1: the merged-away Patient.identifier (ADT^A40)
    "MRG": ((1, 1), (2, 1), (4, 1)),
    # XCN.1: Encounter.participant.individual.identifier; CX.1 visit numbers: Encounter.identifier
    "PV1": ((7, 1), (8, 1), (9, 1), (17, 1), (19, 1), (50, 1)),
    # EI.1: the referral's ServiceRequest.identifier
    "RF1": ((6, 1), (11, 1)),
    # PL.4 facility, PLN.1 provider id, XON.3/XON.10: the contained PractitionerRole's identifiers
    "PRD": ((4, 4), (7, 1), (10, 3), (10, 10)),
    # EI.1 placer, filler, group: ServiceRequest/DiagnosticReport.identifier; XCN.1 orderer:
    # ServiceRequest.requester.identifier; XON.3/XON.10 ordering facility (contained PractitionerRole)
    "ORC": ((2, 1), (3, 1), (4, 1), (12, 1), (21, 3), (21, 10)),
    "OBR": ((2, 1), (3, 1), (16, 1)),
    # XCN.1 performers: Procedure.performer.actor.identifier; EI.1: Procedure.identifier
    "PR1": ((11, 1), (12, 1), (19, 1)),
    # EI.1: Condition.identifier
    "DG1": ((20, 1),),
}
_BY_ID = {name.encode("ascii"): pairs for name, pairs in IDENTIFIER_COMPONENTS.items()}
# Character sets in which a byte is at most one byte of UTF-8; in any other a byte may become three
# (a single-byte character set's upper half, or the replacement character).
_SAME_SIZE = frozenset({"utf-8", "utf8", "ascii"})
NULL = '""'  # HL7 "now null": the mapping reads it as empty


@dataclass(frozen=True)
class LongIdentifier:
    """A value that would become an identifier longer than the limit, and where it is."""

    segment: str
    occurrence: int  # 1 for the first segment of that name in the message
    field: int
    repetition: int  # 1-based
    component: int
    size: int  # bytes of UTF-8
    limit: int

    @property
    def location(self) -> str:
        """As intake's ERR names a field (``PID-3``)."""
        return f"{self.segment}-{self.field}"

    @property
    def reason(self) -> str:
        where = f"{self.segment}-{self.field}"
        place = f"repetition {self.repetition}, component {self.component}"
        if self.occurrence > 1:
            place = f"{self.segment} segment {self.occurrence}, {place}"
        return (
            f"{where} ({place}) holds an identifier of {self.size} bytes, over the limit of {self.limit} bytes "
            "for an identifier (identifiers are indexed for search, and an index key can be no longer): "
            "correct the identifier at its source (sending this message again will not help)"
        )


def _value(repetition: str, component: int, seps: Separators) -> str:
    """What the mapping reads from one repetition: the component's first subcomponent, unescaped, stripped."""
    parts = repetition.split(seps.component)
    raw = parts[component - 1] if component <= len(parts) else ""
    value = unescape(raw.split(seps.subcomponent, 1)[0], seps).strip()
    return "" if value == NULL else value


def long_identifier(
    data: bytes, spans: Sequence[SegmentSpan], seps: Separators, codec: str, limit: int = MAX_KEY_BYTES
) -> LongIdentifier | None:
    """The first value in ``data`` (one message: ``spans`` its segments, decoded with ``codec``) that
    would become an identifier of more than ``limit`` bytes of UTF-8; None when there is none."""
    # The fewest bytes that can decode to more than ``limit`` bytes of UTF-8: anything shorter is skipped,
    # so a segment shorter than that (nearly every one) costs a subtraction.
    shortest = limit + 1 if codec.lower() in _SAME_SIZE else limit // 3 + 1
    field_separator = seps.field.encode("latin-1")
    for start, end, _ in spans:
        if end - start - 4 < shortest:
            continue
        name = data[start : start + 3]
        pairs = _BY_ID.get(name)
        if pairs is None:
            continue
        fields = data[start:end].split(field_separator)
        for number, component in pairs:
            raw = fields[number] if number < len(fields) else b""
            if len(raw) < shortest:
                continue
            text = raw.decode(codec, errors="replace")
            for index, repetition in enumerate(text.split(seps.repetition), start=1):
                size = len(_value(repetition, component, seps).encode("utf-8", errors="surrogatepass"))
                if size > limit:
                    occurrence = sum(1 for span in spans if span.start <= start and span.name(data) == name)
                    return LongIdentifier(name.decode("ascii"), occurrence, number, index, component, size, limit)
    return None
