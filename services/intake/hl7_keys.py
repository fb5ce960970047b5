"""The keys an HL7v2 message is stored under: what makes a resend a duplicate.

A sender chooses MSH-3, MSH-4 and MSH-10, and a control id of a kilobyte is legal ER7. The keys built
from them go into unique or plain indexes, so each is passed through ``shared.ids.fitting_key``: kept as
it is when short (every key stored so far is unchanged), a digest when too long to be indexed. The full
values stay in the record (``control_key``, ``header``'s ``control_id_full`` and the raw bytes).
"""

from __future__ import annotations

import hashlib
from typing import Any

from shared.er7 import SegmentSpan
from shared.ids import fitting_key

from .header import MessageHeader


def control_key(header: MessageHeader) -> str:
    """Sending application + facility + control id, in full (kept on the record, not indexed)."""
    return f"hl7v2|{header.get(3)}|{header.get(4)}|{header.control_id}"


def content_digest(data: bytes, spans: list[SegmentSpan], header: MessageHeader) -> str:
    """A digest of the message's segments, MSH-7 (time of sending) aside and line endings normalised:
    a resend that only re-stamps MSH-7 or changes CRLF to CR is still the same message."""
    digest = hashlib.sha256()
    msh = list(header.fields)
    if len(msh) >= 7:
        msh[6] = ""
    digest.update(header.separators.field.join(msh[1:]).encode("utf-8", "surrogateescape"))
    # Every other segment after a CR, whatever ended it in the message.
    digest.update(b"".join([b"\r" + data[span.start : span.end] for span in spans[1:]]))
    return digest.hexdigest()[:32]


def dedup_key(header: MessageHeader, digest: str) -> str | None:
    """Same sending application + facility + control id + content = the same message (the unique,
    indexed key: a digest when the sender's fields are too long to be indexed).

    A control id reused for different content is a different message: it is stored, not mistaken
    for a resend (senders and test systems do reuse ids). None when MSH-10 is empty.
    """
    if not header.control_id:
        return None
    return fitting_key(f"{control_key(header)}|{digest}")


def indexed_header(header: MessageHeader) -> dict[str, Any]:
    """The record's ``header``: the indexed fields, MSH-10 (``header.control_id``) and MSH-4
    (``header.sending_facility``), as fitting keys, each in full as ``<name>_full`` when that differs."""
    doc = header.to_doc()
    for name in ("control_id", "sending_facility"):
        value = doc[name]
        doc[name] = fitting_key(value)
        if doc[name] != value:
            doc[f"{name}_full"] = value
    return doc
