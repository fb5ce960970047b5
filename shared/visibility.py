"""Who may see a stored resource version: the trusts named on it, and the MSCC team, who see everything.

Every ``resources`` and ``resource_history`` document carries ``trusts``: the ODS codes of the trusts
whose messages wrote it (kept by the one write path, ``shared/versions.py``: a new version keeps the
trusts of the one before and adds the trust of the message that caused it). A Patient referred by two
trusts is visible to both; a referral, and the Encounter, CarePlan, Conditions and Tasks it implies,
to the trust that made it. ``"*"`` (``PUBLIC``) marks what the hub defines for everyone (its HNA
Questionnaire). A document without the field (written before it existed), or with an empty list, is
the MSCC team's only: the safe side.

The MSCC team is the hub's own organisation (``MSCC_RECEIVING_FACILITY``): ``is_mscc_team`` is the one
test for it. A ``Visibility`` turns a caller into the filter every read puts into its database query,
so a search's total and paging count only what the caller may see, and a resource the caller may not
see is simply not found (404: its existence is never revealed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .auth import Caller

TRUSTS = "trusts"
PUBLIC = "*"


def is_mscc_team(caller: Caller, service_ods: str) -> bool:
    """Whether ``caller`` is one of the MSCC team's clients: its ODS code is the hub's own organisation
    (``settings.receiving_facility``), compared without regard to case."""
    return bool(service_ods) and caller.ods_code.strip().upper() == service_ods.strip().upper()


def trust_code(value: str | None) -> str | None:
    """An ODS code as the hub stores it in ``trusts`` (upper case, trimmed), or None when empty."""
    text = (value or "").strip().upper()
    return text or None


def trusts_of(doc: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The trusts a stored document (or a record's ``extra``) names; () when it names none."""
    found = (doc or {}).get(TRUSTS)
    return tuple(str(t) for t in found) if isinstance(found, list | tuple) else ()


def widened(current: Iterable[str], added: Iterable[str]) -> list[str]:
    """The trusts of a new version: those of the version before and the ones ``added``, sorted, once each.
    Trusts are never taken away by a write: a trust that referred a patient keeps seeing the patient."""
    return sorted({*current, *(code for t in added if (code := trust_code(t)))})


@dataclass(frozen=True)
class Visibility:
    """What one caller may see: everything (``trust`` None: the MSCC team), or what names ``trust``."""

    trust: str | None

    @classmethod
    def of(cls, caller: Caller, service_ods: str) -> Visibility:
        return cls(None if is_mscc_team(caller, service_ods) else trust_code(caller.ods_code) or "")

    @property
    def everything(self) -> bool:
        return self.trust is None

    def query(self) -> dict[str, Any]:
        """The clause a read adds to its database query ({} for the MSCC team)."""
        if self.trust is None:
            return {}
        return {TRUSTS: {"$in": [self.trust, PUBLIC]}}

    def sees(self, doc: Mapping[str, Any] | None) -> bool:
        """Whether the stored document ``doc`` (a resource version) is visible; False for None."""
        if doc is None:
            return False
        if self.trust is None:
            return True
        names = trusts_of(doc)
        return self.trust in names or PUBLIC in names


EVERYTHING = Visibility(None)


def message_trusts(message: Mapping[str, Any]) -> tuple[str, ...]:
    """The trusts a message record speaks for: ``trusts`` as intake recorded it; for a record stored
    before intake recorded it, the HL7v2 sending facility (MSH-4) or the FHIR caller's ODS code."""
    recorded = trusts_of(message)
    if recorded or TRUSTS in message:
        return recorded
    header = message.get("header") or {}
    if message.get("protocol") == "hl7v2":
        code = trust_code(str(header.get("sending_facility") or ""))
    else:
        code = trust_code(str((message.get("caller") or {}).get("ods_code") or ""))
    return (code,) if code else ()
