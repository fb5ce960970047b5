"""The HTTP conventions of the FHIR REST API that clients rely on, as small pure functions.

- ``_format`` / ``Accept``: the API answers JSON only. ``_format`` may be ``json``,
  ``application/fhir+json``, ``application/json`` (or ``application/json+fhir``); XML (``xml``,
  ``application/fhir+xml``...) or an ``Accept`` that admits no JSON is a 406 OperationOutcome.
  ``_pretty=true`` indents the answer (``services/api/negotiation.py``), ``false`` keeps it compact.
- ``If-None-Match`` / ``If-Modified-Since`` on read and vread: 304 when the client's copy is current.
- ``Prefer: return=minimal | representation | OperationOutcome`` on create and update.
- ``_total`` / ``_totalMethod`` (the latter is what fhirpy sends when counting): the total is always
  counted exactly, so any value asking for one is accepted.

Failures are ``FhirError`` (406 for a format the API does not speak, 400 for a malformed value).
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from shared.fhir import FhirError

JSON_FORMATS = frozenset({"json", "application/fhir+json", "application/json", "application/json+fhir", "text/json"})
# Query parameters every FHIR interaction takes; the request is rewritten without them before routing.
FORMAT_PARAMS = ("_format", "_pretty")
TOTAL_PARAMS = ("_total", "_totalMethod")
TOTAL_VALUES = frozenset({"none", "estimate", "accurate", "count"})
PREFER_RETURNS = ("minimal", "representation", "OperationOutcome")


def check_format(value: str) -> None:
    """``FhirError`` 406 unless ``_format`` names JSON (parameters such as ``;fhirVersion=4.0`` allowed)."""
    media = value.split(";", 1)[0].strip().lower()
    if media not in JSON_FORMATS:
        raise FhirError(
            406,
            "not-supported",
            f"_format={value!r} is not supported: this server answers JSON only ({', '.join(sorted(JSON_FORMATS))})",
        )


def check_pretty(value: str) -> None:
    if value not in ("true", "false"):
        raise FhirError(400, "invalid", f"_pretty={value!r} must be true or false")


def accepts_json(accept: str | None) -> bool:
    """Whether an ``Accept`` header admits a JSON answer (no header, ``*/*``, ``application/*`` do)."""
    if accept is None or not accept.strip():
        return True
    for part in accept.split(","):
        media, *params = [p.strip().lower() for p in part.split(";")]
        if any(_refused(p) for p in params):
            continue
        if media in ("*/*", "application/*") or media in JSON_FORMATS or media.endswith("+json"):
            return True
    return False


def _refused(param: str) -> bool:
    """Whether an Accept parameter is ``q=0`` (``q=0.0``...): the client refuses that type."""
    name, _, value = param.partition("=")
    try:
        return name.strip() == "q" and float(value) == 0
    except ValueError:
        return False


def check_accept(accept: str | None) -> None:
    """``FhirError`` 406 when ``Accept`` admits no JSON (e.g. ``application/fhir+xml`` alone)."""
    if not accepts_json(accept):
        raise FhirError(
            406, "not-supported", f"Accept {accept!r} admits no JSON: this server answers application/fhir+json only"
        )


def check_total(name: str, value: str) -> None:
    if value not in TOTAL_VALUES:
        raise FhirError(400, "invalid", f"{name}={value!r} is not one of {', '.join(sorted(TOTAL_VALUES))}")


def version_of_etag(value: str) -> str:
    """``W/"3"``, ``"3"`` or ``3`` -> ``"3"`` (fhirpy sends the bare versionId)."""
    return value.strip().removeprefix("W/").strip('"')


def not_modified(
    version: int, last_updated: datetime, if_none_match: str | None, if_modified_since: str | None
) -> bool:
    """Whether a conditional read can be answered 304: ``If-None-Match`` names the current version (or
    is ``*``), or, without it, the resource has not changed since ``If-Modified-Since`` (HTTP dates have
    whole seconds, so the stored instant is compared truncated). A malformed date is ignored, as HTTP asks."""
    if if_none_match is not None:
        tags = [version_of_etag(t) for t in if_none_match.split(",")]
        return "*" in tags or str(version) in tags
    if if_modified_since is None:
        return False
    try:
        since = parsedate_to_datetime(if_modified_since)
    except (TypeError, ValueError):
        return False
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    changed = last_updated if last_updated.tzinfo else last_updated.replace(tzinfo=UTC)
    return changed.replace(microsecond=0) <= since


def prefer_return(prefer: str | None) -> str | None:
    """The ``return=`` preference of a ``Prefer`` header (``minimal``, ``representation`` or
    ``OperationOutcome``, matched case-insensitively), or None. Other preferences are ignored, as
    preferences may be."""
    for part in (prefer or "").split(","):
        name, _, value = part.strip().replace(" ", "").partition("=")
        if name.lower() == "return":
            for known in PREFER_RETURNS:
                if value.strip('"').lower() == known.lower():
                    return known
    return None
