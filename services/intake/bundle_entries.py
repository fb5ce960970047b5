"""Which entries of a posted Bundle the hub carries out, and the honest answer for every other one.

The mapper applies exactly two kinds of transaction or batch entry: a create (``POST Type``) and an
update by plain id (``PUT Type/id``) of a type the hub stores (``shared.stored_types``), carrying a
resource whose required codes conform (``shared.bindings``). Anything else (DELETE, GET, HEAD, PATCH,
conditional requests, operations, other types, malformed URLs) would never be carried out, so it is
refused here instead of being acknowledged: a transaction is refused whole, a batch answers that entry
with its own error status (424 for an entry that refers to a refused one by its fullUrl). In a message
Bundle an entry of a type the hub does not store is named in a warning (the message itself is still
processed), and a message with nothing the hub stores is refused.

Everything here is pure: entries in, ``EntryRefusal`` / issues out; the caller answers and stores.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from shared.bindings import binding_issues
from shared.fhir import FhirError, issue, operation_outcome
from shared.stored_types import STORED_TYPES

CARRIED_OUT = ("POST", "PUT")
NOT_CARRIED_OUT = ("GET", "HEAD", "DELETE", "PATCH")
# Conditional request elements: the hub does not evaluate them, so an entry carrying one is refused
# rather than applied as if it were unconditional.
CONDITIONS = ("ifNoneExist", "ifMatch", "ifNoneMatch", "ifModifiedSince")
# FHIR id: 1-64 of [A-Za-z0-9-.]; an id of dots only is refused too (it would read as a path step).
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
MESSAGE_ENVELOPE = ("MessageHeader",)


@dataclass(frozen=True)
class EntryRefusal:
    """Why one entry is not carried out: the HTTP status a batch answers it with, and the issues."""

    index: int
    status: int
    issues: list[dict[str, Any]] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"

    def response(self) -> dict[str, Any]:
        """The entry's ``response`` in a batch-response: its status line and an OperationOutcome."""
        return {"status": f"{self.status} {HTTPStatus(self.status).phrase}", "outcome": operation_outcome(self.issues)}

    def to_doc(self) -> dict[str, Any]:
        return {"status": self.status, "issues": self.issues}


def _refusal(index: int, status: int, code: str, why: str, element: str = "") -> EntryRefusal:
    where = f"Bundle.entry[{index}]"
    return EntryRefusal(index, status, [issue("error", code, f"{where}: {why}", [f"{where}{element}"])])


def _url_problem(method: str, url: Any, rtype: str) -> tuple[str, str] | None:
    """(issue code, why) when ``url`` is not ``Type`` (POST) or ``Type/id`` (PUT) for ``rtype``."""
    shown = f"{method} {url!r}"
    if not isinstance(url, str) or not url:
        return "required", f"{shown}: request.url is required"
    if "$" in url:
        return "not-supported", f"{shown}: operations are not carried out in a Bundle entry"
    if "?" in url:
        return "not-supported", f"{shown}: conditional {method} is not supported; use {rtype}" + (
            "/{id}" if method == "PUT" else ""
        )
    expected = rtype if method == "POST" else f"{rtype}/{{id}}"
    if method == "POST" and url == rtype:
        return None
    if method == "PUT":
        kind, _, rid = url.partition("/")
        if kind == rtype and _ID.fullmatch(rid) and rid.strip("."):
            return None
    return "invalid", f"{shown} is not a relative URL for a {rtype}: expected {expected!r}"


def request_refusal(entry: Mapping[str, Any], index: int, bundle_type: str) -> EntryRefusal | None:
    """Why a transaction or batch entry is not carried out, or None if the mapper will apply it."""
    request = entry.get("request")
    if not isinstance(request, Mapping):
        return _refusal(index, 400, "required", f"request is required in a {bundle_type} entry", ".request")
    method, url = request.get("method"), request.get("url")
    if method in NOT_CARRIED_OUT:
        return _refusal(
            index,
            405,
            "not-supported",
            f"{method} {url!r} is not carried out: in a {bundle_type} this hub only creates (POST Type) and "
            "updates by id (PUT Type/id)",
            ".request.method",
        )
    if method not in CARRIED_OUT:
        return _refusal(index, 400, "code-invalid", f"request.method {method!r} is not an HTTP verb", ".request.method")
    conditions = [name for name in CONDITIONS if name in request]
    if conditions:
        return _refusal(
            index,
            400,
            "not-supported",
            f"{method} {url!r} with request.{conditions[0]}: conditional requests are not supported in a "
            f"{bundle_type}; send it unconditionally",
            f".request.{conditions[0]}",
        )
    resource = entry.get("resource")
    if not isinstance(resource, Mapping):
        return _refusal(index, 400, "required", f"{method} {url!r} has no resource", ".resource")
    rtype = str(resource.get("resourceType"))
    problem = _url_problem(method, url, rtype)
    if problem:
        return _refusal(index, 400, problem[0], problem[1], ".request.url")
    if rtype not in STORED_TYPES:
        return _refusal(
            index,
            422,
            "not-supported",
            f"{method} {url!r}: {rtype} is not a type this hub stores ({', '.join(STORED_TYPES)})",
            ".resource",
        )
    if method == "PUT" and "id" in resource and resource["id"] != str(url).partition("/")[2]:
        return _refusal(
            index, 400, "invalid", f"PUT {url!r} carries a resource with id {resource['id']!r}", ".resource.id"
        )
    return bindings_refusal(resource, index)


def bindings_refusal(resource: Mapping[str, Any], index: int) -> EntryRefusal | None:
    """The entry's resource has a code outside a required value set (each element named), or None."""
    issues = binding_issues(resource, f"Bundle.entry[{index}].resource")
    return EntryRefusal(index, 400, issues) if issues else None


def _references(value: Any) -> Iterator[str]:
    """Every ``reference`` string inside a resource."""
    if isinstance(value, Mapping):
        ref = value.get("reference")
        if isinstance(ref, str):
            yield ref
        for item in value.values():
            yield from _references(item)
    elif isinstance(value, list):
        for item in value:
            yield from _references(item)


def _dependency_refusals(entries: list[dict[str, Any]], refusals: dict[int, EntryRefusal]) -> dict[int, EntryRefusal]:
    """Entries referring (by fullUrl) to a refused entry are refused too (424), until none is left: the
    mapper resolves such references, so applying them would store a referral pointing at nothing."""
    refusals = dict(refusals)
    while True:
        refused_urls = {entries[i].get("fullUrl"): i for i in refusals if entries[i].get("fullUrl")}
        added = 0
        for index, entry in enumerate(entries):
            if index in refusals or not refused_urls:
                continue
            target = next((refused_urls[r] for r in _references(entry.get("resource")) if r in refused_urls), None)
            if target is not None:
                refusals[index] = _refusal(
                    index,
                    424,
                    "processing",
                    f"refers to Bundle.entry[{target}] ({entries[target]['fullUrl']}), which is not carried out",
                    ".resource",
                )
                added += 1
        if not added:
            return refusals


def request_refusals(entries: list[dict[str, Any]], bundle_type: str) -> dict[int, EntryRefusal]:
    """Every transaction or batch entry that is not carried out, by index (with those that refer to one)."""
    found = (request_refusal(entry, index, bundle_type) for index, entry in enumerate(entries))
    return _dependency_refusals(entries, {refusal.index: refusal for refusal in found if refusal is not None})


def transaction_issues(refusals: dict[int, EntryRefusal], total: int) -> list[dict[str, Any]]:
    """The OperationOutcome issues refusing a whole transaction: a summary, then every entry's own."""
    named = ", ".join(refusals[i].where for i in sorted(refusals))
    summary = issue(
        "error",
        "processing",
        f"transaction refused, nothing applied: {len(refusals)} of {total} entries cannot be carried out ({named})",
        ["Bundle.entry"],
    )
    return [summary, *(item for i in sorted(refusals) for item in refusals[i].issues)]


@dataclass
class MessageCheck:
    """A message Bundle's entries: errors refuse the message, warnings name entries the hub will not store."""

    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: dict[int, list[dict[str, Any]]] = field(default_factory=dict)


def check_message(entries: list[dict[str, Any]]) -> MessageCheck:
    """Required codes of every entry (errors); entries of types the hub does not store (warnings); and an
    error when no entry at all is something the hub stores, since nothing of the message would be done."""
    check = MessageCheck()
    stored = 0
    for index, entry in enumerate(entries):
        resource = entry.get("resource")
        if not isinstance(resource, Mapping):
            continue
        check.errors += binding_issues(resource, f"Bundle.entry[{index}].resource")
        rtype = resource.get("resourceType")
        if rtype in STORED_TYPES:
            stored += 1
        elif rtype not in MESSAGE_ENVELOPE:
            where = f"Bundle.entry[{index}]"
            check.warnings[index] = [
                issue(
                    "warning",
                    "not-supported",
                    f"{where}: {rtype} is not a type this hub stores; it is kept in the message record only",
                    [f"{where}.resource"],
                )
            ]
    if not stored and not check.errors:
        check.errors.append(
            issue(
                "error",
                "not-supported",
                f"the message holds no resource this hub stores ({', '.join(STORED_TYPES)}): nothing would be done",
                ["Bundle.entry"],
            )
        )
    return check


def bundle_refusals(
    bundle_type: str, entries: list[dict[str, Any]]
) -> tuple[dict[int, EntryRefusal], dict[int, list[dict[str, Any]]]]:
    """What of a Bundle is not carried out: (batch entries refused, by index; message entries not stored,
    as warnings by index). ``FhirError`` 400 refuses a transaction with any such entry (every one named,
    nothing applied), and 400/422 a message with a code outside its value set or nothing the hub stores."""
    if bundle_type == "message":
        check = check_message(entries)
        if check.errors:
            status = 422 if check.errors[0]["code"] == "not-supported" else 400
            raise FhirError(status, "invalid", check.errors[0]["diagnostics"], issues=check.errors[:50])
        return {}, check.warnings
    refusals = request_refusals(entries, bundle_type)
    if bundle_type == "transaction" and refusals:
        issues = transaction_issues(refusals, len(entries))
        raise FhirError(400, "processing", issues[0]["diagnostics"], issues=issues[:100])
    return refusals, {}
