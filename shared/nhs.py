"""NHS identifiers: the NHS number (modulus 11 check) and ODS organisation codes.

Nothing here raises: every check answers True/False, so callers decide what an invalid value means
(the HL7 mapper keeps an invalid NHS number as a local identifier and warns, never drops it).
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Any

from .ids import resource_id

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
# Where a number sent as an NHS number but failing the check is kept, on every route: a local system,
# so it is never matched, merged or sent on as an NHS number, and never dropped either.
INVALID_NHS_NUMBER_SYSTEM = "urn:mscc:id:invalid-nhs-number"
INVALID_NHS_NUMBER_TEXT = "NHS number failing the check"
ODS_ORGANIZATION_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
VERIFICATION_STATUS_URL = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus"
VERIFICATION_STATUS_SYSTEM = "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland"
GMC_NUMBER_SYSTEM = "https://fhir.hl7.org.uk/Id/gmc-number"
# Identifier systems that mean the same thing in every trust: a value under one of them is never scoped
# by the organisation that sent it.
NATIONAL_SYSTEMS = frozenset({NHS_NUMBER_SYSTEM, ODS_ORGANIZATION_SYSTEM, GMC_NUMBER_SYSTEM})

_WEIGHTS = (10, 9, 8, 7, 6, 5, 4, 3, 2)
# Written forms seen on paper and in feeds: "9449305552", "944 930 5552", "944-930-5552".
_GROUPED = re.compile(r"^(\d{3})[ -]?(\d{3})[ -]?(\d{4})$")
# ODS code shapes (NHS Digital ODS naming conventions): an NHS trust is "R" and two characters, its
# sites add two more; a GP practice is a letter and five digits. Anything else needs configuration.
_ODS_SHAPES = (
    re.compile(r"^R[A-Z0-9]{2}$"),
    re.compile(r"^R[A-Z0-9]{4}$"),
    re.compile(r"^[A-Z]\d{5}$"),
)


def normalise_nhs_number(value: str) -> str:
    """Ten digits when ``value`` is an NHS number written with spaces or hyphens (3-3-4); else the
    stripped input, unchanged, so that a check can still fail on it."""
    text = value.strip()
    match = _GROUPED.match(text)
    return "".join(match.groups()) if match else text


def nhs_check_digit(first_nine: str) -> int | None:
    """The modulus 11 check digit for nine digits; None when there is none (remainder gives 10) or
    the input is not nine digits."""
    if len(first_nine) != 9 or not first_nine.isascii() or not first_nine.isdigit():
        return None
    remainder = sum(map(operator.mul, map(int, first_nine), _WEIGHTS)) % 11  # each digit times its weight
    check = 11 - remainder
    if check == 11:
        return 0
    return None if check == 10 else check


def is_valid_nhs_number(value: str) -> bool:
    """True when ``value`` is exactly ten ASCII digits whose last is the modulus 11 check digit.

    Spaces and hyphens are not accepted here: call ``normalise_nhs_number`` first.
    """
    if len(value) != 10 or not value.isascii() or not value.isdigit():
        return False
    return nhs_check_digit(value[:9]) == int(value[9])


def format_nhs_number(value: str) -> str:
    """The display form "944 930 5552"; other input is returned unchanged."""
    digits = normalise_nhs_number(value)
    if len(digits) != 10 or not digits.isdigit():
        return value
    return f"{digits[:3]} {digits[3:6]} {digits[6:]}"


def redact_nhs_number(value: str) -> str:
    """The last three characters only, for logs and diagnostics ("*******552")."""
    return "*" * max(len(value) - 3, 0) + value[-3:]


def looks_like_ods_code(value: str, known: frozenset[str] = frozenset()) -> bool:
    """True for a configured ODS code or one shaped like a trust, trust site or GP practice code.

    A shape is a heuristic: local namespaces that happen to look like ODS codes (e.g. "R12") are
    misread, so senders' real codes belong in configuration (``known``).
    """
    code = value.strip().upper()
    return code in known or any(shape.match(code) for shape in _ODS_SHAPES)


def nhs_patient_id(number: str) -> str:
    """The Patient id of a valid NHS number: the id every route (HL7v2 PID, FHIR subject identifier,
    FHIR Patient) gives the patient with that number, so they all meet on one resource."""
    return resource_id("Patient", NHS_NUMBER_SYSTEM, number)


@dataclass(frozen=True)
class InvalidNhsNumber:
    """An NHS number that failed the check, where it was found (a FHIRPath-like expression)."""

    expression: str
    value: str

    def diagnostics(self) -> str:
        return (
            f"NHS number {redact_nhs_number(self.value)} at {self.expression} fails the modulus 11 check: "
            f"kept as a local identifier ({INVALID_NHS_NUMBER_SYSTEM}), not as an NHS number; "
            "please check it and send a correction"
        )

    def issue(self) -> dict[str, Any]:
        """As an OperationOutcome issue (a warning: the message is still taken)."""
        return {
            "severity": "warning",
            "code": "value",
            "diagnostics": self.diagnostics(),
            "expression": [self.expression],
        }


def _checked_identifier(ident: dict[str, Any], where: str, found: list[InvalidNhsNumber]) -> dict[str, Any]:
    raw = ident.get("value")
    number = normalise_nhs_number(raw) if isinstance(raw, str) else ""
    if is_valid_nhs_number(number):
        return ident if number == raw else {**ident, "value": number}
    found.append(InvalidNhsNumber(where, str(raw or "")))
    # The verification status extension spoke of the NHS number; it does not survive the demotion.
    kept = {k: v for k, v in ident.items() if k in ("use", "period", "assigner")}
    return {
        **kept,
        "system": INVALID_NHS_NUMBER_SYSTEM,
        "value": str(raw or ""),
        "type": {"text": INVALID_NHS_NUMBER_TEXT},
    }


def _walk(value: Any, where: str, found: list[InvalidNhsNumber]) -> Any:
    if isinstance(value, dict):
        if value.get("system") == NHS_NUMBER_SYSTEM and "value" in value:
            return _checked_identifier(value, where, found)
        return {k: _walk(v, f"{where}.{k}", found) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, f"{where}[{i}]", found) for i, v in enumerate(value)]
    return value


def check_nhs_numbers(
    resource: dict[str, Any], where: str | None = None
) -> tuple[dict[str, Any], list[InvalidNhsNumber]]:
    """``resource`` with every identifier under the NHS number system checked, wherever it sits (the
    resource's own identifiers, a subject or requester given by identifier, contained resources).

    A valid number written with spaces or hyphens is normalised to ten digits; a number failing the
    modulus 11 check (or of the wrong length) is moved to ``INVALID_NHS_NUMBER_SYSTEM`` and reported.
    The input is not changed; when nothing needs changing the same object is returned. Never raises.
    """
    found: list[InvalidNhsNumber] = []
    out = _walk(resource, where or str(resource.get("resourceType") or "Resource"), found)
    return (out if out != resource else resource), found
