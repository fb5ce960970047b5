"""A FHIR Subscription read with its channel checked by the channel's own module.

``resource.parse`` reads everything but the channel's own settings (topic, filters, trust, the channel
extensions every channel shares: timeout, heartbeat, max count); the channel element is read by the
channel registered for its type code, so a new channel needs no change to the Subscription parser. To
that end the parser is given the subscription with a neutral channel (the shared extensions only), and
the stored resource keeps the channel as the subscriber sent it.

Every failure is a ``FhirError`` 400 (OperationOutcome) naming the element: an unknown channel type
(not-supported, ``Subscription.channel.type``), the channel's own settings, or a refused endpoint
(``Subscription.channel.endpoint``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from shared.fhir import FhirError, Resource, validate

from ..endpoints import EndpointPolicy, EndpointRefused, Resolve
from ..model import SubscriptionSpec
from ..resource import parse
from .base import Channel
from .registry import channel_for

# Stands in for the subscriber's channel while the rest of the Subscription is read: never stored,
# never called (``.invalid`` cannot resolve).
_NEUTRAL = {"type": "rest-hook", "endpoint": "https://channel.invalid/"}


def parse_subscription(data: Resource, base_url: str) -> tuple[SubscriptionSpec, Channel[Any]]:
    """The subscription ``data`` asks for, its channel read by the registered channel; and that channel."""
    validate(data, "Subscription")  # as sent, channel included: the parser below sees the neutral one
    element = data.get("channel")
    channel = channel_for(element)
    assert isinstance(element, dict)  # channel_for refuses anything else
    neutral: dict[str, Any] = dict(_NEUTRAL)
    if "extension" in element:
        neutral["extension"] = element["extension"]
    spec = parse({**data, "channel": neutral}, base_url)
    config = channel.parse(element, spec.trust)
    return dataclasses.replace(spec, channel=config, resource={**spec.resource, "channel": element}), channel


async def check_endpoint(
    spec: SubscriptionSpec, channel: Channel[Any], policy: EndpointPolicy, resolve: Resolve
) -> SubscriptionSpec:
    """The spec with its endpoint checked (and, for MLLP, host and port filled in) by its channel."""
    endpoint = str((spec.resource.get("channel") or {}).get("endpoint", ""))
    try:
        config = await channel.validate_endpoint(spec.channel, endpoint, policy, resolve)
    except EndpointRefused as exc:
        raise FhirError(400, "value", str(exc), expression=["Subscription.channel.endpoint"]) from exc
    return dataclasses.replace(spec, channel=config)
