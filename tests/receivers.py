"""Loopback receivers and Subscription bodies shared by the notifier's end-to-end tests.

Every receiver is a real server on 127.0.0.1 with a port the system picks (port 0), so tests never
collide on a port. ``receiving()`` serves a ``Receiver`` that answers 200 and keeps every notification as
it came, for tests that read what was delivered; a receiver that must answer otherwise (fail, stall,
hang up) is a test file's own handler, served with ``serve_http``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from aiohttp import web

from services.notifier.backport import CHANNEL_TYPE, FILTER_CRITERIA, PAYLOAD_CONTENT, channel_type_system
from services.notifier.topics import topic_url
from shared.er7 import parse_message
from shared.mllp import Frame, FrameDecoder, frame
from shared.settings import Settings

FHIR_JSON = {"Content-Type": "application/fhir+json"}
RBL_REFERRALS = "ServiceRequest?requester=Organization/RBL"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
StreamServe = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OnMessage = Callable[[bytes], Awaitable[str | None]]


def loopback_settings(settings: Settings, *, http: bool = True, **extra: Any) -> Settings:
    """The suite's settings with callbacks to 127.0.0.1 allowed (plain http too unless `http` is
    False), and any other setting a file needs in `extra`."""
    update: dict[str, Any] = {"notifier_allowed_hosts": ["127.0.0.1"]}
    if http:
        update["notifier_allow_http"] = True
    return settings.model_copy(update={**update, **extra})


@asynccontextmanager
async def serve_http(handle: Handler, route: str = "/hook") -> AsyncIterator[str]:
    """Serve `handle` for POSTs to `route` on loopback; yields the base URL (http://127.0.0.1:port).

    The server is cleaned up on leaving, whether or not the test failed."""
    app = web.Application()
    app.router.add_post(route, handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def serve_tcp(serve: StreamServe) -> AsyncIterator[int]:
    """Serve `serve` for each TCP connection on loopback (an MLLP or line receiver); yields the port.

    The server is closed on leaving, whether or not the test failed."""
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def answer_frames(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, on_message: OnMessage) -> None:
    """Read MLLP frames from one connection, handing each message to `on_message` and framing back the
    answer it returns (None: no answer, as a silent engine). The connection is closed at end of input,
    and also when `on_message` raises, so the notifier sees the engine hang up."""
    decoder = FrameDecoder(1 << 20)
    try:
        while data := await reader.read(65536):
            for event in decoder.feed(data):
                if isinstance(event, Frame):
                    answer = await on_message(event.data)
                    if answer is not None:
                        writer.write(frame(answer.encode()))
                        await writer.drain()
    finally:
        writer.close()


def ack(message: str, code: str = "AA", control_id: str = "A1", text: str | None = None) -> str:
    """An ACK from the Wirral Acute Oncology engine to `message`, quoting its MSH-10 in MSA-2, with
    MSA-3 (`text`) when given. Fails the test if the message has no MSH."""
    msh = parse_message(message).first("MSH")
    assert msh is not None
    msa = f"MSA|{code}|{msh.field(10)}" + (f"|{text}" if text is not None else "")
    return f"MSH|^~\\&|AOS|RBL|MSCC-HUB|REN|20261125||ACK^I12^ACK|{control_id}|P|2.5\r{msa}\r"


def notification_type(bundle: dict[str, Any]) -> str:
    """The type of a notification Bundle (handshake, heartbeat, event-notification), from its status."""
    params = {p["name"]: p for p in bundle["entry"][0]["resource"]["parameter"]}
    return str(params["type"]["valueCode"])


@dataclass(frozen=True)
class Notification:
    """One notification Bundle as a receiver got it: the path it was posted to, its type, the Bundle."""

    path: str
    kind: str
    bundle: dict[str, Any]

    @property
    def status(self) -> dict[str, Any]:
        """The Bundle's first entry (the SubscriptionStatus)."""
        return dict(self.bundle["entry"][0])

    @property
    def ids(self) -> list[str]:
        """The id of every resource the Bundle carries after its status."""
        return [e["resource"]["id"] for e in self.bundle.get("entry", [])[1:] if "resource" in e]


class Receiver:
    """A rest-hook receiver on loopback (see ``receiving``): every notification posted to it, in arrival
    order. Its type is read on arrival, so a Bundle without one is answered 500, as a real receiver would."""

    def __init__(self) -> None:
        self.notifications: list[Notification] = []
        self.base = ""  # http://127.0.0.1:port
        self.url = ""  # the endpoint for a Subscription's channel: base + /hook

    async def handle(self, request: web.Request) -> web.StreamResponse:
        bundle = json.loads(await request.read())
        self.notifications.append(Notification(request.path, notification_type(bundle), bundle))
        return web.Response(status=200)

    @property
    def kinds(self) -> list[str]:
        """The type of every notification (handshake, event-notification, ...)."""
        return [n.kind for n in self.notifications]

    def ids(self) -> list[str]:
        """The id of every resource any notification carried."""
        return [i for n in self.notifications for i in n.ids]

    def events(self, path: str | None = None) -> list[Notification]:
        """The event notifications (those posted to ``path`` when it is given)."""
        return [n for n in self.notifications if n.kind == "event-notification" and path in (None, n.path)]

    def focus(self, path: str | None = None) -> list[dict[str, Any]]:
        """The focus resource of each event notification (to ``path`` when given): full-resource content."""
        return [n.bundle["entry"][1]["resource"] for n in self.events(path)]


@asynccontextmanager
async def receiving(route: str = "/hook") -> AsyncIterator[Receiver]:
    """A ``Receiver`` served for POSTs to ``route`` (e.g. "/{path}" for any path) until the block ends."""
    receiver = Receiver()
    async with serve_http(receiver.handle, route) as base:
        receiver.base, receiver.url = base, f"{base}/hook"
        yield receiver


def rest_hook_channel(endpoint: str, content: str = "full-resource") -> dict[str, Any]:
    """A rest-hook channel posting FHIR JSON with the backport payload content (`content`)."""
    return {
        "type": "rest-hook",
        "endpoint": endpoint,
        "payload": "application/fhir+json",
        "_payload": {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": content}]},
    }


def message_channel(
    settings: Settings, endpoint: str, code: str = "mllp", header: Sequence[str] | None = None
) -> dict[str, Any]:
    """A message channel of one of our own channel types (`code`, e.g. "mllp"), as the backport
    extension names it, with the `header` lines (e.g. "MSH-5: AOS") when given."""
    coding = {"system": channel_type_system(settings.base_url), "code": code}
    channel: dict[str, Any] = {
        "type": "message",
        "_type": {"extension": [{"url": CHANNEL_TYPE, "valueCoding": coding}]},
        "endpoint": endpoint,
    }
    if header is not None:
        channel["header"] = list(header)
    return channel


def subscription_body(
    settings: Settings, channel: dict[str, Any], *, topic: str, reason: str, filters: Sequence[str]
) -> dict[str, Any]:
    """A requested Subscription to one of our topics, with one filter-criteria extension per filter."""
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": reason,
        "criteria": topic_url(settings.base_url, topic),
        "_criteria": {"extension": [{"url": FILTER_CRITERIA, "valueString": f} for f in filters]},
        "channel": channel,
    }


async def post_subscription(http: httpx.AsyncClient, body: dict[str, Any]) -> str:
    """POST the Subscription to the FHIR API; fails the test unless it was created. Returns its id."""
    created = await http.post("/fhir/Subscription", json=body, headers=FHIR_JSON)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def subscribe_rest_hook(
    http: httpx.AsyncClient,
    settings: Settings,
    url: str,
    *,
    reason: str,
    topic: str = "referral-status",
    filters: Sequence[str] = (RBL_REFERRALS,),
) -> str:
    """Subscribe ``url`` (a rest-hook, full-resource content) to ``topic`` through the FHIR API, with one
    filter per ``filters``; fails the test unless it was created. Returns the Subscription's id."""
    body = subscription_body(settings, rest_hook_channel(url), topic=topic, reason=reason, filters=filters)
    return await post_subscription(http, body)
