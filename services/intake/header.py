"""The lean read that intake does before it acknowledges: MSH, character set, segment ids. No full parse.

``read_message`` returns a ``HeaderRead`` (the header, the decoded text, warnings) or raises
``Rejection`` carrying the HL7 table 0357 error code, the location and a reason a person can act on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from shared.er7 import UTF8_BOM, SegmentSpan, Separators, first_component
from shared.nhs import is_valid_nhs_number, normalise_nhs_number, redact_nhs_number

# HL7 table 0357 (message error condition codes) as used by intake.
SEGMENT_SEQUENCE_ERROR = 100
REQUIRED_FIELD_MISSING = 101
DATA_TYPE_ERROR = 102
UNSUPPORTED_MESSAGE_TYPE = 200
UNSUPPORTED_EVENT = 201
UNSUPPORTED_PROCESSING_ID = 202
UNSUPPORTED_VERSION = 203
APPLICATION_INTERNAL_ERROR = 207

ACK_TYPES = ("AL", "NE", "ER", "SU")  # HL7 table 0155
KNOWN_VERSIONS = frozenset(
    {"2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2", "2.9"}
)
_SEGMENT_ID = re.compile(rb"[A-Z][A-Z0-9]{2}")
_VERSION = re.compile(r"\d+(\.\d+)*(?=[^.\d]|$)")

# MSH-18 values (HL7 table 0211) -> Python codecs. UTF-16/32 cannot travel in 8-bit MLLP framing.
CHARSETS = {
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "ISO IR6": "ascii",
    "ISO IR100": "latin-1",
    "ISO IR101": "iso8859-2",
    "ISO IR144": "iso8859-5",
    "ISO IR192": "utf-8",
    "UNICODE": "utf-8",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "WINDOWS-1252": "cp1252",
    "CP1252": "cp1252",
}


class Rejection(Exception):
    """The message cannot be accepted. ``code`` is from HL7 table 0357; ``ack`` is AR or AE."""

    def __init__(self, code: int, reason: str, *, location: str = "", ack: str = "AR") -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.location = location
        self.ack = ack


@dataclass(frozen=True)
class Issue:
    """One finding about a message, kept on its record and echoed in ERR segments."""

    severity: str  # "E" error, "W" warning, "I" information (HL7 table 0516)
    code: int
    text: str
    location: str = ""

    def to_doc(self) -> dict[str, Any]:
        return {"severity": self.severity, "code": self.code, "text": self.text, "location": self.location}


@dataclass(frozen=True)
class MessageHeader:
    """What intake reads from MSH before acknowledging.

    The values intake, the sender policy and the ACK ask for many times per message (``sending_facility``,
    ``version``…) are read from the fields once, when the header is made.
    """

    separators: Separators
    fields: tuple[str, ...]  # MSH-1 .. MSH-n, index 0 is MSH-1
    sending_application: str = field(init=False, repr=False, compare=False)  # MSH-3.1
    sending_facility: str = field(init=False, repr=False, compare=False)  # MSH-4.1
    message_code: str = field(init=False, repr=False, compare=False)  # MSH-9.1
    trigger_event: str = field(init=False, repr=False, compare=False)  # MSH-9.2
    message_type: str = field(init=False, repr=False, compare=False)  # "ADT^A01", or the code alone
    control_id: str = field(init=False, repr=False, compare=False)  # MSH-10
    processing_id: str = field(init=False, repr=False, compare=False)  # MSH-11.1
    # MSH-12's version id: its leading ``d.d[.d]`` (anything after it is reported, not trusted).
    version: str = field(init=False, repr=False, compare=False)
    # MSH-15 and MSH-16 if they are table 0155 codes (AL, NE, ER, SU); blank or other values count as empty.
    accept_ack_type: str = field(init=False, repr=False, compare=False)
    application_ack_type: str = field(init=False, repr=False, compare=False)
    # Enhanced acknowledgement mode when MSH-15 or MSH-16 holds a table 0155 code (HL7 v2 2.9.3).
    enhanced_mode: bool = field(init=False, repr=False, compare=False)
    charset: str = field(init=False, repr=False, compare=False)  # MSH-18, its first repetition

    def __post_init__(self) -> None:
        message_code = self.first(9)
        msh9 = self.get(9).split(self.separators.component)
        trigger_event = msh9[1] if len(msh9) > 1 else ""
        msh12 = self.first(12).strip()
        version = _VERSION.match(msh12)
        accept_ack_type = _ack_type(self.get(15))
        application_ack_type = _ack_type(self.get(16))
        values = {
            "sending_application": self.first(3),
            "sending_facility": self.first(4),
            "message_code": message_code,
            "trigger_event": trigger_event,
            "message_type": f"{message_code}^{trigger_event}" if trigger_event else message_code,
            "control_id": self.get(10),
            "processing_id": self.first(11),
            "version": version.group(0) if version else msh12,
            "accept_ack_type": accept_ack_type,
            "application_ack_type": application_ack_type,
            "enhanced_mode": bool(accept_ack_type or application_ack_type),
            "charset": self.get(18).split(self.separators.repetition, 1)[0].strip().upper(),
        }
        self.__dict__.update(values)  # frozen: the derived fields are set once, here

    def get(self, number: int) -> str:
        return self.fields[number - 1] if number <= len(self.fields) else ""

    def first(self, number: int) -> str:
        return first_component(self.get(number), self.separators)

    def to_doc(self) -> dict[str, Any]:
        msh9 = self.get(9).split(self.separators.component)
        return {
            "sending_application": self.sending_application,
            "sending_facility": self.sending_facility,
            "receiving_application": self.first(5),
            "receiving_facility": self.first(6),
            "datetime": self.get(7),
            "message_type": self.message_type,
            "structure": msh9[2] if len(msh9) > 2 else "",
            "control_id": self.control_id,
            "processing_id": self.processing_id,
            "version": self.version,
            "accept_ack_type": self.accept_ack_type,
            "application_ack_type": self.application_ack_type,
            "charset": self.charset,
        }


def _ack_type(value: str) -> str:
    """An MSH-15/MSH-16 value if it is a table 0155 code, else empty."""
    value = value.strip().upper()
    return value if value in ACK_TYPES else ""


@dataclass
class HeaderRead:
    header: MessageHeader
    text: str
    charset: str
    issues: list[Issue] = field(default_factory=list)


@cache  # called with an empty or a known version only (read_message refuses others first)
def _msh_field_limit(version: str) -> int:
    """How many MSH fields a version defines; more means a missing segment terminator."""
    if not version:
        return 25
    # v2.5.1/2.6 senders often pre-adopt MSH-22..25 from v2.7 (CDC immunisation, LRI, vendor profiles),
    # so from v2.4 on the v2.7 count applies; up to v2.3.1 MSH has at most 20 fields.
    major = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    return 20 if major <= (2, 3) else 25


def parse_separators(msh: str, issues: list[Issue] | None = None) -> Separators:
    """Read MSH-1 and MSH-2, raising ``Rejection`` (0357 code 102) when they are unusable.

    A doubled escape character (``^~\\\\&``, a common quoting slip in sending code) is read as one,
    with a warning added to ``issues``.
    """
    if len(msh) < 4:
        raise Rejection(DATA_TYPE_ERROR, "MSH segment ends before its field separator (MSH-1)", location="MSH-1")
    fs = msh[3]
    if fs.isalnum() or fs in "\r\n ":
        raise Rejection(DATA_TYPE_ERROR, f"MSH-1 field separator {fs!r} is not a usable separator", location="MSH-1")
    end = msh.find(fs, 4)
    enc = msh[4:] if end < 0 else msh[4:end]
    if len(enc) == 5 and enc[2] == enc[3] and enc[4] != "#":
        if issues is not None:
            issues.append(
                Issue("W", 0, f"MSH-2 {enc!r} has its escape character doubled; read as {enc[:3] + enc[4]!r}", "MSH-2")
            )
        enc = enc[:3] + enc[4]
    if len(enc) not in (4, 5) or (len(enc) == 5 and enc[4] != "#"):
        raise Rejection(
            DATA_TYPE_ERROR,
            f"MSH-2 encoding characters {enc!r} must be 4 characters (5 with the truncation character '#')",
            location="MSH-2",
        )
    if len(set(enc + fs)) != len(enc) + 1 or any(map(str.isspace, enc)):
        raise Rejection(
            DATA_TYPE_ERROR,
            f"MSH-2 encoding characters {enc!r} repeat each other or the field separator {fs!r}",
            location="MSH-2",
        )
    return Separators(fs, enc[0], enc[1], enc[2], enc[3], enc[4:5])


def read_header_fields(msh: str, issues: list[Issue] | None = None) -> MessageHeader:
    """Split MSH into fields, MSH-1 being the separator itself, as HL7 numbers them."""
    seps = parse_separators(msh, issues)
    rest = msh[4:].split(seps.field)
    rest[0] = seps.encoding_characters
    return MessageHeader(seps, (seps.field, *rest))


def decode(
    body: bytes, named: str, default: str, fallback: str, forced: str | None = None
) -> tuple[str, str, list[Issue]]:
    """Decode a message's bytes with ``forced`` (an HTTP charset), else the MSH-18 charset, else
    ``default``; bytes that do not decode fall back to ``fallback`` with a warning."""
    issues: list[Issue] = []
    if body.startswith(UTF8_BOM):
        body = body[len(UTF8_BOM) :]
        named = named or "UNICODE UTF-8"
    codec = default
    if forced:
        codec = forced
    elif named:
        mapped = CHARSETS.get(named)
        if mapped is None:
            issues.append(Issue("W", 0, f"MSH-18 character set {named!r} is not known; decoded as {default}", "MSH-18"))
        else:
            codec = mapped
    try:
        return body.decode(codec), codec, issues
    except UnicodeDecodeError as exc:
        issues.append(
            Issue(
                "W",
                0,
                f"bytes are not valid {codec} (first bad byte at {exc.start}); "
                f"text decoded as {fallback}, raw bytes kept",
                "MSH-18",
            )
        )
    try:
        return body.decode(fallback), fallback, issues
    except UnicodeDecodeError:
        return body.decode("latin-1"), "latin-1", issues


def check_segments(data: bytes, spans: list[SegmentSpan], field_separator: bytes) -> None:
    """Every segment id must be 3 characters [A-Z][A-Z0-9]{2} followed by the field separator."""
    for number, span in enumerate(spans, start=1):
        start = span.start
        # The id, then the field separator, unless the segment ends with its id.
        if _SEGMENT_ID.fullmatch(data, start, start + 3) and (
            span.end <= start + 3 or data[start + 3 : start + 4] == field_separator
        ):
            continue
        shown = data[start : min(span.end, start + 20)].decode("latin-1")
        raise Rejection(
            SEGMENT_SEQUENCE_ERROR,
            f"segment {number} starts {shown!r}, which is not a segment id: "
            "is a segment terminator (CR) inside a field?",
            location=f"segment {number}",
        )


# PID fields an NHS number may sit in, and the CX markers that say a repetition is one (HL7 UK: CX.5
# identifier type "NH", or "NHSNMBR" from some PAS; CX.4 assigning authority "NHS").
NHS_NUMBER_FIELDS = (3, 2)
NHS_NUMBER_TYPES = frozenset({"NH", "NHSNMBR"})


def nhs_number_issues(data: bytes, spans: list[SegmentSpan], seps: Separators) -> list[Issue]:
    """Warnings for the NHS numbers in the first PID (PID-3, PID-2 repetitions marked as NHS numbers)
    that fail the modulus 11 check or are not ten digits.

    A cheap read of one segment, no parse, so the sender hears of a bad number in the ACK (ERR with
    severity W on an AA/CA): the message is still accepted, an urgent referral is never refused for a
    bad number alone, and the mapper keeps the number under a local system, not as an NHS number.
    Where a sender's configuration puts an unmarked NHS number elsewhere (e.g. a bare PID-2), only the
    mapper knows; it then warns on the message record. Never raises.
    """
    for pid in spans:
        if data.startswith(b"PID", pid.start):
            break
    else:
        return []  # no PID
    segment = data[pid.start : pid.end]
    # Every marker contains "NH" ("NH", "NHSNMBR", "NHS"): without it there is nothing to check, and
    # the ACK path stays as cheap as it was. Only PID-1..3 are split off the rest.
    if b"NH" not in segment.upper():
        return []
    fields = segment.decode("latin-1").split(seps.field, max(NHS_NUMBER_FIELDS) + 1)
    issues = []
    for number in NHS_NUMBER_FIELDS:
        if number >= len(fields):
            continue
        for rep in fields[number].split(seps.repetition):
            parts = rep.split(seps.component)
            value = parts[0].strip()
            if not value:
                continue
            kind = parts[4].strip().upper() if len(parts) > 4 else ""
            authority = parts[3].split(seps.subcomponent, 1)[0].strip().upper() if len(parts) > 3 else ""
            if kind not in NHS_NUMBER_TYPES and authority != "NHS":
                continue
            if not is_valid_nhs_number(normalise_nhs_number(value)):
                issues.append(
                    Issue(
                        "W",
                        DATA_TYPE_ERROR,
                        f"PID-{number} NHS number {redact_nhs_number(value)} fails the modulus 11 check: "
                        "accepted, but kept as a local identifier, not as an NHS number; please correct it",
                        f"PID-{number}",
                    )
                )
    return issues


def read_message(
    data: bytes,
    spans: list[SegmentSpan],
    *,
    default_charset: str,
    fallback_charset: str,
    forced_charset: str | None = None,
) -> HeaderRead:
    """Lean-read one message (``spans`` its segments, the first being MSH) or raise ``Rejection``."""
    if not spans:
        raise Rejection(SEGMENT_SEQUENCE_ERROR, "the message is empty", location="MSH")
    first = spans[0]
    first_bytes = data[first.start : first.end]
    if first_bytes.startswith(UTF8_BOM):
        first_bytes = first_bytes[len(UTF8_BOM) :]
    first_bytes = first_bytes.lstrip()
    if not first_bytes.startswith(b"MSH"):
        shown = first_bytes[:20].decode("latin-1")
        raise Rejection(
            SEGMENT_SEQUENCE_ERROR, f"the first segment must be MSH; it starts {shown!r}", location="segment 1"
        )
    issues: list[Issue] = []
    header = read_header_fields(first_bytes.decode("latin-1"), issues)
    version = header.version
    if version and version not in KNOWN_VERSIONS:
        raise Rejection(UNSUPPORTED_VERSION, f"MSH-12 version {version!r} is not an HL7 v2 version", location="MSH-12")
    if not version:
        issues.append(Issue("W", 0, "MSH-12 version is empty", "MSH-12"))
    elif version != header.first(12):
        issues.append(Issue("W", 0, f"MSH-12 {header.first(12)!r} read as version {version}", "MSH-12"))
    valued = len(header.fields)
    while valued > 0 and not header.fields[valued - 1]:
        valued -= 1
    if valued > _msh_field_limit(version):
        raise Rejection(
            SEGMENT_SEQUENCE_ERROR,
            f"MSH has {valued} fields but version {version or '(none)'} defines {_msh_field_limit(version)}: "
            "the CR ending MSH is probably missing",
            location="MSH",
        )
    check_segments(data, spans[1:], header.separators.field.encode("latin-1"))
    if not header.message_code:
        issues.append(Issue("W", 0, "MSH-9 message type is empty", "MSH-9"))
    if not header.control_id:
        issues.append(Issue("W", 0, "MSH-10 control id is empty: duplicates cannot be detected", "MSH-10"))
    body = data[spans[0].start : spans[-1].stop]
    try:
        text, codec, charset_issues = decode(body, header.charset, default_charset, fallback_charset, forced_charset)
    except LookupError as exc:
        raise Rejection(
            APPLICATION_INTERNAL_ERROR, f"character set {forced_charset!r} is not known: {exc}", location="MSH-18"
        ) from exc
    nhs_issues = nhs_number_issues(data, spans, header.separators)
    return HeaderRead(header, text, codec, issues + charset_issues + nhs_issues)
