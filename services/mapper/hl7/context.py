"""The state of one mapping: the message's segments, header facts, sender settings, issues, consumption.

A ``Context`` is created per call and thrown away: the mapping functions stay pure (same text and
configuration in, same result out) even though they note issues and consumed segments on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shared.er7 import ParsedMessage

from ..model import MappingError, OutcomeIssue, issue
from . import tables
from .config import MappingConfig, SenderConfig
from .datatypes.identifiers import Systems
from .datatypes.times import FhirTime, InvalidValue, parse_ts
from .reader import Seg

# Envelope segments: the header, the sending software, the event. Always consumed (the steps read
# what they need from them: MSH-3/4/7/9/10/12, EVN-2/6) and their other fields are not reported.
ENVELOPE_SEGMENTS = frozenset({"MSH", "EVN", "SFT"})
# Set IDs and similar structural fields: never content, never reported as unmapped.
STRUCTURAL_FIELDS: dict[str, frozenset[int]] = {
    "PID": frozenset({1}),
    "PV1": frozenset({1}),
    "OBR": frozenset({1}),
    "OBX": frozenset({1, 2}),
    "NTE": frozenset({1}),
    "DG1": frozenset({1}),
    "AL1": frozenset({1}),
    "PR1": frozenset({1}),
}


@dataclass(frozen=True)
class Header:
    """What MSH says about the message."""

    code: str
    event: str
    structure: str
    version: str
    control_id: str
    facility: str
    application: str

    @property
    def type(self) -> str:
        return f"{self.code}^{self.event}" if self.event else self.code


# The sender scope of a message whose MSH-4 and MSH-3 are empty.
UNKNOWN_SENDER = "unknown"
# Message codes with a single trigger event, for senders that leave MSH-9.2 empty (v2.3 "ORM").
SOLE_TRIGGER = {"ORM": "O01", "ORU": "R01", "OMG": "O19"}


def read_header(msh: Seg) -> Header:
    """MSH-3/4 (sender), MSH-9 (type), MSH-10 (control id), MSH-12 (version)."""
    kind = msh.composite(9)
    facility = msh.composite(4)
    application = msh.composite(3)
    return Header(
        code=kind.c(1).upper(),
        event=kind.c(2).upper(),
        structure=kind.c(3).upper(),
        version=msh.value(12),
        control_id=msh.value(10),
        facility=facility.c(1) or facility.c(2) or application.c(1) or UNKNOWN_SENDER,
        application=application.c(1),
    )


def _zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        # No time zone database (a bare container): UTC, the only zone Python always has.
        return UTC


@dataclass
class Context:
    """One message being mapped."""

    message: ParsedMessage
    segments: list[Seg]
    header: Header
    sender: SenderConfig
    systems: Systems
    zone: tzinfo
    issues: list[OutcomeIssue] = field(default_factory=list)
    consumed: set[int] = field(default_factory=set)

    # --- segments --------------------------------------------------------------------------------

    def all(self, name: str, within: list[Seg] | None = None) -> list[Seg]:
        return [s for s in (self.segments if within is None else within) if s.name == name]

    def first(self, name: str, within: list[Seg] | None = None) -> Seg | None:
        found = self.all(name, within)
        return found[0] if found else None

    def take(self, seg: Seg) -> Seg:
        """Mark ``seg`` as consumed by a mapping function."""
        self.consumed.add(seg.index)
        return seg

    def msh(self) -> Seg:
        return self.segments[0]

    # --- issues ----------------------------------------------------------------------------------

    def warn(self, diagnostics: str, expression: str | None = None) -> None:
        self.issues.append(issue("warning", "value", diagnostics, expression))

    def info(self, diagnostics: str, expression: str | None = None) -> None:
        self.issues.append(issue("information", "informational", diagnostics, expression))

    # --- values that need the message's setting --------------------------------------------------

    def time(self, seg: Seg, number: int) -> FhirTime | None:
        """Field ``number`` of ``seg`` as a time; an invalid one gives None and a warning naming it."""
        raw = seg.value(number)
        try:
            return parse_ts(raw, self.zone)
        except InvalidValue as exc:
            self.warn(f"{seg.name}-{number}: {exc}; left out", f"{seg.name}-{number}")
            return None

    def unmapped(self) -> list[str]:
        """Segments no function consumed ("ZU1[1]"), then fields of consumed segments nobody read
        ("PID-30"), each listed once."""
        out = [s.label for s in self.segments if s.index not in self.consumed]
        seen: set[str] = set()
        for seg in self.segments:
            if seg.index not in self.consumed or seg.name in ENVELOPE_SEGMENTS:
                continue
            skip = STRUCTURAL_FIELDS.get(seg.name, frozenset())
            for number in seg.populated():
                label = f"{seg.name}-{number}"
                if number not in seg.read and number not in skip and label not in seen:
                    seen.add(label)
                    out.append(label)
        return out


def build_context(message: ParsedMessage, config: MappingConfig) -> Context:
    """Wrap the parsed message; ``MappingError`` when MSH-9 has no message type."""
    counts: dict[str, int] = {}
    segments: list[Seg] = []
    for index, segment in enumerate(message.segments):
        counts[segment.name] = counts.get(segment.name, 0) + 1
        segments.append(Seg(segment, counts[segment.name], index))
    header = read_header(segments[0])
    if not header.code:
        raise MappingError("MSH-9 names no message type", code="required", expression="MSH-9")
    if not header.event:
        # Older ADT senders put the trigger in EVN-1 only; single-trigger types have an obvious one.
        evn = next((s for s in segments if s.name == "EVN"), None)
        event = evn.value(1).upper() if evn is not None and header.code == "ADT" else SOLE_TRIGGER.get(header.code, "")
        header = replace(header, event=event)
    sender = config.for_sender(header.facility, header.application)
    known = frozenset(tables.entries("ods-organisations")) | sender.ods_codes
    systems = Systems(sender.local_system_pattern, header.facility, known, sender.organisation_oids)
    context = Context(message, segments, header, sender, systems, _zone(sender.assume_timezone))
    context.consumed.update(s.index for s in segments if s.name in ENVELOPE_SEGMENTS)
    if header.facility == UNKNOWN_SENDER:
        # Local numbers mean something only within the trust that issued them; a message that names no
        # sender shares its scope with every other such message, so say so on the record.
        context.warn(
            "MSH-4 and MSH-3 name no sending facility or application: local identifiers are scoped to "
            f"'{UNKNOWN_SENDER}', shared with every other unnamed sender; only the NHS number identifies "
            "the patient safely",
            "MSH-4",
        )
    return context


def source_time(context: Context) -> datetime | None:
    """MSH-7 as an aware datetime: a time without offset is read in the sender's zone (Europe/London
    by default); a date alone is midnight there; invalid or empty gives None and a warning."""
    parsed = context.time(context.msh(), 7)
    if parsed is None:
        return None
    if parsed.moment is not None:
        return parsed.moment
    year, month, day = ([int(p) for p in parsed.value.split("-")] + [1, 1])[:3]
    return datetime(year, month, day, tzinfo=context.zone)
