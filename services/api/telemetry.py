"""Every HTTP request: its correlation id bound and echoed, counted by route template and status, and the
time to answer the inbound flows (``POST /hl7v2``, FHIR create and Bundles) measured.

Two pure ASGI middlewares. ``Telemetry`` (outermost but for the audit): binds the id a caller sent in
``X-Correlation-Id`` or ``X-Request-Id`` (``shared/correlation.py``) for the request, so the records it
stores, the events they cause and every log line carry it, and echoes it in the answer under the name
it came in; counts the request (``mscc_http_requests_total``) once answered, whoever answered it (a
route, the negotiation's 406, a 429). ``RouteProbe`` (innermost) reads which route matched: middleware
in between may hand the router a copy of the request's scope, so the route is passed back out through
a holder both scopes share. Counting by template keeps the number of series bounded whatever paths
callers try; a request no route matched is ``unmatched``.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import correlation
from shared.metrics import ACK_SECONDS, HTTP_REQUESTS

HOLDER = "mscc.telemetry"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# The inbound flows: the answer is their acknowledgement (mscc_ack_seconds, by channel).
ACK_ROUTES = {
    ("POST", "/hl7v2"): "http",
    ("POST", "/fhir"): "fhir",
    ("POST", "/fhir/ServiceRequest"): "fhir",
}
_SENT = tuple((name, name.lower().encode("latin-1")) for name in correlation.HEADERS)


def sent_correlation(scope: Scope) -> tuple[str | None, list[tuple[bytes, bytes]]]:
    """The usable id a caller sent (the first of ``correlation.HEADERS`` that is usable), and the
    headers that echo it: each header that was sent, now carrying that id."""
    headers: dict[bytes, str] = {}
    for key, value in scope.get("headers", []):
        headers.setdefault(key.lower(), value.decode("latin-1"))
    found = next((cid for _, key in _SENT if (cid := correlation.sent(headers.get(key)))), None)
    if found is None:
        return None, []
    return found, [(key, found.encode("latin-1")) for _, key in _SENT if key in headers]


class Telemetry:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        holder: dict[str, Any] = {}
        scope[HOLDER] = holder
        found, echo = sent_correlation(scope)
        answer: dict[str, Any] = {"status": 500, "at": None}

        async def answering(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"], answer["at"] = message["status"], time.perf_counter()
                if echo:
                    message = {**message, "headers": [*message.get("headers", []), *echo]}
            await send(message)

        try:
            with correlation.bound(found):
                await self.app(scope, receive, answering)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "other"
            route = holder.get("route") or "unmatched"
            HTTP_REQUESTS.labels(method, route, str(answer["status"])).inc()
            channel = ACK_ROUTES.get((method, route))
            if channel is not None and answer["at"] is not None:
                ACK_SECONDS.labels(channel).observe(answer["at"] - started)


class RouteProbe:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            holder = scope.get(HOLDER)
            path = getattr(scope.get("route"), "path", None)
            if holder is not None and isinstance(path, str):
                holder["route"] = path
