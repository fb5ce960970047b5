"""What the hub answered, per message: read from an HL7v2 ACK (MSA-1, MSA-2, the reason) or an HTTP
answer, and sorted into the summary's four columns.

    accepted    AA or CA; a 2xx over HTTP
    error       AE or CE (the hub asks for a resend); a 5xx
    rejected    AR or CR (refused, kept by the hub with the reason); another 4xx
    unanswered  no answer (timeout, closed connection), an answer that is not an ACK, or bytes that
                could not be sent at all
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from shared.er7 import Separators, unescape

ACCEPTED = "accepted"
ERROR = "error"
REJECTED = "rejected"
UNANSWERED = "unanswered"
STATUSES = (ACCEPTED, ERROR, REJECTED, UNANSWERED)
COLUMNS = {ACCEPTED: "AA/CA", ERROR: "AE/CE", REJECTED: "AR/CR", UNANSWERED: "errors"}
_BY_CODE = {"AA": ACCEPTED, "CA": ACCEPTED, "AE": ERROR, "CE": ERROR, "AR": REJECTED, "CR": REJECTED}
_SEGMENT_END = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True)
class Outcome:
    """One message's answer: its column, the code (``AA``, ``HTTP 403``, ``timeout``) and the reason."""

    status: str
    code: str
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == ACCEPTED


@dataclass(frozen=True)
class AckLine:
    """One MSA of an ACK (a batch ACK has one per message): its code, the control id it answers, and
    the reason the hub gave (MSA-3, else the first error's ERR text)."""

    code: str
    control_id: str
    reason: str

    def outcome(self) -> Outcome:
        return Outcome(_BY_CODE.get(self.code, UNANSWERED), self.code or "?", self.reason)


def read_ack(reply: bytes) -> list[AckLine]:
    """Every MSA of ``reply``, in order, each with the reason of the ERR segments after it."""
    found: list[AckLine] = []
    errors: list[str] = []
    seps = Separators()
    for raw in _SEGMENT_END.split(reply):
        segment = raw.decode("utf-8", "replace").lstrip()
        if len(segment) < 4:
            continue
        fields = segment.split(segment[3])
        if fields[0] in ("MSH", "BHS", "FHS") and len(fields[1]) >= 4:
            enc = fields[1]
            seps = Separators(segment[3], enc[0], enc[1], enc[2], enc[3])
        elif fields[0] == "MSA":
            if found and errors and not found[-1].reason:
                found[-1] = AckLine(found[-1].code, found[-1].control_id, errors[0])
            errors = []
            get = [*fields, "", "", ""]
            found.append(AckLine(get[1].strip(), get[2], unescape(get[3], seps)))
        elif fields[0] == "ERR" and found:
            text = _err_text(fields, seps)
            if text:
                errors.append(unescape(text, seps))
    if found and errors and not found[-1].reason:
        found[-1] = AckLine(found[-1].code, found[-1].control_id, errors[0])
    return found


def _err_text(fields: list[str], seps: Separators) -> str:
    """An ERR's words: ERR-8 (v2.5 on), else the text in ERR-1's code (before v2.5). Warnings (ERR-4
    ``W``) are not reasons for a refusal."""
    if len(fields) > 4 and fields[4] in ("W", "I"):
        return ""
    if len(fields) > 8 and fields[8]:
        return fields[8]
    parts = fields[1].split(seps.subcomponent) if len(fields) > 1 else []
    return parts[1] if len(parts) > 1 else ""


def http_outcome(status: int, body: bytes) -> Outcome:
    """The outcome of a FHIR answer (or an HL7v2 POST refused before any ACK): 2xx accepted, 5xx an
    error to resend, other codes refused; the reason from an OperationOutcome or the text body."""
    code = f"HTTP {status}"
    if 200 <= status < 300:
        return Outcome(ACCEPTED, code)
    return Outcome(ERROR if status >= 500 else REJECTED, code, reason_of(body))


def reason_of(body: bytes) -> str:
    """The diagnostics of an OperationOutcome (or an RFC 6749 / JSON error), else the text itself."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500]
    if isinstance(data, dict):
        issue = data.get("issue")
        issues: list[Any] = issue if isinstance(issue, list) else []
        words = [str(i.get("diagnostics") or i.get("code") or "") for i in issues if isinstance(i, dict)]
        if any(words):
            return "; ".join(w for w in words if w)[:500]
        for key in ("error_description", "detail", "error"):
            if data.get(key):
                return str(data[key])[:500]
    return text[:500]


def outcomes_for(count: int, lines: list[AckLine]) -> list[Outcome]:
    """One outcome for each of ``count`` messages from the MSAs of their ACK (a batch ACK has one MSA
    per message, in order); a message without its MSA is unanswered."""
    if not lines:
        return [Outcome(UNANSWERED, "no MSA", "the reply is not an HL7v2 ACK")] * count
    found = [line.outcome() for line in lines[:count]]
    missing = Outcome(UNANSWERED, "no MSA", f"the batch ACK answers {len(lines)} of {count} messages")
    return found + [missing] * (count - len(found))
