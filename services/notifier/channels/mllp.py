"""The hub's HL7v2 channel: one RRI^I12 per event over MLLP to ``mllp://host:port`` (message: ``rri``).

HL7v2 has no handshake: a subscription is "active" from the start. A lane keeps one connection open for
its events; it is closed on any error (the next attempt reconnects) and when the lane ends.

The ACK decides: AA (or CA) delivered; AE (CE) refused for its content, dead-lettered at once with the
receiver's reason (sending the same message again cannot succeed); AR (CR) retried; a reply that is not
an ACK, or acknowledges another message, is retried on a fresh connection; no reply is retried.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime

from shared.fhir import Resource
from shared.mllp import MllpClient, MllpError
from shared.store import Document

from ..endpoints import EndpointPolicy, EndpointRefused, Resolve, allowed_addresses, check_mllp, system_resolve
from ..model import Delivery, Mllp, PayloadContent, SendResult, Subscription
from ..payload import patient_reference
from ..resource import _channel
from .base import Answer, Needs, Payload, Sender, Transport, Verdict
from .rri import build_message, control_id, read_ack


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


class MllpLink:
    """One MLLP connection for one lane: opened on first use, kept for the lane's next events, closed on
    any failure of the exchange (the next attempt reconnects) and when the lane ends.

    Each connection resolves the host again and goes to an address the endpoint policy allows (the
    name may resolve elsewhere than when the subscription was checked); none allowed: a connection
    failure, retried like any other."""

    def __init__(
        self, host: str, port: int, timeout_s: float, policy: EndpointPolicy, resolve: Resolve = system_resolve
    ) -> None:
        self._host = host
        self._port = port
        self._timeout = timeout_s
        self._policy = policy
        self._resolve = resolve
        self._client: MllpClient | None = None

    async def send(self, payload: Payload) -> Answer:
        started = time.perf_counter()
        try:
            if self._client is None:
                address = (await allowed_addresses(self._host, self._port, self._policy, self._resolve))[0]
                self._client = await MllpClient.connect(address, self._port, timeout_s=self._timeout)
            reply = await self._client.send(payload.body)
        except (MllpError, OSError, EndpointRefused) as exc:
            await self.close()
            code = "timeout" if "no reply" in str(exc) else "connection"
            return Answer(code, _elapsed_ms(started), failure=str(exc))
        return Answer("reply", _elapsed_ms(started), reply)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()


class MllpChannel:
    code = "mllp"
    handshake_first = False

    def parse(self, element: Resource, trust: str) -> Mllp:
        # The element is read by the Subscription parser's channel checks (MSH-5/MSH-6 headers); the host
        # and port are filled in by ``validate_endpoint``.
        config = _channel({"channel": element}, trust)
        if not isinstance(config, Mllp):
            raise TypeError(f"an MLLP channel element was read as {config.kind}")
        return config

    async def validate_endpoint(self, config: Mllp, endpoint: str, policy: EndpointPolicy, resolve: Resolve) -> Mllp:
        host, port = await check_mllp(endpoint, policy, resolve)
        return dataclasses.replace(config, host=host, port=port)

    def from_doc(self, doc: Document) -> Mllp:
        return Mllp(doc["host"], int(doc["port"]), doc["receiving_application"], doc["receiving_facility"])

    def content(self, config: Mllp) -> PayloadContent:
        return "id-only"

    def needs(self, config: Mllp) -> Needs:
        return "focus-and-patient"

    def handshake(self, config: Mllp, subscription: Subscription, sender: Sender) -> None:
        return None

    def prepare(
        self,
        config: Mllp,
        subscription: Subscription,
        delivery: Delivery,
        resources: dict[str, Resource],
        sender: Sender,
    ) -> Payload:
        focus = resources.get(delivery.event.focus.reference)
        subject = patient_reference(focus)
        message = build_message(
            delivery,
            config,
            topic=subscription.spec.topic,
            focus=focus,
            patient=resources.get(subject) if subject else None,
            sending_application=sender.sending_application,
            sending_facility=sender.sending_facility,
            now=sender.now,
        )
        return Payload(message, key=control_id(delivery.event_id))

    def connect(self, config: Mllp, transport: Transport, timeout_s: float) -> MllpLink:
        return MllpLink(config.host, config.port, timeout_s, transport.policy)

    def interpret(self, answer: Answer, payload: Payload, now: datetime) -> Verdict:
        latency = answer.latency_ms
        if answer.failure is not None:
            return Verdict(SendResult(False, answer.code, latency, answer.failure))
        try:
            ack = read_ack(answer.body)
        except ValueError as exc:
            return Verdict(SendResult(False, "unreadable", latency, f"the reply is not an ACK: {exc}"), reconnect=True)
        if ack.control_id and ack.control_id != payload.key:
            # Out of step with the receiver: start again on a fresh connection.
            reason = f"ACK for {ack.control_id}, not {payload.key}"
            return Verdict(SendResult(False, ack.code or "?", latency, reason), reconnect=True)
        if ack.code in ("AA", "CA"):
            return Verdict(SendResult(True, ack.code, latency))
        reason = f"{ack.code}: {ack.text or 'no reason given'}"
        return Verdict(SendResult(False, ack.code or "?", latency, reason, permanent=ack.code in ("AE", "CE")))


MLLP = MllpChannel()
