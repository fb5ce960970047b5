"""FHIR search over stored resources: the parameters each type supports, as data, turned into queries.

Used by the API's search (``services/api/fhir_reads.py``) and by the notifier's subscription filters,
which accept exactly the same parameters.

Supported (anything else is refused with an OperationOutcome, never silently ignored):

    all types       _id, _lastUpdated (eq, gt, ge, lt, le), _count (0-100, default 20; 0 = the total
                    alone), _offset (paging); _summary and _elements (shared/subsetting.py);
                    _total / _totalMethod (the total is always exact); _format, _pretty
    Patient         identifier (system|value or value), name (prefix of family or given, any case),
                    family, given, birthdate (eq, gt, ge, lt, le on YYYY[-MM[-DD]])
    ServiceRequest, Encounter, CarePlan, QuestionnaireResponse
                    patient / subject (Patient/id or id), status
    ServiceRequest  requester (Organization/ODS or a reference), requester:identifier (system|value)
    Condition       patient / subject, verification-status, category (tokens: code or system|code)
    AllergyIntolerance
                    patient, criticality, category
    Procedure       patient / subject, status, category (token)
    Task            patient / subject (Task.for), focus (the referral), status, owner and requester
                    (Organization/ODS or a reference)

Results are sorted by last update then id, so paging with ``_offset`` is stable.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from shared.fhir import FhirError
from shared.fhir_conventions import FORMAT_PARAMS, TOTAL_PARAMS, check_format, check_total
from shared.fhir_strings import string_problem
from shared.subsetting import Subset, parse_subset

Query = dict[str, Any]
DEFAULT_COUNT = 20
MAX_COUNT = 100
_PREFIXES = {"eq": "$eq", "gt": "$gt", "ge": "$gte", "lt": "$lt", "le": "$lte"}
_DATE = re.compile(r"^(eq|gt|ge|lt|le)?(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?(T.*)?$")
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"


def _split_prefix_date(value: str, name: str) -> tuple[str, str]:
    """``ge2026-01-05`` -> ("ge", "2026-01-05"); FhirError 400 if it is not a possible date (month 13,
    30 February, year 0, hour 24...): such a value can match nothing and must not reach the database."""
    match = _DATE.match(value)
    if not match:
        raise FhirError(400, "invalid", f"{name}={value!r} is not a date (use [prefix]YYYY[-MM[-DD]])")
    prefix = match.group(1) or "eq"
    text = value[len(match.group(1) or "") :]
    year, month, day, time = match.group(2), match.group(3), match.group(4), match.group(5)
    try:
        if time and not day:
            raise ValueError("a time needs a full date")
        if time:
            datetime.fromisoformat(text.replace("Z", "+00:00"))
        datetime(int(year), int(month or 1), int(day or 1))
    except ValueError as exc:
        raise FhirError(
            400, "invalid", f"{name}={value!r} is not a possible date or instant ({exc})", expression=[name]
        ) from exc
    return prefix, text


# Sorts after every date and instant of year 9999: the end of the last period there is.
_BEYOND = "9999~"


def _year(year: int) -> str:
    return f"{year:04d}" if year <= 9999 else _BEYOND


def _date_range(text: str) -> tuple[str, str]:
    """The [start, end) of a (checked) partial date as ISO strings comparable with FHIR dates of any
    precision; the end of a period in 9999 is ``_BEYOND``."""
    parts = text.split("T", 1)[0].split("-")
    year = int(parts[0])
    if len(parts) == 1:
        return f"{year:04d}", _year(year + 1)
    month = int(parts[1])
    if len(parts) == 2:
        nxt = f"{_year(year + 1)}-01" if month == 12 else f"{year:04d}-{month + 1:02d}"
        return f"{year:04d}-{month:02d}", _BEYOND if nxt.startswith(_BEYOND) else nxt
    start = datetime(year, month, int(parts[2]))
    if start.date() == datetime.max.date():
        return start.date().isoformat(), _BEYOND
    return start.date().isoformat(), (start + timedelta(days=1)).date().isoformat()


def _string_date(field: str) -> Callable[[str, str], Query]:
    """Search on a FHIR date stored as text (birthDate): ranges by string order, which ISO dates keep."""

    def build(value: str, name: str) -> Query:
        prefix, date = _split_prefix_date(value, name)
        start, end = _date_range(date)
        if prefix == "eq":
            return {field: {"$gte": start, "$lt": end}}
        if prefix in ("gt", "ge"):
            return {field: {"$gte": start if prefix == "ge" else end}}
        return {field: {"$lt": start if prefix == "lt" else end}}

    return build


def _last_updated(value: str, name: str) -> Query:
    prefix, date = _split_prefix_date(value, name)
    if "T" in date:
        instant = datetime.fromisoformat(date.replace("Z", "+00:00"))
        if instant.tzinfo is None:
            instant = instant.replace(tzinfo=UTC)
        return {"last_updated": {_PREFIXES[prefix]: instant}}
    start_text, end_text = _date_range(date)
    start = datetime.fromisoformat(_pad(start_text)).replace(tzinfo=UTC)
    if end_text == _BEYOND:  # the period ends after the last instant a datetime holds
        after: Query = {"$in": []}  # nothing was updated after year 9999
        return {
            "eq": {"last_updated": {"$gte": start}},
            "ge": {"last_updated": {"$gte": start}},
            "gt": {"last_updated": after},
            "lt": {"last_updated": {"$lt": start}},
            "le": {"last_updated": {"$exists": True}},
        }[prefix]
    end = datetime.fromisoformat(_pad(end_text)).replace(tzinfo=UTC)
    if prefix == "eq":
        return {"last_updated": {"$gte": start, "$lt": end}}
    if prefix in ("gt", "ge"):
        return {"last_updated": {"$gte": start if prefix == "ge" else end}}
    return {"last_updated": {"$lt": start if prefix == "lt" else end}}


def _pad(partial: str) -> str:
    parts = partial.split("-")
    return f"{parts[0]}-{parts[1] if len(parts) > 1 else '01'}-{parts[2] if len(parts) > 2 else '01'}"


def _token_identifier(field: str) -> Callable[[str, str], Query]:
    def build(value: str, name: str) -> Query:
        if "|" in value:
            system, _, ident = value.partition("|")
            match: Query = {"value": ident}
            if system:
                match["system"] = system
            return {field: {"$elemMatch": match}}
        return {f"{field}.value": value}

    return build


def _reference(field: str, resource_type: str) -> Callable[[str, str], Query]:
    def build(value: str, name: str) -> Query:
        ref = value if "/" in value else f"{resource_type}/{value}"
        return {f"{field}.reference": {"$in": [ref, value]}}

    return build


def _exact(field: str) -> Callable[[str, str], Query]:
    def build(value: str, name: str) -> Query:
        values = value.split(",")
        return {field: values[0] if len(values) == 1 else {"$in": values}}

    return build


def _concept_token(field: str) -> Callable[[str, str], Query]:
    """A token on a CodeableConcept (or a list of them): ``code`` or ``system|code``; comma = or."""

    def build(value: str, name: str) -> Query:
        matches: list[Query] = []
        for part in value.split(","):
            system, bar, code = part.rpartition("|")
            match: Query = {"code": code if bar else part}
            if bar and system:
                match["system"] = system
            matches.append({f"{field}.coding": {"$elemMatch": match}})
        return matches[0] if len(matches) == 1 else {"$or": matches}

    return build


def _name_prefix(*fields: str) -> Callable[[str, str], Query]:
    def build(value: str, name: str) -> Query:
        pattern = {"$regex": f"^{re.escape(value)}", "$options": "i"}
        return {"$or": [{field: pattern} for field in fields]}

    return build


def _requester_match(code: str, system: str | None = None) -> Query:
    """A requester carrying ODS ``code``: as an identifier reference, or contained (an Organization, or
    a PractitionerRole whose organisation has it, as the HL7v2 mapping writes a PRD referring provider)."""
    ident: Query = {"value": code, **({"system": system} if system else {})}
    contained: Query = {
        "$or": [
            {"resourceType": "Organization", "identifier": {"$elemMatch": ident}},
            {"resourceType": "PractitionerRole", **{f"organization.identifier.{k}": v for k, v in ident.items()}},
        ]
    }
    direct = {f"resource.requester.identifier.{k}": v for k, v in ident.items()}
    return {
        "$or": [
            direct,
            {"resource.requester.reference": {"$regex": "^#"}, "resource.contained": {"$elemMatch": contained}},
        ]
    }


def _requester(value: str, name: str) -> Query:
    """``Organization/RBL``: a reference to it, or a requester identified by that ODS code."""
    code = value.split("/", 1)[1] if value.startswith("Organization/") else value
    return {"$or": [{"resource.requester.reference": value}, _requester_match(code)]}


def _requester_identifier(value: str, name: str) -> Query:
    system, _, code = value.rpartition("|")
    return _requester_match(code, system or None)


def _organization(field: str) -> Callable[[str, str], Query]:
    """``Organization/RBL`` (or ``RBL``): a reference to it, or an Organization identified by that ODS code
    (as the data-quality Task names the referring trust in ``owner``)."""

    def build(value: str, name: str) -> Query:
        code = value.split("/", 1)[1] if value.startswith("Organization/") else value
        ref = value if "/" in value else f"Organization/{value}"
        by_code = {f"{field}.identifier.system": ODS_SYSTEM, f"{field}.identifier.value": code}
        return {"$or": [{f"{field}.reference": ref}, by_code]}

    return build


Builder = Callable[[str, str], Query]
_CLINICAL: dict[str, Builder] = {
    "patient": _reference("resource.subject", "Patient"),
    "subject": _reference("resource.subject", "Patient"),
    "status": _exact("resource.status"),
}
PARAMETERS: dict[str, dict[str, Builder]] = {
    "Patient": {
        "identifier": _token_identifier("resource.identifier"),
        "name": _name_prefix("resource.name.family", "resource.name.given"),
        "family": _name_prefix("resource.name.family"),
        "given": _name_prefix("resource.name.given"),
        "birthdate": _string_date("resource.birthDate"),
    },
    "ServiceRequest": {**_CLINICAL, "requester": _requester, "requester:identifier": _requester_identifier},
    "Encounter": dict(_CLINICAL),
    "CarePlan": dict(_CLINICAL),
    "QuestionnaireResponse": dict(_CLINICAL),
    "DiagnosticReport": dict(_CLINICAL),
    "Condition": {
        "patient": _CLINICAL["patient"],
        "subject": _CLINICAL["subject"],
        "verification-status": _concept_token("resource.verificationStatus"),
        "category": _concept_token("resource.category"),
    },
    "AllergyIntolerance": {
        "patient": _reference("resource.patient", "Patient"),
        "criticality": _exact("resource.criticality"),
        "category": _exact("resource.category"),
    },
    "Procedure": {**_CLINICAL, "category": _concept_token("resource.category")},
    # The data-quality Task of a referral (services/mapper/data_quality.py): its patient is Task.for.
    "Task": {
        "patient": _reference("resource.for", "Patient"),
        "subject": _reference("resource.for", "Patient"),
        "focus": _reference("resource.focus", "ServiceRequest"),
        "status": _exact("resource.status"),
        "owner": _organization("resource.owner"),
        "requester": _organization("resource.requester"),
    },
    "Questionnaire": {"status": _exact("resource.status")},
}
COMMON: dict[str, Builder] = {"_id": _exact("id"), "_lastUpdated": _last_updated}
# FHIR search parameter types, for the CapabilityStatement (modifiers such as :identifier are not listed).
PARAM_TYPES = {
    "_id": "token",
    "_lastUpdated": "date",
    "identifier": "token",
    "name": "string",
    "family": "string",
    "given": "string",
    "birthdate": "date",
    "patient": "reference",
    "subject": "reference",
    "status": "token",
    "requester": "reference",
    "verification-status": "token",
    "category": "token",
    "criticality": "token",
    "focus": "reference",
    "owner": "reference",
}


def search_params(resource_type: str) -> list[dict[str, str]]:
    """The searchParam list a CapabilityStatement gives for ``resource_type``."""
    names = [*COMMON, *(n for n in PARAMETERS.get(resource_type, {}) if ":" not in n)]
    return [{"name": n, "type": PARAM_TYPES[n]} for n in names]


PAGING = ("_count", "_offset")
# Parameters that shape the answer rather than select resources (refused in a subscription's filter).
RESULT = ("_summary", "_elements", "_total", "_totalMethod", "_format", "_pretty")
CONTROL = (*PAGING, *RESULT)


@dataclass(frozen=True)
class SearchRequest:
    resource_type: str
    query: Query
    count: int
    offset: int
    params: list[tuple[str, str]]
    subset: Subset = field(default_factory=Subset)

    def link(self, base: str, offset: int) -> str:
        kept = [(k, v) for k, v in self.params if k not in PAGING and k not in FORMAT_PARAMS]
        kept += [("_count", str(self.count)), ("_offset", str(offset))]
        return f"{base}/{self.resource_type}?{urlencode(kept)}"


def int_param(name: str, value: str, low: int, high: int) -> int:
    """``value`` as a whole number from ``low`` to ``high``: ASCII digits only (``int`` would also take
    other scripts' digits, underscores and spaces), and a length checked before converting it."""
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        shown = value if len(value) <= 40 else f"{value[:40]}... ({len(value)} characters)"
        raise FhirError(400, "invalid", f"{name}={shown!r} is not a whole number from {low} to {high}")
    number = int(value)
    if not low <= number <= high:
        raise FhirError(400, "invalid", f"{name} must be between {low} and {high}")
    return number


def check_text(params: list[tuple[str, str]]) -> None:
    """``FhirError`` 400 naming the first parameter whose name or value holds a control character (a
    NUL, an escape...): no FHIR search value can hold one, and MongoDB refuses some in a pattern."""
    for name, value in params:
        problem = string_problem(name) or string_problem(value)
        if problem is not None:
            shown = name if string_problem(name) is None else name.encode("unicode_escape").decode()
            raise FhirError(400, "invalid", f"search parameter {shown} holds {problem}", expression=[shown])


def parse_search(resource_type: str, params: list[tuple[str, str]]) -> SearchRequest:
    """Turn query parameters into a MongoDB query; ``FhirError`` 400 names any parameter not supported."""
    supported = {**COMMON, **PARAMETERS.get(resource_type, {})}
    clauses: list[Query] = [{"type": resource_type}]
    count, offset = DEFAULT_COUNT, 0
    unknown = []
    check_text(params)
    subset = parse_subset(params)
    for name, value in params:
        if name == "_count":
            # _count=0 asks for the total alone (as _summary=count does).
            count = int_param(name, value, 0, MAX_COUNT)
        elif name == "_offset":
            offset = int_param(name, value, 0, 1_000_000)
        elif name in TOTAL_PARAMS:
            check_total(name, value)
        elif name == "_format":
            check_format(value)  # a form POSTed to _search may carry it
        elif name in ("_summary", "_elements", "_pretty"):
            pass  # parse_subset checked them; _pretty changes nothing in a JSON answer
        elif name in supported:
            if value == "":
                raise FhirError(400, "invalid", f"search parameter {name} has no value")
            clauses.append(supported[name](value, name))
        else:
            unknown.append(name)
    if unknown:
        raise FhirError(
            400,
            "not-supported",
            f"search parameter(s) {', '.join(sorted(set(unknown)))} not supported for {resource_type}; "
            f"supported: {', '.join(sorted(supported))}, {', '.join(CONTROL)}",
        )
    if subset.count_only:
        count = 0
    return SearchRequest(resource_type, {"$and": clauses}, count, offset, params, subset)
