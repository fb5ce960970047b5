"""Notification channels: the protocol (``base``), the registry of type codes, and the hub's channels.

Adding a channel is one module implementing ``Channel`` and one ``register`` line below (or, for a
channel kept outside this package, a ``register`` call at start-up).
"""

from __future__ import annotations

from .base import Answer, Channel, ChannelConfig, Connection, Needs, Payload, Sender, Transport, Verdict
from .mllp import MLLP, MllpLink
from .registry import channel, channel_for, codes, config_from_doc, register, requested_code, unregister
from .rest_hook import REST_HOOK, RestHookSender

register(REST_HOOK)
register(MLLP)

__all__ = [
    "Answer",
    "Channel",
    "ChannelConfig",
    "Connection",
    "MllpLink",
    "Needs",
    "Payload",
    "RestHookSender",
    "Sender",
    "Transport",
    "Verdict",
    "channel",
    "channel_for",
    "codes",
    "config_from_doc",
    "register",
    "requested_code",
    "unregister",
]
