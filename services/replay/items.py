"""What the readers hand to the senders: one unit to send (``Item``) and what it says about itself.

An item is what goes out in one MLLP frame or one HTTP request: an HL7v2 message, a whole batch (each of
its messages described), or one NDJSON line of FHIR. Its key (source, byte offset in the decompressed
stream, content digest) is what the resume journal records once the hub has acknowledged it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

from shared.er7 import Separators, first_component, split_fields

Kind = Literal["hl7v2", "fhir"]
HL7V2: Kind = "hl7v2"
FHIR: Kind = "fhir"

_SEGMENT_END = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True)
class Described:
    """One message as the summary counts it: its type, its sender (MSH-4), its control id (MSH-10) and
    MSH-15 (whether a commit acknowledgement is asked for). FHIR: the resource type, no sender."""

    message_type: str
    sender: str
    control_id: str = ""
    accept_ack: str = ""


@dataclass(frozen=True)
class Item:
    """One unit to send, where it came from, and the messages it holds (several for a batch)."""

    source: str
    offset: int
    kind: Kind
    data: bytes
    messages: tuple[Described, ...]
    path: str = "/hl7v2"  # the HTTP path it is posted to
    problem: str = ""  # set when the reader could not make a sendable unit of these bytes

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def key(self) -> str:
        """The resume journal's key: source, offset and content digest (a changed file is sent again)."""
        return f"{self.source}\t{self.offset}\t{self.digest}"


def _msh_fields(segment: bytes) -> tuple[list[str], Separators] | None:
    text = segment.decode("latin-1")
    if len(text) < 8 or not text.startswith("MSH"):
        return None
    fs = text[3]
    enc = text[4:].split(fs, 1)[0]
    if len(enc) < 4:
        return None
    seps = Separators(fs, enc[0], enc[1], enc[2], enc[3])
    fields = [fs, *split_fields(text[4:], fs)]
    return fields, seps


def describe_hl7(data: bytes) -> tuple[Described, ...]:
    """Each message of ``data`` (MSH segments; a batch holds several), read from MSH alone: no parse."""
    found: list[Described] = []
    for segment in _SEGMENT_END.split(data):
        segment = segment.lstrip()
        if not segment.startswith(b"MSH"):
            continue
        read = _msh_fields(segment)
        if read is None:
            found.append(Described("(unreadable MSH)", "?"))
            continue
        fields, seps = read

        def get(number: int, fields: list[str] = fields) -> str:
            return fields[number - 1] if number <= len(fields) else ""

        parts = get(9).split(seps.component)
        message_type = "^".join(p for p in parts[:2] if p) or "(no MSH-9)"
        sender = first_component(get(4), seps) or "(no MSH-4)"
        found.append(Described(message_type, sender, get(10), get(15).strip().upper()))
    return tuple(found) or (Described("(no MSH)", "?"),)
