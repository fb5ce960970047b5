"""ASGI middleware for the FHIR paths (``/fhir...`` and ``/metadata``): ``_format``, ``_pretty``, ``Accept``
and ``HEAD``, once for every interaction, so no route has to know about them.

- ``_format`` and ``_pretty`` are checked (``shared/fhir_conventions.py``) and removed from the
  query string before routing, so search and history never see them as unknown parameters;
- an XML ``_format``, or (without ``_format``, which overrides it) an ``Accept`` that admits no JSON, is
  answered 406 with an OperationOutcome before the request reaches a route (nothing is stored);
- ``_pretty=true`` re-indents the JSON answer (compact otherwise);
- ``HEAD`` is served as ``GET`` with the body dropped (headers, status and ``Content-Length`` kept);
- every segment of a ``/fhir/...`` path (a type, an id, a version, ``_history``, ``$validate``) must be
  a FHIR id, optionally after ``$`` or ``_``: anything else (a space, a NUL, 65 characters) could never
  name a resource, and is answered 400 before it reaches a route or the database.
"""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.fhir import FHIR_JSON, FhirError
from shared.fhir_conventions import FORMAT_PARAMS, check_accept, check_format, check_pretty


def is_fhir_path(path: str) -> bool:
    return path == "/metadata" or path == "/fhir" or path.startswith("/fhir/")


# A FHIR id (shared.ids.FHIR_ID), or an operation or a keyword: $validate, _history, _search.
_SEGMENT = re.compile(r"[$_]?[A-Za-z0-9\-.]{1,64}")


def check_path(path: str) -> None:
    """``FhirError`` 400 unless every non-empty segment of a ``/fhir/...`` path is a FHIR id (1-64
    letters, digits, '-' or '.'), an operation (``$validate``) or a keyword (``_history``)."""
    for segment in path.split("/")[2:]:
        if segment and not _SEGMENT.fullmatch(segment):
            shown = segment if len(segment) <= 80 else f"{segment[:80]}... ({len(segment)} characters)"
            raise FhirError(
                400,
                "invalid",
                f"{shown.encode('unicode_escape').decode()!r} in the path is not a FHIR id "
                "(1-64 letters, digits, '-' or '.')",
            )


class FhirNegotiation:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_fhir_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        params = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            check_path(scope["path"])
            formats = [v for k, v in params if k == "_format"]
            for value in formats:
                check_format(value)
            for value in (v for k, v in params if k == "_pretty"):
                check_pretty(value)
            if not formats:
                check_accept(headers.get("accept"))
        except FhirError as error:
            await _send_outcome(send, error)
            return
        if any(k in FORMAT_PARAMS for k, _ in params):
            kept = [(k, v) for k, v in params if k not in FORMAT_PARAMS]
            scope = {**scope, "query_string": urlencode(kept).encode("latin-1")}
        if scope["method"] == "HEAD":
            scope, send = {**scope, "method": "GET"}, _without_body(send)
        if ("_pretty", "true") in params:
            send = _indented(send)  # inside the HEAD wrapper, so Content-Length is the indented body's
        await self.app(scope, receive, send)


def _indented(send: Send) -> Send:
    """``_pretty=true``: the JSON answer re-indented (held until its last chunk, ``Content-Length`` fixed);
    any other answer passes unchanged."""
    start: Message | None = None
    chunks: list[bytes] = []

    async def pretty_send(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
            return
        if message["type"] != "http.response.body" or start is None:
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(chunks)
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        media = next((v for k, v in headers if k.lower() == b"content-type"), b"")
        if body and b"json" in media:
            body = json.dumps(json.loads(body), indent=2, ensure_ascii=False).encode()
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return pretty_send


def _without_body(send: Send) -> Send:
    async def head_send(message: Message) -> None:
        if message["type"] == "http.response.body":
            if message.get("more_body", False):
                return
            message = {"type": "http.response.body", "body": b"", "more_body": False}
        await send(message)

    return head_send


async def _send_outcome(send: Send, error: FhirError) -> None:
    body = json.dumps(error.outcome()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [(b"content-type", FHIR_JSON.encode()), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
