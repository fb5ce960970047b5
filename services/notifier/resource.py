"""The FHIR Subscription resource (R4, backport profile) in and out of the notifier's ``SubscriptionSpec``.

``parse`` checks everything that needs no network (validation with fhir.resources R4B, the topic, the
filters, the channel) and raises ``FhirError`` 400 with a FHIRPath expression for the first problem;
the endpoint's host is checked afterwards (``endpoints``), since that needs DNS. ``render`` gives the
resource back as stored, with the server's id, meta, status and error.
"""

from __future__ import annotations

import copy
import re
from datetime import datetime
from typing import Any

from shared.fhir import FhirError, Resource, validate
from shared.nhs import looks_like_ods_code
from shared.search import CONTROL, ODS_SYSTEM, parse_search
from shared.store import Document

from .backport import (
    CHANNEL_TYPE,
    FHIR_PAYLOAD_TYPES,
    FILTER_CRITERIA,
    HEARTBEAT_PERIOD,
    HL7V2_PAYLOAD_TYPES,
    MAX_COUNT,
    PAYLOAD_CONTENT,
    PAYLOAD_CONTENTS,
    SUBSCRIPTION_PROFILE,
    TIMEOUT,
    secret_extension,
)
from .model import Channel, Filter, Mllp, PayloadContent, RestHook, Status, SubscriptionSpec, instant, utc
from .topics import TOPICS, topic_of, topic_url

MAX_TIMEOUT_S = 60.0
MIN_SECRET_LENGTH = 32
# Headers the hub sets on every notification: a subscription's channel.header may not replace them.
RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "host", "x-signature", "x-event-id", "x-event-number", "x-subscription-id"}
)
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
MLLP_HEADERS = {"msh-5": "receiving_application", "msh-6": "receiving_facility"}


def _bad(diagnostics: str, expression: str, code: str = "value") -> FhirError:
    return FhirError(400, code, diagnostics, expression=[expression])


def _extensions(element: Any, url: str) -> list[dict[str, Any]]:
    if not isinstance(element, dict):
        return []
    return [e for e in element.get("extension") or [] if isinstance(e, dict) and e.get("url") == url]


def _one_value(element: Any, url: str, key: str, expression: str) -> Any:
    found = _extensions(element, url)
    if len(found) > 1:
        raise _bad(f"extension {url} is given more than once", expression)
    return found[0].get(key) if found else None


# The filter parameters that name a subscription's trust. A data-quality Task names the referring trust
# as its owner and the MSCC service (the hub's own organisation) as its requester: so the MSCC team
# follows every Task, including those of referrals that name no trust.
TRUST_PARAMETERS = {"ServiceRequest": ("requester",), "Task": ("owner", "requester")}


def _trust_of(filters: tuple[Filter, ...]) -> str:
    """The ODS code of the requester filter(s); every subscription names exactly one trust."""
    codes: set[str] = set()
    for item in filters:
        if item.resource_type not in TRUST_PARAMETERS:
            continue
        for name, value in item.params:
            if name in TRUST_PARAMETERS[item.resource_type]:
                codes.add(value.split("/", 1)[1] if value.startswith("Organization/") else value)
            elif name == "requester:identifier":
                system, _, code = value.rpartition("|")
                if system in ("", ODS_SYSTEM):
                    codes.add(code)
    expression = "Subscription.criteria.extension"
    if not codes:
        raise _bad(
            "a subscription needs a filter on the requesting organisation, e.g. "
            "ServiceRequest?requester=Organization/RBL (backport-filter-criteria): notifications carry "
            "patient data and go only to the trust that referred the patient",
            expression,
            "required",
        )
    if len(codes) > 1:
        raise _bad(
            f"the requester filters name several organisations ({', '.join(sorted(codes))}): use one", expression
        )
    code = codes.pop().upper()
    if not looks_like_ods_code(code):
        raise _bad(f"{code!r} does not look like an ODS organisation code", expression)
    return code


def _filters(data: Resource, topic_code: str) -> tuple[Filter, ...]:
    topic = TOPICS[topic_code]
    out: list[Filter] = []
    for index, ext in enumerate(_extensions(data.get("_criteria"), FILTER_CRITERIA)):
        expression = f"Subscription.criteria.extension[{index}]"
        value = ext.get("valueString")
        if not isinstance(value, str):
            raise _bad("backport-filter-criteria takes valueString, e.g. ServiceRequest?requester=...", expression)
        try:
            item = Filter.parse(value)
        except ValueError as exc:
            raise _bad(str(exc), expression) from exc
        if item.resource_type not in topic.filter_types:
            raise _bad(
                f"topic {topic_code} filters on {' or '.join(topic.filter_types)}, not {item.resource_type}",
                expression,
            )
        if any(name in CONTROL for name, _ in item.params):
            raise _bad("_count and _offset have no meaning in a filter", expression)
        try:
            parse_search(item.resource_type, list(item.params))
        except FhirError as exc:
            raise _bad(f"filter {value!r}: {exc}", expression) from exc
        out.append(item)
    return tuple(out)


def _headers(channel: Resource) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for index, raw in enumerate(channel.get("header") or []):
        expression = f"Subscription.channel.header[{index}]"
        name, sep, value = str(raw).partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not _HEADER_NAME.match(name) or any(c in value for c in "\r\n\x00"):
            raise _bad(f"header {raw!r} is not 'Name: value' (one line)", expression)
        if name.lower() in RESERVED_HEADERS:
            raise _bad(f"header {name} is set by the hub on every notification and cannot be replaced", expression)
        out.append((name, value))
    return tuple(out)


def _content(channel: Resource) -> PayloadContent:
    content = _one_value(channel.get("_payload"), PAYLOAD_CONTENT, "valueCode", "Subscription.channel.payload")
    payload = channel.get("payload")
    if payload is None:
        if content not in (None, "empty"):
            raise _bad(
                "payload content id-only or full-resource needs channel.payload application/fhir+json",
                "Subscription.channel.payload",
            )
        return "empty"
    if payload not in FHIR_PAYLOAD_TYPES:
        raise _bad(f"payload {payload!r} is not supported: use application/fhir+json", "Subscription.channel.payload")
    if content is None:
        return "id-only"  # the least data: a receiver that wants the resource asks for full-resource
    if content not in PAYLOAD_CONTENTS:
        raise _bad(
            f"payload content {content!r} is not one of {', '.join(PAYLOAD_CONTENTS)}",
            "Subscription.channel.payload.extension",
        )
    result: PayloadContent = content
    return result


def _channel(data: Resource, trust: str) -> Channel:
    """The channel; an MLLP channel's host and port are filled in once its endpoint is checked."""
    channel = data["channel"]
    kind = _one_value(channel.get("_type"), CHANNEL_TYPE, "valueCoding", "Subscription.channel.type")
    endpoint = channel.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise _bad("channel.endpoint is required", "Subscription.channel.endpoint", "required")
    if isinstance(kind, dict) and kind.get("code") == "mllp":
        if channel.get("type") not in (None, "message"):
            raise _bad(
                "the MLLP channel is channel.type 'message' with backport-channel-type mllp",
                "Subscription.channel.type",
            )
        if channel.get("payload") not in (None, *HL7V2_PAYLOAD_TYPES):
            raise _bad(
                "the MLLP channel sends HL7v2 ER7: payload x-application/hl7-v2+er7 or none",
                "Subscription.channel.payload",
            )
        fields = {"receiving_application": "", "receiving_facility": trust}
        for name, value in _headers(channel):
            if name.lower() not in MLLP_HEADERS:
                raise _bad(
                    f"the MLLP channel takes headers MSH-5 and MSH-6 only, not {name}", "Subscription.channel.header"
                )
            fields[MLLP_HEADERS[name.lower()]] = value
        return Mllp("", 0, fields["receiving_application"], fields["receiving_facility"])
    if kind is not None:
        raise _bad(
            f"channel type {kind!r} is not supported: rest-hook, or backport-channel-type mllp",
            "Subscription.channel.type",
            "not-supported",
        )
    if channel.get("type") != "rest-hook":
        raise _bad(
            f"channel type {channel.get('type')!r} is not supported: rest-hook, or backport-channel-type mllp",
            "Subscription.channel.type",
            "not-supported",
        )
    return RestHook(endpoint, _headers(channel), _content(channel))


def _channel_options(channel: Resource) -> float | None:
    where = "Subscription.channel.extension"
    if _extensions(channel, HEARTBEAT_PERIOD):
        raise _bad("heartbeat notifications are not supported (backport-heartbeat-period)", where, "not-supported")
    max_count = _one_value(channel, MAX_COUNT, "valuePositiveInt", where)
    if max_count not in (None, 1):
        raise _bad("each notification carries one event (backport-max-count 1)", where, "not-supported")
    timeout = _one_value(channel, TIMEOUT, "valueUnsignedInt", where)
    if timeout is None:
        return None
    if not isinstance(timeout, int) or not 1 <= timeout <= MAX_TIMEOUT_S:
        raise _bad(f"backport-timeout must be 1 to {MAX_TIMEOUT_S:.0f} seconds", where)
    return float(timeout)


def _status(data: Resource) -> Status:
    status = data.get("status")
    if status == "off":
        return "off"
    if status in ("requested", "active", None):
        return "requested"
    if status == "error":
        return "error"  # sent back as read: no change asked for
    raise _bad(f"status {status!r} is not requested, active, error or off", "Subscription.status")


def _end(data: Resource) -> datetime | None:
    end = data.get("end")
    if end is None:
        return None
    try:
        return utc(datetime.fromisoformat(str(end).replace("Z", "+00:00")))
    except ValueError as exc:
        raise _bad(f"end {end!r} is not an instant", "Subscription.end") from exc


def _secret(data: Resource, base_url: str) -> str | None:
    secret = _one_value(data, secret_extension(base_url), "valueString", "Subscription.extension")
    if secret is None:
        return None
    if not isinstance(secret, str) or len(secret) < MIN_SECRET_LENGTH:
        raise _bad(f"the subscription secret must be at least {MIN_SECRET_LENGTH} characters", "Subscription.extension")
    return secret


def parse(data: Resource, base_url: str) -> SubscriptionSpec:
    """The subscription ``data`` asks for; ``FhirError`` 400 names the first element that is wrong."""
    validate(data, "Subscription")
    criteria = str(data.get("criteria", ""))
    topic = topic_of(criteria, base_url)
    if topic is None:
        known = ", ".join(topic_url(base_url, code) for code in TOPICS)
        raise _bad(f"criteria {criteria!r} is not a topic of this server; topics: {known}", "Subscription.criteria")
    filters = _filters(data, topic.code)
    trust = _trust_of(filters)
    channel = _channel(data, trust)
    kept = {k: v for k, v in data.items() if k not in ("id", "meta", "status", "error", "text")}
    if isinstance(kept.get("extension"), list):
        kept["extension"] = [e for e in kept["extension"] if e.get("url") != secret_extension(base_url)]
        if not kept["extension"]:
            del kept["extension"]
    return SubscriptionSpec(
        topic=topic.code,
        filters=filters,
        channel=channel,
        trust=trust,
        reason=str(data.get("reason", "")),
        timeout_s=_channel_options(data["channel"]),
        end=_end(data),
        requested_status=_status(data),
        secret=_secret(data, base_url),
        resource=kept,
    )


def render(doc: Document) -> Resource:
    """The stored subscription as a FHIR Subscription: what the subscriber sent, with id, meta, status
    and error from the server (the secret is never included)."""
    resource: Resource = copy.deepcopy(doc.get("resource") or {})
    resource["resourceType"] = "Subscription"
    resource["id"] = doc["_id"]
    profiles = [SUBSCRIPTION_PROFILE]
    resource["meta"] = {
        "versionId": str(doc.get("version", 1)),
        "lastUpdated": instant(doc["updated_at"]),
        "profile": profiles,
    }
    resource["status"] = doc["status"]
    resource.pop("error", None)
    if doc.get("error"):
        resource["error"] = doc["error"]
    ordered: Resource = {k: resource[k] for k in ("resourceType", "id", "meta") if k in resource}
    ordered.update({k: v for k, v in resource.items() if k not in ordered})
    return ordered
