"""Intake's side of the limits (``shared/limits.py``): the refusal each exceeded limit is answered with.

HL7v2: ``AR`` with HL7 table 0357 code 207 and the limit named in ERR (and MSA-3 before v2.7); FHIR:
413 with an OperationOutcome naming it. Either way the input is kept as a rejected record with the
reason, as every refusal is. The frame check runs before the segments are even located, so a frame of
a million segments costs a count of its bytes, not a parse.

An HL7v2 identifier longer than an index key can be (``shared/hl7_identifiers.py``) is refused the same
way, with code 102 (the value itself is wrong, as the FHIR side answers 422) at the field that holds it.
"""

from __future__ import annotations

from typing import Any

from shared.er7 import SegmentSpan
from shared.fhir import FhirError
from shared.hl7_identifiers import long_identifier
from shared.limits import LimitExceeded, Limits, check_fhir, check_fhir_bytes, check_hl7_frame, check_hl7_message

from .header import (
    APPLICATION_INTERNAL_ERROR,
    DATA_TYPE_ERROR,
    HeaderRead,
    MessageHeader,
    Rejection,
    read_header_fields,
)


def _rejection(exceeded: LimitExceeded) -> Rejection:
    return Rejection(APPLICATION_INTERNAL_ERROR, exceeded.reason, location=exceeded.location)


def frame_refusal(data: bytes, limits: Limits) -> Rejection | None:
    """The refusal of an HL7v2 frame over the segment or repetition limit, before any parse."""
    exceeded = check_hl7_frame(data, limits)
    return None if exceeded is None else _rejection(exceeded)


def check_message(raw: bytes, text: str, segments: int, limits: Limits) -> None:
    """``Rejection`` when one HL7v2 message's record or mapped resources would be over their limits."""
    exceeded = check_hl7_message(raw, text, segments, limits)
    if exceeded is not None:
        raise _rejection(exceeded)


def check_identifiers(data: bytes, spans: list[SegmentSpan], read: HeaderRead) -> None:
    """``Rejection`` when a value of one HL7v2 message (``spans`` its segments in ``data``) would become an
    identifier too long to be indexed: the mapped resources could never be stored."""
    found = long_identifier(data, spans, read.header.separators, read.charset)
    if found is not None:
        raise Rejection(DATA_TYPE_ERROR, found.reason, location=found.location)


def first_header(data: bytes) -> MessageHeader | None:
    """The MSH a frame starts with, read from its first line alone (to address a refusal to its sender)."""
    head = data.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head.startswith(b"MSH"):
        return None
    ends = [end for end in (head.find(b"\r"), head.find(b"\n")) if end >= 0]
    try:
        return read_header_fields(head[: min(ends) if ends else len(head)].decode("latin-1"))
    except Rejection:
        return None


def _too_costly(exceeded: LimitExceeded | None) -> None:
    if exceeded is not None:
        raise FhirError(413, "too-costly", exceeded.reason)


def checked_fhir_body(body: bytes, limits: Limits) -> None:
    """``FhirError`` 413 for a FHIR body over a limit that its bytes show, before it is validated."""
    _too_costly(check_fhir_bytes(body, limits))


def checked_fhir_resource(data: Any, body: bytes, limits: Limits) -> None:
    """``FhirError`` 413 for a parsed FHIR body over any limit."""
    _too_costly(check_fhir(data, len(body), limits))
