"""RF1-2 (referral priority) -> ServiceRequest.priority, through the sender's own codes.

Trusts send priorities outside HL7 table 0280 (A, R, S): "U" for urgent is common. A code is looked
up, as sent and upper-cased, in the sender's ``priority_codes`` (``SenderConfig``), then in
``tables/local-priority-codes.json`` (codes every sender may use), then in table 0280; the CE text
(RF1-2.2) is tried the same way when the code is not known. A priority that none of them explain is
never dropped: an MSCC referral is an emergency, so it is read as ``urgent`` (the safe reading), with a
warning asking for the code to be configured and a note on the referral keeping what was sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import tables
from .context import Context
from .reader import Seg

# When nothing explains the code: an MSCC referral is never treated as routine by default.
UNKNOWN_READS_AS = "urgent"


@dataclass(frozen=True)
class Priority:
    """The FHIR request-priority (None when RF1-2 is empty) and, for a code nobody knows, a note
    keeping what the sender wrote."""

    code: str | None
    note: str | None = None


def _known(value: str, ctx: Context) -> str | None:
    if not value:
        return None
    own = ctx.sender.priority_codes
    found = own.get(value) or own.get(value.upper())
    return found or tables.text("local-priority-codes", value) or tables.text("v2-0280-referral-priority", value)


def referral_priority(rf1: Seg | None, ctx: Context) -> Priority:
    """RF1-2 read as above; an unknown code gives ``urgent``, a warning naming the code and a note."""
    if rf1 is None or not rf1.has(2):
        return Priority(None)
    sent = rf1.composite(2)
    code, text = sent.c(1), sent.c(2)
    found = _known(code, ctx) or _known(text, ctx)
    if found:
        return Priority(found)
    shown = f"{code!r}" + (f" ({text})" if text and text != code else "")
    ctx.warn(
        f"RF1-2 priority {shown} is not a known priority code: read as {UNKNOWN_READS_AS}; "
        "add it to the sender's priority_codes",
        "RF1-2",
    )
    return Priority(UNKNOWN_READS_AS, f"Referral priority as sent: {shown}, read as {UNKNOWN_READS_AS}")
