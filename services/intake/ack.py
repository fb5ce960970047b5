"""HL7v2 acknowledgements (ACK) with MSA and ERR segments, in the sender's own separators.

Original mode answers AA / AE / AR; enhanced mode (MSH-15/16 valued) answers commit acknowledgements
CA / CE / CR. ERR uses ERR-2..ERR-8 from v2.5 on and ERR-1 before it (HL7 table 0357 codes).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

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
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def _err_segment(issue: Issue, seps: Separators, version: str) -> str:
    fs, cs, ss = seps.field, seps.component, seps.subcomponent
    text = seps.escape_text(issue.text)
    code_text = seps.escape_text(TABLE_0357.get(issue.code, "Message accepted"))
    match = _LOCATION.fullmatch(issue.location)
    # Segment id, sequence, field number: empty components are kept so the code stays in its place.
    location = f"{match.group(1)}{cs}1{cs}{match.group(2)}" if match else f"{cs}{cs}"
    if version and _version_tuple(version) < (2, 5):
        return f"ERR{fs}{location}{cs}{issue.code}{ss}{text}{ss}HL70357"
    location = location if match else ""
    return fs.join(["ERR", "", location, f"{issue.code}{cs}{code_text}{cs}HL70357", issue.severity, "", "", "", text])


def _copied(value: str, seps: Separators) -> str:
    """A sender's field copied into our MSH: its line breaks escaped so they cannot end our segment."""
    esc = seps.escape
    return value.replace("\r", f"{esc}X0D{esc}").replace("\n", f"{esc}X0A{esc}")


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
    seps = header.separators if header else DEFAULT_SEPARATORS
    fs = seps.field
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S+0000")
    if header is not None:

        def get(n: int) -> str:
            return _copied(header.get(n), seps)

        trigger = header.trigger_event
        msg_type = f"ACK{seps.component}{trigger}{seps.component}ACK" if trigger else "ACK"
        msh = [
            "MSH",
            seps.encoding_characters,
            get(5) or application,
            get(6) or facility,
            get(3),
            get(4),
            stamp,
            "",
            msg_type,
            ack_control_id,
            get(11) or "P",
            get(12) or "2.5",
        ]
        if header.get(18):
            msh += ["", "", "", "", "", get(18)]
        version = header.version
        control_id = _copied(header.control_id, seps)
    else:
        msh = [
            "MSH",
            seps.encoding_characters,
            application,
            facility,
            "",
            "",
            stamp,
            "",
            "ACK",
            ack_control_id,
            "P",
            "2.5",
        ]
        version = "2.5"
        control_id = ""
    errors = [i for i in issues if i.severity == "E"]
    msa = ["MSA", code, control_id]
    if errors and (not version or _version_tuple(version) < (2, 7)):
        msa.append(seps.escape_text(errors[0].text))
    segments = [fs.join(msh), fs.join(msa)]
    segments += [_err_segment(issue, seps, version) for issue in issues]
    return "\r".join(segments) + "\r"
