"""Channel type codes to channels: the one place a new channel is registered.

A subscription names its channel by FHIR ``channel.type`` (``rest-hook``) or, for a channel FHIR does not
define, by the code of the backport-channel-type extension on ``channel._type`` (``mllp``). A code that
is not registered is refused at subscription time (``FhirError`` 400 not-supported), and a stored
subscription whose channel is no longer registered cannot be read (``KeyError``: its lane sets it aside).
"""

from __future__ import annotations

from typing import Any

from shared.fhir import FhirError, Resource
from shared.store import Document

from ..backport import CHANNEL_TYPE
from .base import Channel, ChannelConfig

_CHANNELS: dict[str, Channel[Any]] = {}
_WHERE = "Subscription.channel.type"


def register(channel: Channel[Any]) -> None:
    """Make ``channel`` available under its code (a later registration of the same code replaces it)."""
    _CHANNELS[channel.code] = channel


def unregister(code: str) -> None:
    """Forget the channel registered under ``code`` (nothing happens if there is none)."""
    _CHANNELS.pop(code, None)


def codes() -> list[str]:
    return sorted(_CHANNELS)


def channel(code: str) -> Channel[Any]:
    """The channel registered under ``code``; ``KeyError`` if there is none."""
    try:
        return _CHANNELS[code]
    except KeyError:
        raise KeyError(f"no notification channel is registered for {code!r}") from None


def requested_code(element: Resource) -> str | None:
    """The channel type a Subscription's ``channel`` element asks for: the backport-channel-type code if
    the extension is there (None if it carries no code), else ``channel.type``; ``FhirError`` 400 if the
    extension is given twice."""
    extensions = [
        e
        for e in (element.get("_type") or {}).get("extension") or []
        if isinstance(e, dict) and e.get("url") == CHANNEL_TYPE
    ]
    if len(extensions) > 1:
        raise FhirError(400, "value", f"extension {CHANNEL_TYPE} is given more than once", expression=[_WHERE])
    if extensions:
        coding = extensions[0].get("valueCoding")
        code = coding.get("code") if isinstance(coding, dict) else None
        return code if isinstance(code, str) else None
    kind = element.get("type")
    return kind if isinstance(kind, str) else None


def channel_for(element: Any) -> Channel[Any]:
    """The registered channel a Subscription's ``channel`` element asks for; ``FhirError`` 400
    (not-supported) naming the registered codes when there is none."""
    if not isinstance(element, dict):
        raise FhirError(400, "required", "channel is required", expression=["Subscription.channel"])
    code = requested_code(element)
    if code is None or code not in _CHANNELS:
        raise FhirError(
            400,
            "not-supported",
            f"channel type {code or '(none)'!r} is not supported: the hub sends through {', '.join(codes())} "
            "(named by channel.type, or by the code of the backport-channel-type extension on it)",
            expression=[_WHERE],
        )
    return _CHANNELS[code]


def config_from_doc(doc: Document) -> ChannelConfig:
    """A stored ``channel`` sub-document as its channel's settings; ``KeyError`` for an unknown kind."""
    config: ChannelConfig = channel(str(doc["kind"])).from_doc(doc)
    return config
