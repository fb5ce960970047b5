"""The audit middleware: one AuditEvent (``shared/audit.py``) for every request to ``/fhir``, ``/hl7v2`` and
``/admin``, written after its answer has been sent.

What it reads, once the answer is complete:

- the caller from ``request.state.caller`` (set by the caller dependency once it has resolved one) and,
  for a refusal, ``request.state.auth_failure`` (the reason the dependency refused it with);
- the status (the outcome: 0, 4 for 4xx, 8 for 5xx), and for a refused attempt (401, 403, 404, 405,
  406, 429) the reason the client was given (the OperationOutcome's diagnostics, ``detail``, or the
  plain-text answer), else only the status and the issue code, never a body's free text;
- the resources touched: the one in the path; what a handler noted with ``note_resources`` or
  ``note_bundle`` (a read's patient, a search's or history's results: handlers already hold them as
  dicts, so nothing is parsed twice); a create's ``Location``; the stored message records of
  ``X-Message-Id`` (HL7v2, Bundles); the patient a created or updated resource names, and the
  ``location`` of each entry of a Bundle's receipt (parsed here: one resource or a receipt is small, and
  only the middleware sees the answer whatever ``Prefer`` asked for).

It is pure ASGI (no buffering of answers it does not need to read) and the outermost middleware, so it
sees the answers other middleware give too (406, 429). The write is one insert in the request's own
task, after the last byte of the answer: the client never waits for it, and a clean stop, which lets
requests in flight finish, loses none.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.audit import RECORD_SYSTEM, REFUSED, AuditFacts, Hub, Interaction, classify, patient_references
from shared.audit_log import AuditLog
from shared.auth import Caller
from shared.fhir import Resource
from shared.settings import Settings
from shared.store import Store

log = logging.getLogger(__name__)

REASON_BYTES = 16 * 1024
RECEIPT_BYTES = 1024 * 1024
BUNDLE_INTERACTIONS = {"transaction-response": "transaction", "batch-response": "batch", "message": "operation"}
WRITES = frozenset({"create", "update", "patch", "transaction"})  # answers read for what they wrote


def install(app: FastAPI, store: Store, settings: Settings) -> AuditLog:
    """Add the audit middleware to ``app`` (call it after every other middleware: it must be outermost)."""
    hub = Hub(settings.receiving_application, settings.receiving_facility, settings.base_url)
    audit_log = AuditLog(store.audit, hub)
    app.state.audit_log = audit_log
    app.add_middleware(AuditMiddleware, audit_log=audit_log)
    return audit_log


def note_resources(request: Request, resources: Iterable[Resource]) -> None:
    """Name, for this request's AuditEvent, the resources a handler returns and the patients they concern."""
    refs: list[str] = getattr(request.state, "audit_entities", None) or []
    for resource in resources:
        if resource.get("resourceType") and resource.get("id"):
            refs.append(f"{resource['resourceType']}/{resource['id']}")
        refs += patient_references(resource)
    request.state.audit_entities = refs


def note_bundle(request: Request, bundle: Resource, params: list[tuple[str, str]] | None = None) -> None:
    """Name a search's or history's results (and how many there are); ``params`` when the query did not
    come in the query string (a form POSTed to ``_search``)."""
    entries = bundle.get("entry", [])
    note_resources(request, (e["resource"] for e in entries if isinstance(e.get("resource"), dict)))
    request.state.audit_results = bundle.get("total", len(entries))
    if params is not None:
        request.state.audit_query = urlencode(params)


def _now() -> datetime:
    return datetime.now(UTC)


class _Answer:
    """What the middleware learns from the answer as it passes: status, headers, and (bounded) the body
    when it is needed (a refusal's reason, a written resource's patient, a Bundle receipt's entries)."""

    def __init__(self, interaction: Interaction) -> None:
        self.interaction = interaction
        self.status = 500
        self.started = False
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self._limit = 0

    def wrap(self, send: Send) -> Send:
        async def audit_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.started = True
                self.status = int(message["status"])
                self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])}
                written = self.interaction.code in WRITES and self.status < 300
                self._limit = REASON_BYTES if self.status >= 400 else RECEIPT_BYTES if written else 0
            elif message["type"] == "http.response.body" and self._limit:
                room = self._limit + 1 - len(self.body)
                if room > 0:
                    self.body += message.get("body", b"")[:room]
            await send(message)

        return audit_send

    @functools.cached_property
    def data(self) -> Any:
        """The answer's JSON, when it was kept whole (parsed once, after the answer is complete)."""
        if len(self.body) > self._limit or "json" not in self.headers.get("content-type", ""):
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def reason(self) -> str | None:
        """Why the request failed: for a refused attempt, what the client was told; otherwise the status
        and the issue code only (a validation message may quote the request's content)."""
        if self.status < 400:
            return None
        data = self.data
        issues = data.get("issue") if isinstance(data, dict) else None
        issue = issues[0] if isinstance(issues, list) and issues and isinstance(issues[0], dict) else {}
        if self.status in REFUSED:
            if issue.get("diagnostics"):
                return str(issue["diagnostics"])
            if isinstance(data, dict) and isinstance(data.get("detail"), str):
                return str(data["detail"])
            if self.headers.get("content-type", "").startswith("text/plain") and len(self.body) <= self._limit:
                text = bytes(self.body).decode("utf-8", errors="replace").strip().splitlines()
                return text[0] if text else None
        return f"HTTP {self.status}" + (f" {issue['code']}" if issue.get("code") else "")

    def entities(self) -> list[str]:
        found = [f"{RECORD_SYSTEM}|{r.strip()}" for r in self.headers.get("x-message-id", "").split(",") if r.strip()]
        location = self.headers.get("location")
        if location:
            found.append(_reference(location))
        data = self.data if self.interaction.code in WRITES and self.status < 300 else None
        if isinstance(data, dict) and data.get("resourceType") not in (None, "Bundle", "OperationOutcome"):
            found += patient_references(data)
        elif isinstance(data, dict):
            for entry in data.get("entry", []):
                where = entry.get("response", {}).get("location") if isinstance(entry, dict) else None
                if isinstance(where, str):
                    found.append(_reference(where))
        return found

    def resolved(self) -> Interaction:
        """The interaction, once the answer says which kind of Bundle a POST to the base was."""
        data = self.data if self.interaction.code == "transaction" and self.status < 300 else None
        kind = BUNDLE_INTERACTIONS.get(data.get("type", "")) if isinstance(data, dict) else None
        return dataclasses.replace(self.interaction, code=kind) if kind else self.interaction

    def acknowledgement_failed(self) -> str | None:
        """An HL7v2 ACK that refuses the message (AE/AR/CE/CR) is a minor failure, whatever the HTTP status."""
        code = self.headers.get("x-ack-code", "")
        return f"HL7v2 acknowledgement {code}" if code in ("AE", "AR", "CE", "CR") else None


def _reference(url: str) -> str:
    """``Type/id`` of a resource URL (absolute or relative, with or without ``_history``)."""
    path = url.split("/fhir/", 1)[1] if "/fhir/" in url else url
    return "/".join(path.strip("/").split("/")[:2])


class AuditMiddleware:
    def __init__(self, app: ASGIApp, audit_log: AuditLog, clock: Callable[[], datetime] = _now) -> None:
        self.app = app
        self.audit_log = audit_log
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        interaction = classify(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if interaction is None:
            await self.app(scope, receive, send)
            return
        # One state dict for every copy of the scope the inner middleware make (request.state lives here).
        state: dict[str, Any] = scope.setdefault("state", {})
        answer = _Answer(interaction)
        try:
            await self.app(scope, receive, answer.wrap(send))
        finally:
            try:
                await self.audit_log.record(self._facts(scope, state, answer))
            except Exception:  # the answer has gone; an audit failure must not turn into a second one
                log.exception("audit event not built", extra={"path": scope["path"], "status": answer.status})

    def _facts(self, scope: Scope, state: dict[str, Any], answer: _Answer) -> AuditFacts:
        caller = state.get("caller")
        client = scope.get("client")
        failed_ack = answer.acknowledgement_failed()
        return AuditFacts(
            interaction=answer.resolved(),
            recorded=self.clock(),
            status=answer.status,
            caller=caller if isinstance(caller, Caller) else None,
            peer=client[0] if client else None,
            method="GET" if scope["method"] == "HEAD" else scope["method"],
            path=scope["path"],
            query=state.get("audit_query") or scope.get("query_string", b"").decode("latin-1"),
            reason=state.get("auth_failure") or answer.reason() or failed_ack,
            entities=[*state.get("audit_entities", []), *answer.entities()],
            results=state.get("audit_results"),
            outcome="4" if failed_ack and answer.status < 400 else None,
        )
