"""HL7v2 acknowledgements (ACK) with MSA and ERR segments, in the sender's own separators.

Original mode answers AA / AE / AR; enhanced mode (MSH-15/16 valued) answers commit acknowledgements
CA / CE / CR. ERR uses ERR-2..ERR-8 from v2.5 on and ERR-1 before it (HL7 table 0357 codes).

An ACK is built for every message, on the path to its answer. Message after message from one sender,
the ACK's MSH differs only in MSH-7 (the time) and MSH-10 (our control id): the rest of it, and the
escaped table 0357 texts in that sender's separators, are built once and kept (``_Head``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import NamedTuple

from shared.er7 import DEFAULT_SEPARATORS, Separators

from .header import Issue, MessageHeader

TABLE_0357 = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}
_LOCATION = re.compile(r"([A-Z][A-Z0-9]{2})-(\d+)")
# Original-mode codes and their enhanced-mode (commit) equivalents.
COMMIT_CODES = {"AA": "CA", "AE": "CE", "AR": "CR"}


def _version_tuple(version: str) -> tuple[int, ...]:
    # isdecimal, not isdigit: int() takes decimal digits only ("²" is a digit, and not a number to int()).
    return tuple(int(p) for p in version.split(".") if p.isdecimal())


def _copied(value: str, seps: Separators) -> str:
    """A sender's field copied into our MSH: its line breaks escaped so they cannot end our segment."""
    esc = seps.escape
    return value.replace("\r", f"{esc}X0D{esc}").replace("\n", f"{esc}X0A{esc}")


class _Head(NamedTuple):
    """What an ACK's MSH and MSA take from one sender's header: all but the time (MSH-7), our control id
    (MSH-10), the code (MSA-1) and the control id answered (MSA-2). The two segments are
    ``before_stamp`` + MSH-7 + ``before_id`` + MSH-10 + ``before_code`` + MSA-1, field separator, MSA-2."""

    seps: Separators
    before_stamp: str
    before_id: str
    before_code: str
    msa_text: bool  # MSA-3 carries the first error's text (before v2.7)
    err1: bool  # ERR-1 (before v2.5) rather than ERR-2..ERR-8
    table: dict[object, str]  # table 0357 texts escaped in these separators
    accepted: str  # the text of an unknown code (escaped "Message accepted")


def _new_head(header: MessageHeader | None, application: str, facility: str) -> _Head:
    seps = header.separators if header else DEFAULT_SEPARATORS
    fs = seps.field
    if header is not None:

        def get(n: int) -> str:
            return _copied(header.get(n), seps)

        trigger = header.trigger_event
        msg_type = f"ACK{seps.component}{trigger}{seps.component}ACK" if trigger else "ACK"
        sender = [get(5) or application, get(6) or facility, get(3), get(4)]
        tail = [get(11) or "P", get(12) or "2.5"]
        if header.get(18):
            tail += ["", "", "", "", "", get(18)]
        version = header.version
    else:
        msg_type, sender, tail, version = "ACK", [application, facility, "", ""], ["P", "2.5"], "2.5"
    # The MSH fields in order: ..., MSH-7 the time, MSH-8 empty, MSH-9 the type, MSH-10 our id, MSH-11 ...
    return _Head(
        seps,
        fs.join(["MSH", seps.encoding_characters, *sender, ""]),
        fs.join(["", "", msg_type, ""]),
        fs.join(["", *tail]) + "\r" + fs.join(["MSA", ""]),
        not version or _version_tuple(version) < (2, 7),
        bool(version) and _version_tuple(version) < (2, 5),
        {code: seps.escape_text(text) for code, text in TABLE_0357.items()},
        seps.escape_text("Message accepted"),
    )


# Heads by all they are made of; cleared when full, so a sender that varies its MSH cannot grow it.
_HEADS: dict[tuple[object, ...], _Head] = {}
_HEADS_MAX = 1024


def _head(header: MessageHeader | None, application: str, facility: str) -> _Head:
    if header is None:
        key: tuple[object, ...] = (None, application, facility)
    else:
        fields = header.fields
        # The separators, MSH-3..6, MSH-9's trigger event, MSH-11..12, MSH-18 (and the version read from MSH-12).
        key = (
            header.separators,
            fields[2:6],
            header.trigger_event,
            fields[10:12],
            fields[17:18],
            header.version,
            application,
            facility,
        )
    head = _HEADS.get(key)
    if head is None:
        if len(_HEADS) >= _HEADS_MAX:
            _HEADS.clear()
        head = _HEADS[key] = _new_head(header, application, facility)
    return head


def _err_segment(issue: Issue, head: _Head) -> str:
    seps = head.seps
    fs, cs, ss = seps.field, seps.component, seps.subcomponent
    text = seps.escape_text(issue.text)
    match = _LOCATION.fullmatch(issue.location)
    # Segment id, sequence, field number: empty components are kept so the code stays in its place.
    if head.err1:
        location = f"{match.group(1)}{cs}1{cs}{match.group(2)}" if match else f"{cs}{cs}"
        return f"ERR{fs}{location}{cs}{issue.code}{ss}{text}{ss}HL70357"
    location = f"{match.group(1)}{cs}1{cs}{match.group(2)}" if match else ""
    code_text = head.table.get(issue.code, head.accepted)
    return fs.join(["ERR", "", location, f"{issue.code}{cs}{code_text}{cs}HL70357", issue.severity, "", "", "", text])


# The last MSH-7 made, by the fields it shows: ACKs made in the same second share it (strftime costs
# ten times as much as this look). One tuple, replaced whole, so a reader never sees half of it.
_last_stamp: tuple[tuple[int, ...], str] = ((), "")


def _stamp(now: datetime) -> str:
    """MSH-7: ``now`` as YYYYMMDDHHMMSS+0000."""
    global _last_stamp
    key = (now.second, now.minute, now.hour, now.day, now.month, now.year)
    last = _last_stamp
    if last[0] == key:
        return last[1]
    stamp = now.strftime("%Y%m%d%H%M%S+0000")
    _last_stamp = (key, stamp)
    return stamp


def ack_code(original: str, header: MessageHeader | None) -> str:
    """The MSA-1 code: ``original`` (AA/AE/AR), or its commit form in enhanced mode."""
    if header is not None and header.enhanced_mode:
        return COMMIT_CODES[original]
    return original


def should_reply(code: str, header: MessageHeader | None) -> bool:
    """Whether to send this commit ACK, as MSH-15 (AL, NE, ER, SU) asks. A refusal (CE, CR) is always
    sent, whatever MSH-15 says: a sender must never believe a refused message was taken."""
    if header is None or not header.enhanced_mode or code != "CA":
        return True
    return header.accept_ack_type in ("", "AL", "SU")


def build_ack(
    header: MessageHeader | None,
    code: str,
    *,
    ack_control_id: str,
    issues: list[Issue],
    application: str,
    facility: str,
    now: datetime | None = None,
) -> str:
    """The ACK text (segments ended by CR) answering ``header`` with MSA-1 ``code``.

    Without a readable header (no MSH, unusable separators) the ACK uses default separators, this
    hub as sender, and an empty MSA-2.
    """
    head = _head(header, application, facility)
    seps = head.seps
    control_id = ""
    if header is not None:
        control_id = header.control_id
        if "\r" in control_id or "\n" in control_id:
            control_id = _copied(control_id, seps)
    stamp = _stamp(now or datetime.now(UTC))
    ack = f"{head.before_stamp}{stamp}{head.before_id}{ack_control_id}{head.before_code}{code}{seps.field}{control_id}"
    if not issues:
        return ack + "\r"
    if head.msa_text:
        for issue in issues:
            if issue.severity == "E":  # the first error's text
                ack += seps.field + seps.escape_text(issue.text)
                break
    return "\r".join([ack, *[_err_segment(issue, head) for issue in issues]]) + "\r"
