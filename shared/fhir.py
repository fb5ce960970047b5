"""FHIR R4 helpers: JSON in and out, validation with fhir.resources, and OperationOutcome errors.

fhir.resources no longer ships R4 models; its R4B models are structurally the same for the resources
this hub uses, so R4 (4.0.1) content is validated with them. Every error is a ``FhirError``, which
carries the HTTP status and the OperationOutcome issues to answer with.

Errors (one root)::

    FhirError
      status 400  invalid JSON (or not UTF-8, numbers out of range, nested too deep, a key given twice,
                  a control character in a string: ``shared/fhir_strings.py``), wrong resourceType,
                  structure errors (with FHIRPath expressions), a code outside its required value set
      status 404  unknown resource or version
      status 409  an id or business identifier already taken by different content
      status 412  conditional create matched several resources
      status 413  body over the size limit
      status 415  not application/fhir+json
      status 422  an identifier or reference too long to be indexed
      status 503  the database did not answer (the client should send it again)
"""

from __future__ import annotations

import json
import math
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from .bindings import binding_issues
from .fhir_strings import check_strings, object_from_pairs

FHIR_JSON = "application/fhir+json"
FHIR_VERSION = "4.0.1"
JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")

Resource = dict[str, Any]


def issue(severity: str, code: str, diagnostics: str, expression: list[str] | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        item["expression"] = expression
    return item


def operation_outcome(issues: list[dict[str, Any]]) -> Resource:
    return {"resourceType": "OperationOutcome", "issue": issues}


class FhirError(Exception):
    """A FHIR request failed; answer ``status`` with ``outcome()``."""

    def __init__(
        self,
        status: int,
        code: str,
        diagnostics: str,
        *,
        expression: list[str] | None = None,
        issues: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.issues = issues or [issue("error", code, diagnostics, expression)]

    def outcome(self) -> Resource:
        return operation_outcome(self.issues)


def check_content_type(content_type: str | None) -> None:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media not in JSON_TYPES:
        raise FhirError(
            415, "not-supported", f"Content-Type {content_type or '(none)'!r} is not supported: send {FHIR_JSON}"
        )


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Objects and arrays nested deeper are refused: MongoDB stores at most ~180 levels (a resource sits a
# level or two down in its documents) and validation recurses once per level.
MAX_DEPTH = 100


def _parse_int(text: str) -> int:
    """A JSON integer MongoDB can store (64-bit); ``FhirError`` 400 for a larger one. The digits are
    counted first: Python refuses to convert more than 4300 of them (a ValueError, not a JSON error)."""
    digits = len(text.lstrip("-"))
    if digits > 19:
        raise FhirError(400, "structure", f"number {text[:40]}... has {digits} digits: integers must fit in 64 bits")
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise FhirError(400, "structure", f"number {text[:40]} is out of range: integers must fit in 64 bits")
    return value


def _parse_float(text: str) -> float:
    """A finite JSON number; ``FhirError`` 400 for one too large for a double (it would become infinity)."""
    value = float(text)
    if not math.isfinite(value):
        raise FhirError(400, "structure", f"number {text[:40]} is out of range")
    return value


def _parse_constant(name: str) -> Any:
    """Python's json accepts NaN and Infinity, JSON does not: ``FhirError`` 400."""
    raise FhirError(400, "structure", f"body is not JSON: {name} is not a JSON value")


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether objects and arrays nest more than ``limit`` levels (checked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def parse_json(body: bytes) -> Resource:
    """The JSON object in ``body`` (UTF-8, a leading BOM allowed), or ``FhirError`` 400 saying what is wrong.

    What could not be stored in MongoDB, validated or sent back as JSON is refused here too, so nothing
    accepted fails later: integers beyond 64 bits, decimals beyond a double's range, NaN and Infinity,
    and objects or arrays nested more than ``MAX_DEPTH`` levels; and what ``check_strings`` refuses (a
    key given twice, control characters, a resource id that is not one, an identifier too long to index).
    """
    try:
        text = body.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise FhirError(400, "structure", f"body is not UTF-8 text: {exc}") from exc
    try:
        data = json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
            object_pairs_hook=object_from_pairs,
        )
    except json.JSONDecodeError as exc:
        raise FhirError(
            400, "structure", f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except RecursionError as exc:
        raise FhirError(400, "structure", f"body nests deeper than {MAX_DEPTH} levels") from exc
    if not isinstance(data, dict):
        raise FhirError(400, "structure", "body must be a JSON object (a FHIR resource)")
    if _deeper_than(data, MAX_DEPTH):
        raise FhirError(400, "structure", f"body nests deeper than {MAX_DEPTH} levels")
    problems = check_strings(data)
    if problems:
        status = min(found[0] for found in problems)  # what the sender must fix (400) before the rest
        issues = [issue("error", code, said, [path]) for st, code, said, path in problems if st == status]
        raise FhirError(status, issues[0]["code"], issues[0]["diagnostics"], issues=issues)
    return data


def _expression(resource_type: str, loc: tuple[int | str, ...]) -> str:
    path = resource_type
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def validate(data: Resource, expected: str | tuple[str, ...] | None = None, *, bindings: bool = False) -> Resource:
    """Validate ``data`` as a FHIR resource (of ``expected`` type if given); return it unchanged.

    With ``bindings``, coded elements with a required binding (status, intent, priority, gender...; in
    contained resources and Bundle entries too) must also hold a code of their value set
    (``shared/bindings.py``). ``FhirError`` 400 names every offending element (FHIRPath ``expression``).
    """
    resource_type = data.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        raise FhirError(400, "required", "resourceType is missing", expression=["resourceType"])
    allowed = (expected,) if isinstance(expected, str) else expected
    if allowed and resource_type not in allowed:
        raise FhirError(
            400,
            "invalid",
            f"resourceType is {resource_type!r}; this endpoint takes {' or '.join(allowed)}",
            expression=["resourceType"],
        )
    try:
        model = get_fhir_model_class(resource_type)
    except (ValueError, KeyError) as exc:
        raise FhirError(
            400, "not-supported", f"{resource_type!r} is not a FHIR R4 resource type", expression=["resourceType"]
        ) from exc
    try:
        model.model_validate(data)
    except ValidationError as exc:
        issues = [
            issue("error", "structure", f"{err['msg']}", [_expression(resource_type, tuple(err["loc"]))])
            for err in exc.errors()[:50]
        ]
        raise FhirError(400, "structure", f"{resource_type} is not valid", issues=issues) from exc
    except (ValueError, TypeError) as exc:
        raise FhirError(400, "structure", f"{resource_type} is not valid: {exc}") from exc
    except KeyError as exc:  # the models' lookup of a contained resource's type that does not exist
        raise FhirError(400, "structure", f"{resource_type} is not valid: unknown resource type {exc}") from exc
    if bindings:
        check_bindings(data)
    return data


def check_bindings(data: Resource, where: str | None = None) -> None:
    """``FhirError`` 400 (one ``code-invalid`` issue per element) if a coded element of ``data`` is outside
    its required FHIR R4 value set; ``where`` is the resource's path inside a larger body (a Bundle entry)."""
    issues = binding_issues(data, where)
    if issues:
        raise FhirError(400, "code-invalid", issues[0]["diagnostics"], issues=issues[:50])


def business_identifiers(resource: Resource) -> list[tuple[str, str]]:
    """The (system, value) pairs of a resource's ``identifier`` (a list, or one for Bundle)."""
    raw = resource.get("identifier")
    items = raw if isinstance(raw, list) else [raw] if isinstance(raw, dict) else []
    return [
        (str(i["system"]), str(i["value"])) for i in items if isinstance(i, dict) and i.get("system") and i.get("value")
    ]
