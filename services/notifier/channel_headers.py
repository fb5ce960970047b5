"""Channel headers are write-only: a Subscription is answered with each header's value masked.

A subscriber's ``channel.header`` entries ("Authorization: Bearer ...") are kept as sent and used on
every notification, but never answered again, to the owner or the MSCC team: every answer gives each
header's name with its value ``MASKED``. A client that reads a subscription and sends it back (a FHIR
client's ``save()``) sends the masked values: those headers keep their stored values.
"""

from __future__ import annotations

from typing import Any

from shared.fhir import FhirError, Resource
from shared.store import Document

from .resource import render

MASKED = "*****"  # the value every channel header is answered with


def _header_name(header: Any) -> str:
    return str(header).partition(":")[0].strip().lower()


def shown(doc: Document) -> Resource:
    """The stored subscription as answered: ``render``, every channel header's value masked."""
    resource = render(doc)
    channel = resource.get("channel")
    if isinstance(channel, dict) and isinstance(channel.get("header"), list):
        masked = [f"{str(h).partition(':')[0].strip()}: {MASKED}" for h in channel["header"]]
        resource["channel"] = {**channel, "header": masked}
    return resource


def unmasked(data: Resource, current: Document) -> Resource:
    """``data`` with each channel header sent back masked given its stored value again; ``FhirError``
    400 for a masked header the subscription does not have (its value must be sent)."""
    channel = data.get("channel")
    headers = channel.get("header") if isinstance(channel, dict) else None
    if not isinstance(channel, dict) or not isinstance(headers, list):
        return data
    stored_channel = (current.get("resource") or {}).get("channel") or {}
    stored = {_header_name(h): str(h) for h in stored_channel.get("header") or []}
    out: list[Any] = []
    for index, header in enumerate(headers):
        if str(header).partition(":")[2].strip() != MASKED:
            out.append(header)
        elif _header_name(header) in stored:
            out.append(stored[_header_name(header)])
        else:
            raise FhirError(
                400,
                "value",
                f"header {_header_name(header)!r} is sent masked but the subscription has no such header: "
                "send its value",
                expression=[f"Subscription.channel.header[{index}]"],
            )
    return {**data, "channel": {**channel, "header": out}}
