"""The channel protocol: what the delivery lane asks of every way of sending a notification.

A channel (rest-hook, MLLP, ...) is one module with one object implementing ``Channel``, registered
under its type code (``registry``). The lane knows nothing else about it:

- ``parse`` reads the FHIR Subscription's ``channel`` element into the channel's own settings
  (``ChannelConfig``), and ``validate_endpoint`` checks where it points (both at subscription time);
- ``prepare`` builds one notification (``Payload``) for one event, ``handshake`` the first message of a
  new subscription (None: the channel has none and a subscription is active at once);
- ``connect`` opens the lane's ``Connection``, whose ``send`` makes one attempt and returns the
  receiver's raw ``Answer``; it never raises for a receiver's failure (a timeout, a refused connection
  is an ``Answer`` with ``failure`` set);
- ``interpret`` judges the answer: delivered, retried (with the receiver's Retry-After), or dead at once
  (the receiver refused the content itself), as a ``Verdict``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, TypeVar

import aiohttp

from shared.fhir import Resource
from shared.store import Document

from ..endpoints import EndpointPolicy, Resolve
from ..model import Delivery, PayloadContent, SendResult, Subscription

# What a channel's notification is built from, besides the event: nothing, the focus resource version,
# or the focus and the patient it is about.
Needs = Literal["nothing", "focus", "focus-and-patient"]


class ChannelConfig(Protocol):
    """A channel's settings as stored on the subscription (``channel`` sub-document, ``kind`` its code).
    Equal settings compare equal (a frozen dataclass does): a lane whose subscription was updated to other
    settings opens a new connection."""

    @property
    def kind(self) -> str: ...

    @property
    def endpoint(self) -> str: ...

    def to_doc(self) -> Document: ...


ConfigT = TypeVar("ConfigT", bound=ChannelConfig)


@dataclass(frozen=True)
class Sender:
    """Who the hub is, and when it is, for the notifications a lane prepares."""

    base_url: str
    sending_application: str
    sending_facility: str
    now: datetime


@dataclass(frozen=True)
class Payload:
    """One notification ready to send: the bytes, transport metadata (HTTP headers), and the key the
    receiver's answer must carry (MSH-10 for HL7v2; empty when answers carry none)."""

    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    key: str = ""


@dataclass(frozen=True)
class Answer:
    """What the receiver gave back to one attempt, not yet judged. ``failure`` set: no answer at all
    (``code`` "timeout" or "connection"), and ``failure`` says why."""

    code: str
    latency_ms: float
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    reason: str = ""
    failure: str | None = None


@dataclass(frozen=True)
class Verdict:
    """The judged attempt; ``reconnect``: the connection is out of step with the receiver, start again."""

    result: SendResult
    reconnect: bool = False


@dataclass(frozen=True)
class Transport:
    """What connections may use: the process's one aiohttp session (keep-alive pool, guarded resolver),
    the notifier's clock, and the callback host rule a channel opening its own sockets (MLLP) checks
    again at connection time (the default: public addresses only)."""

    session: aiohttp.ClientSession
    clock: Callable[[], datetime]
    policy: EndpointPolicy = field(default_factory=EndpointPolicy)


class Connection(Protocol):
    """One lane's way to its receiver, kept for the lane's events and closed when the lane ends (or when
    a verdict asks to reconnect): a ``send`` after ``close`` opens it again."""

    async def send(self, payload: Payload) -> Answer: ...

    async def close(self) -> None: ...


class Channel(Protocol[ConfigT]):
    """One kind of channel. Every method but ``validate_endpoint`` and the connection is pure."""

    code: str  # the type code: FHIR channel.type, or the backport-channel-type extension's code
    handshake_first: bool  # a new subscription is "requested" until its handshake is answered

    def parse(self, element: Resource, trust: str) -> ConfigT:
        """The channel element as this channel's settings; ``FhirError`` 400 names what is wrong."""
        ...

    async def validate_endpoint(
        self, config: ConfigT, endpoint: str, policy: EndpointPolicy, resolve: Resolve
    ) -> ConfigT:
        """The settings with the endpoint checked (and filled in); ``EndpointRefused`` says why not."""
        ...

    def from_doc(self, doc: Document) -> ConfigT:
        """Settings as stored by ``to_doc``; ``KeyError``/``ValueError`` for a document it did not write."""
        ...

    def content(self, config: ConfigT) -> PayloadContent:
        """How much of the resource ``$events`` shows by default."""
        ...

    def needs(self, config: ConfigT) -> Needs: ...

    def handshake(self, config: ConfigT, subscription: Subscription, sender: Sender) -> Payload | None: ...

    def prepare(
        self,
        config: ConfigT,
        subscription: Subscription,
        delivery: Delivery,
        resources: dict[str, Resource],
        sender: Sender,
    ) -> Payload:
        """One event's notification; any exception means it cannot be built (dead-lettered, not retried)."""
        ...

    def connect(self, config: ConfigT, transport: Transport, timeout_s: float) -> Connection: ...

    def interpret(self, answer: Answer, payload: Payload, now: datetime) -> Verdict: ...
