"""FHIR R4 helpers: JSON in and out, validation with fhir.resources, and OperationOutcome errors.

fhir.resources no longer ships R4 models; its R4B models are structurally the same for the resources
this hub uses, so R4 (4.0.1) content is validated with them. Every error is a ``FhirError``, which
carries the HTTP status and the OperationOutcome issues to answer with.

Errors (one root)::

    FhirError
      status 400  invalid JSON, wrong resourceType, structure errors (with FHIRPath expressions)
      status 404  unknown resource or version
      status 409  an id or business identifier already taken by different content
      status 412  conditional create matched several resources
      status 415  not application/fhir+json
"""

from __future__ import annotations

import json
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

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


def parse_json(body: bytes) -> Resource:
    """The JSON object in ``body``, or ``FhirError`` 400 saying where it is broken."""
    try:
        data = json.loads(body)
    except UnicodeDecodeError as exc:
        raise FhirError(400, "structure", f"body is not UTF-8 text: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise FhirError(
            400, "structure", f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    if not isinstance(data, dict):
        raise FhirError(400, "structure", "body must be a JSON object (a FHIR resource)")
    return data


def _expression(resource_type: str, loc: tuple[int | str, ...]) -> str:
    path = resource_type
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def validate(data: Resource, expected: str | tuple[str, ...] | None = None) -> Resource:
    """Validate ``data`` as a FHIR resource (of ``expected`` type if given); return it unchanged."""
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
    return data


def business_identifiers(resource: Resource) -> list[tuple[str, str]]:
    """The (system, value) pairs of a resource's ``identifier`` (a list, or one for Bundle)."""
    raw = resource.get("identifier")
    items = raw if isinstance(raw, list) else [raw] if isinstance(raw, dict) else []
    return [
        (str(i["system"]), str(i["value"])) for i in items if isinstance(i, dict) and i.get("system") and i.get("value")
    ]
