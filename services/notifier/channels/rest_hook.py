"""The FHIR rest-hook channel: a signed notification Bundle POSTed to the subscriber's ``https://`` URL.

Sent with aiohttp, on the process's one session. A new subscription gets a ``handshake`` Bundle first;
its 2xx makes the subscription "active". Every POST carries the channel's own headers, then the hub's:
Content-Type, the subscription id, the event id and number (events only) and the HMAC signature of the
body.

Outcomes: 2xx delivered; 429 and 503 retried after the receiver's ``Retry-After``; any other status (3xx
are not followed: a redirect could lead anywhere), a timeout, or a connection that fails or closes is
retried with backoff, and counts as an attempt. Nothing a receiver does is a permanent refusal here.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import datetime

import aiohttp

from shared.fhir import FHIR_JSON, Resource
from shared.store import Document

from ..endpoints import EndpointPolicy, Resolve, check_rest_hook
from ..model import Delivery, PayloadContent, RestHook, SendResult, Subscription
from ..notification import StatusView, notification_bundle, stable_uuid
from ..resource import _channel
from ..retry import parse_retry_after
from ..signing import EVENT_ID_HEADER, EVENT_NUMBER_HEADER, SIGNATURE_HEADER, SUBSCRIPTION_HEADER, sign
from .base import Answer, Needs, Payload, Sender, Transport, Verdict

ERROR_BODY_BYTES = 300
MAX_ANSWER_BYTES = 64 * 1024


def elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def body(bundle: Resource) -> bytes:
    """A Bundle as compact UTF-8 JSON: the bytes the signature is computed over."""
    return json.dumps(bundle, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


async def post(
    session: aiohttp.ClientSession, url: str, data: bytes, headers: dict[str, str], timeout_s: float
) -> Answer:
    """One POST, never following redirects; every failure of the exchange is an ``Answer`` with ``failure``."""
    started = time.perf_counter()
    try:
        async with session.post(
            url, data=data, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s), allow_redirects=False
        ) as response:
            status = response.status
            if 200 <= status < 300:
                # Read a small answer so the connection is reused; a large one is not read (the
                # connection is closed instead): a receiver cannot make the hub buffer megabytes.
                await response.content.read(MAX_ANSWER_BYTES)
                return Answer(str(status), elapsed_ms(started))
            text = await response.content.read(ERROR_BODY_BYTES)
            return Answer(str(status), elapsed_ms(started), text, dict(response.headers), response.reason or "")
    except TimeoutError:
        return Answer("timeout", elapsed_ms(started), failure=f"no answer within {timeout_s:g} s")
    except aiohttp.ServerDisconnectedError as exc:
        return Answer("connection", elapsed_ms(started), failure=f"the receiver closed the connection: {exc}")
    except aiohttp.ClientConnectorError as exc:
        reason = str(exc.os_error) or str(exc)
        return Answer("connection", elapsed_ms(started), failure=f"cannot connect to {exc.host}: {reason}")
    except (aiohttp.ClientError, OSError) as exc:
        return Answer("connection", elapsed_ms(started), failure=f"{type(exc).__name__}: {exc}")


def judge(answer: Answer, now: datetime) -> SendResult:
    """An HTTP answer as the outcome of the attempt (see the module's docstring)."""
    if answer.failure is not None:
        return SendResult(False, answer.code, answer.latency_ms, answer.failure)
    status = int(answer.code)
    if 200 <= status < 300:
        return SendResult(True, answer.code, answer.latency_ms)
    text = answer.body.decode("utf-8", errors="replace")
    retry_after = parse_retry_after(answer.headers.get("Retry-After"), now) if status in (429, 503) else None
    reason = f"HTTP {status} {answer.reason}".strip()
    return SendResult(False, answer.code, answer.latency_ms, f"{reason}: {text.strip()}"[:500], retry_after)


class RestHookSender:
    """POSTs notification bodies with the shared session and judges the answer; never follows redirects."""

    def __init__(self, session: aiohttp.ClientSession, clock: Callable[[], datetime]) -> None:
        self._session = session
        self._clock = clock

    async def post(self, url: str, data: bytes, headers: dict[str, str], timeout_s: float) -> SendResult:
        return judge(await post(self._session, url, data, headers, timeout_s), self._clock())


class RestHookConnection:
    """The shared session, bound to one subscription's URL (closing it closes nothing: the pool is shared)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, timeout_s: float) -> None:
        self._session = session
        self._url = url
        self._timeout_s = timeout_s

    async def send(self, payload: Payload) -> Answer:
        return await post(self._session, self._url, payload.body, dict(payload.headers), self._timeout_s)

    async def close(self) -> None:
        return None


class RestHookChannel:
    code = "rest-hook"
    handshake_first = True

    def parse(self, element: Resource, trust: str) -> RestHook:
        # The element is read by the Subscription parser's channel checks (headers, payload content).
        config = _channel({"channel": element}, trust)
        if not isinstance(config, RestHook):
            raise TypeError(f"a rest-hook channel element was read as {config.kind}")
        return config

    async def validate_endpoint(
        self, config: RestHook, endpoint: str, policy: EndpointPolicy, resolve: Resolve
    ) -> RestHook:
        await check_rest_hook(config.endpoint, policy, resolve)
        return config

    def from_doc(self, doc: Document) -> RestHook:
        return RestHook(doc["endpoint"], tuple((str(n), str(v)) for n, v in doc["headers"]), doc["content"])

    def content(self, config: RestHook) -> PayloadContent:
        return config.content

    def needs(self, config: RestHook) -> Needs:
        return "focus" if config.content == "full-resource" else "nothing"

    def handshake(self, config: RestHook, subscription: Subscription, sender: Sender) -> Payload:
        view = StatusView(subscription.id, subscription.spec.topic, "requested", subscription.events_since_start)
        bundle = notification_bundle(
            view, sender.base_url, "handshake", [], {}, config.content, sender.now, str(uuid.uuid4())
        )
        return self._signed(config, subscription, body(bundle), {})

    def prepare(
        self,
        config: RestHook,
        subscription: Subscription,
        delivery: Delivery,
        resources: dict[str, Resource],
        sender: Sender,
    ) -> Payload:
        view = StatusView(subscription.id, subscription.spec.topic, "active", subscription.events_since_start)
        bundle = notification_bundle(
            view,
            sender.base_url,
            "event-notification",
            [delivery],
            resources,
            config.content,
            sender.now,
            stable_uuid(delivery.event_id),
        )
        event = {EVENT_ID_HEADER: delivery.event_id, EVENT_NUMBER_HEADER: str(delivery.event_number)}
        return self._signed(config, subscription, body(bundle), event)

    @staticmethod
    def _signed(config: RestHook, subscription: Subscription, data: bytes, extra: dict[str, str]) -> Payload:
        headers = dict(config.headers)
        headers.update(extra)
        headers["Content-Type"] = FHIR_JSON
        headers[SUBSCRIPTION_HEADER] = subscription.id
        headers[SIGNATURE_HEADER] = sign(data, subscription.secret)
        return Payload(data, headers)

    def connect(self, config: RestHook, transport: Transport, timeout_s: float) -> RestHookConnection:
        return RestHookConnection(transport.session, config.endpoint, timeout_s)

    def interpret(self, answer: Answer, payload: Payload, now: datetime) -> Verdict:
        return Verdict(judge(answer, now))


REST_HOOK = RestHookChannel()
