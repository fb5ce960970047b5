"""NHS identifiers: the NHS number (modulus 11 check) and ODS organisation codes.

Nothing here raises: every check answers True/False, so callers decide what an invalid value means
(the HL7 mapper keeps an invalid NHS number as a local identifier and warns, never drops it).
"""

from __future__ import annotations

import re

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ODS_ORGANIZATION_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
VERIFICATION_STATUS_URL = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus"
VERIFICATION_STATUS_SYSTEM = "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland"

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
    remainder = sum(int(d) * w for d, w in zip(first_nine, _WEIGHTS, strict=True)) % 11
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
