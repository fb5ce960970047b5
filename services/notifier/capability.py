"""The Subscription entry of the CapabilityStatement: what the notifier supports, and nothing more."""

from __future__ import annotations

from typing import Any

from .backport import (
    EVENTS_OPERATION,
    STATUS_OPERATION,
    SUBSCRIPTION_PROFILE,
    TOPIC_CANONICAL,
    channel_type_system,
    hub_url,
    secret_extension,
)
from .topics import TOPICS, topic_url


def subscription_capability(base_url: str) -> dict[str, Any]:
    """``rest.resource`` for Subscription: interactions, the topics (backport extension), operations."""
    return {
        "extension": [{"url": TOPIC_CANONICAL, "valueCanonical": topic_url(base_url, code)} for code in TOPICS],
        "type": "Subscription",
        "profile": SUBSCRIPTION_PROFILE,
        "documentation": (
            "R4 Subscriptions Backport (STU 1.1). Topics (criteria): "
            + "; ".join(f"{topic_url(base_url, t.code)}: {t.description}" for t in TOPICS.values())
            + " Filters (backport-filter-criteria, AND): FHIR search strings on the topic's resource types; "
            "one requester filter (ServiceRequest?requester=Organization/<ODS>) is required and a trust may "
            "subscribe to its own referrals only. Channels: rest-hook (https; payload application/fhir+json with "
            "backport-payload-content empty, id-only (default) or full-resource; channel.header sent as given; "
            "backport-timeout 1-60 s), and HL7v2 over MLLP: channel.type message with backport-channel-type "
            f"{channel_type_system(base_url)}#mllp, endpoint mllp://host:port, headers 'MSH-5: ...' and "
            "'MSH-6: ...', one RRI^I12 per event. Not supported: backport-heartbeat-period, backport-max-count "
            "above 1, websocket, email, sms. Status: requested until the handshake succeeds (rest-hook), then "
            "active; error while an event is dead-lettered; off when the subscriber sets it. Every notification "
            "is signed: X-Signature: sha256=<HMAC-SHA256 hex of the body> with the subscription's secret (the "
            f"{secret_extension(base_url)} extension, or generated and returned once in X-Subscription-Secret), "
            "and carries X-Event-Id (subscription id:event number), stable across retries."
        ),
        "interaction": [
            {"code": "create"},
            {"code": "read"},
            {"code": "update"},
            {"code": "delete"},
            {"code": "search-type"},
        ],
        "versioning": "versioned",
        "readHistory": False,
        "updateCreate": False,
        "searchParam": [{"name": "_id", "type": "token"}, {"name": "status", "type": "token"}],
        "operation": [
            {"name": "status", "definition": STATUS_OPERATION},
            {"name": "events", "definition": EVENTS_OPERATION},
            {
                "name": "redeliver",
                "definition": hub_url(base_url, "OperationDefinition", "Subscription-redeliver"),
                "documentation": "POST Subscription/{id}/$redeliver[?eventNumber=n]: dead-lettered events are "
                "queued again, in order; the subscription leaves error (docs/notifications.md)",
            },
            {
                "name": "skip",
                "definition": hub_url(base_url, "OperationDefinition", "Subscription-skip"),
                "documentation": "POST Subscription/{id}/$skip[?eventNumber=n]: dead-lettered events are given "
                "up, so later events flow; the receiver sees the gap and may use $events",
            },
        ],
    }
