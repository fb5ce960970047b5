"""The demo's stand-in for the trusts' Acute Oncology systems: a rest-hook receiver on loopback.

One aiohttp server on a free port of 127.0.0.1 (inside the demo, gone when the hub stops) takes every
trust's notifications at ``/aos/{ODS}``, checks each one's signature (HMAC-SHA256 of the body with the
subscription's secret, ``X-Signature``) and says what arrived. ``/aos/{ODS}/flaky`` behaves like an
endpoint having a bad minute: it answers the handshake, then ``503`` with ``Retry-After`` to the first
notification attempts, then ``200``, so the hub's retry shows.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

Say = Callable[[str], None]
STEP_EXTENSION = "urn:mscc:fhir:StructureDefinition:pathway-step"


@dataclass(frozen=True)
class Received:
    """One event a trust's endpoint accepted."""

    trust: str
    topic: str
    kind: str  # created, updated, transition, ...
    number: int  # the event's number in its subscription
    focus: str  # Type/id
    what: str  # the focus in a few words
    refused_before: int  # attempts this endpoint answered 503 before accepting it
    signed: bool  # the signature matched the subscription's secret


def _params(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return list(bundle["entry"][0]["resource"].get("parameter") or [])


def _value(params: list[dict[str, Any]], name: str) -> Any:
    for p in params:
        if p.get("name") == name:
            return next((v for k, v in p.items() if k.startswith("value")), None)
    return None


def _detail(event: dict[str, Any]) -> dict[str, str]:
    """The hub's event detail (kind, step, ...) of a notification-event, when it has one."""
    for ext in event.get("extension") or []:
        parts = {p["url"]: next(v for k, v in p.items() if k.startswith("value")) for p in ext.get("extension") or []}
        if "kind" in parts:
            return parts
    return {}


def describe(resource: dict[str, Any] | None) -> str:
    """A resource of a notification in a few plain words."""
    if not resource:
        return "(no resource)"
    kind = resource.get("resourceType")
    if kind == "ServiceRequest":
        step = next((e["valueCode"] for e in resource.get("extension") or [] if e.get("url") == STEP_EXTENSION), None)
        return f"referral {resource.get('status')}, pathway step {step or 'received'}"
    if kind == "Task":
        asks = [str(i.get("valueString")) for i in resource.get("input") or [] if i.get("valueString")]
        if resource.get("status") == "requested" and asks:
            return "the referral lacks: " + "; ".join(asks)
        return f"data-quality Task {resource.get('status')}"
    if kind == "CarePlan":
        concerns = [
            a["detail"]["description"].removeprefix("Agree support for: ") for a in resource.get("activity") or []
        ]
        return "support plan: " + ", ".join(concerns) if concerns else f"CarePlan {resource.get('status')}"
    return str(kind)


class Receiver:
    """The loopback endpoints; ``received`` holds what was accepted, ``refusals`` what was answered 503."""

    def __init__(self, say: Say, *, flaky_failures: int = 2, retry_after_s: int = 1) -> None:
        self.say = say
        self.secrets: dict[str, str] = {}  # subscription id -> secret (X-Subscription-Secret at creation)
        self.received: list[Received] = []
        self.refusals = 0
        self._refused: dict[str, int] = {}  # X-Event-Id -> attempts answered 503
        self.handshakes = 0
        self._flaky_left = flaky_failures
        self._retry_after_s = retry_after_s
        self._runner: web.AppRunner | None = None
        self._base = ""
        self._changed = asyncio.Event()

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/aos/{trust}", self._handle)
        app.router.add_post("/aos/{trust}/flaky", self._handle_flaky)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self._base = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self._base

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def endpoint(self, trust: str, *, flaky: bool = False) -> str:
        return f"{self._base}/aos/{trust}" + ("/flaky" if flaky else "")

    async def wait_until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``done()`` holds (checked after each notification), at most ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not done():
            left = deadline - loop.time()
            if left <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return done()
        return True

    # -- the endpoints ----------------------------------------------------------------------------

    async def _handle_flaky(self, request: web.Request) -> web.Response:
        body = await request.read()
        bundle = json.loads(body)
        if _value(_params(bundle), "type") == "event-notification" and self._flaky_left > 0:
            self._flaky_left -= 1
            self.refusals += 1
            event_id = request.headers.get("X-Event-Id", "")
            self._refused[event_id] = self._refused.get(event_id, 0) + 1
            number = request.headers.get("X-Event-Number", "?")
            self.say(
                f"  <- {request.match_info['trust']} endpoint is having a bad minute: answered 503, "
                f"Retry-After {self._retry_after_s} s, to event {number} (the hub will try again)"
            )
            self._changed.set()
            return web.Response(status=503, headers={"Retry-After": str(self._retry_after_s)}, text="busy")
        return self._accept(request, body, bundle)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        return self._accept(request, body, json.loads(body))

    def _signed(self, request: web.Request, body: bytes) -> bool:
        secret = self.secrets.get(request.headers.get("X-Subscription-Id", ""))
        if secret is None:
            return False
        expected = "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, request.headers.get("X-Signature", ""))

    def _accept(self, request: web.Request, body: bytes, bundle: dict[str, Any]) -> web.Response:
        trust = request.match_info["trust"]
        params = _params(bundle)
        topic = str(_value(params, "topic") or "").rsplit("/", 1)[-1]
        if _value(params, "type") == "handshake":
            self.handshakes += 1
            self._changed.set()
            return web.Response(status=200)
        signed = self._signed(request, body)
        events = [p for p in params if p.get("name") == "notification-event"]
        for index, event in enumerate(events, start=1):
            parts = event.get("part") or []
            number = int(_value(parts, "event-number") or 0)
            focus = str((_value(parts, "focus") or {}).get("reference", "")).split("/fhir/", 1)[-1]
            entry = bundle["entry"][index] if index < len(bundle["entry"]) else {}
            detail = _detail(event)
            method = (entry.get("request") or {}).get("method")
            kind = detail.get("kind") or ("created" if method == "POST" else "updated")
            refused = self._refused.get(request.headers.get("X-Event-Id", ""), 0)
            got = Received(trust, topic, kind, number, focus, describe(entry.get("resource")), refused, signed)
            self.received.append(got)
            retried = f", accepted after {refused} refused attempt(s)" if refused else ""
            self.say(
                f"  <- {trust} Acute Oncology got '{topic}' event {number} ({kind}): {focus}: {got.what}"
                f" [signature {'ok' if signed else 'NOT verified'}{retried}]"
            )
        self._changed.set()
        return web.Response(status=200)
