"""Names from the Subscriptions R5 Backport IG (STU 1.1) and the hub's own additions to it.

The backport's extensions and profiles are used as published; the hub's additions (the MLLP channel type,
the secret extension, the event detail extension) live under the hub's own base URL and are documented
in docs/notifications.md.
"""

from __future__ import annotations

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
SUBSCRIPTION_PROFILE = BACKPORT + "backport-subscription"
NOTIFICATION_PROFILE = BACKPORT + "backport-subscription-notification-r4"
STATUS_PROFILE = BACKPORT + "backport-subscription-status-r4"
FILTER_CRITERIA = BACKPORT + "backport-filter-criteria"
PAYLOAD_CONTENT = BACKPORT + "backport-payload-content"
HEARTBEAT_PERIOD = BACKPORT + "backport-heartbeat-period"
TIMEOUT = BACKPORT + "backport-timeout"
MAX_COUNT = BACKPORT + "backport-max-count"
CHANNEL_TYPE = BACKPORT + "backport-channel-type"
TOPIC_CANONICAL = BACKPORT + "capabilitystatement-subscriptiontopic-canonical"
STATUS_OPERATION = "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status"
EVENTS_OPERATION = "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-events"

PAYLOAD_CONTENTS = ("empty", "id-only", "full-resource")
FHIR_PAYLOAD_TYPES = ("application/fhir+json", "application/json")
HL7V2_PAYLOAD_TYPES = ("x-application/hl7-v2+er7", "application/hl7-v2")


def hub_url(base_url: str, kind: str, name: str) -> str:
    """A canonical URL of the hub's own (``{base}/fhir/{kind}/{name}``): topics, extensions, code systems."""
    return f"{base_url.rstrip('/')}/fhir/{kind}/{name}"


def channel_type_system(base_url: str) -> str:
    """The code system of the hub's extra channel type (``mllp``), carried in ``backport-channel-type``."""
    return hub_url(base_url, "CodeSystem", "notification-channel-type")


def secret_extension(base_url: str) -> str:
    """Optional on create/update: the HMAC secret the subscriber chose (never returned)."""
    return hub_url(base_url, "StructureDefinition", "subscription-secret")


def event_detail_extension(base_url: str) -> str:
    """On a ``notification-event`` parameter: what kind of change it was (kind, step, SLA event)."""
    return hub_url(base_url, "StructureDefinition", "notification-event-detail")
