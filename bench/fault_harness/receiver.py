"""The trusts' rest-hook endpoint, in the harness's own process: it records every notification it
answers 2xx (subscription, event number, event id, focus version, arrival time, signature checked), and
can be taken down, or made to answer 500, or 503 with ``Retry-After``, to play a receiver in trouble."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from aiohttp import web

from services.notifier.signing import verify

RETRY_AFTER_S = 1


@dataclass(frozen=True)
class Receipt:
    subscription: str
    number: int
    event_id: str
    focus: str  # Type/id/_history/N, or "" when the notification names none
    at: float
    signed: bool


def _focus(body: bytes) -> str:
    try:
        bundle = json.loads(body)
        status = bundle["entry"][0]["resource"]
        for parameter in status.get("parameter", []):
            if parameter.get("name") != "notification-event":
                continue
            for part in parameter.get("part", []):
                if part.get("name") == "focus":
                    reference = str(part["valueReference"]["reference"])
                    return reference.split("/fhir/", 1)[-1]
    except (ValueError, KeyError, IndexError, TypeError):
        return ""
    return ""


@dataclass
class Receiver:
    secrets: dict[str, str] = field(default_factory=dict)  # subscription id -> its signing secret
    received: list[Receipt] = field(default_factory=list)
    handshakes: int = 0
    refused: int = 0  # notifications answered 500 or 503
    mode: str = "ok"  # "ok", "500", "503"
    port: int = 0
    _runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        event_id = request.headers.get("X-Event-Id")
        if self.mode == "500":
            self.refused += 1
            return web.Response(status=500, text="receiver failing")
        if self.mode == "503":
            self.refused += 1
            return web.Response(status=503, headers={"Retry-After": str(RETRY_AFTER_S)}, text="busy")
        if not event_id:
            self.handshakes += 1
            return web.Response(status=200)
        subscription = request.headers.get("X-Subscription-Id", "")
        secret = self.secrets.get(subscription)
        signed = secret is not None and verify(body, secret, request.headers.get("X-Signature", ""))
        number = int(request.headers.get("X-Event-Number", "0"))
        self.received.append(Receipt(subscription, number, event_id, _focus(body), time.monotonic(), signed))
        return web.Response(status=200)

    async def up(self) -> None:
        """Listen (again, on the same port once it has one)."""
        app = web.Application()
        app.router.add_post("/hook/{trust}", self.handle)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def down(self) -> None:
        """Stop listening: connections are refused until ``up``."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def url(self, trust: str) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{trust}"

    def numbers(self, subscription: str) -> list[int]:
        return [r.number for r in self.received if r.subscription == subscription]


def receipts_by_subscription(receipts: list[Receipt]) -> dict[str, list[Receipt]]:
    found: dict[str, list[Receipt]] = {}
    for receipt in receipts:
        found.setdefault(receipt.subscription, []).append(receipt)
    return found
