"""Deterministic ids: the same business identifier always gives the same resource id.

Re-sending or re-mapping a message then converges on the same resources instead of duplicating them.
"""

from __future__ import annotations

import uuid

# A fixed namespace for this hub's name-based (version 5) UUIDs. Never change it: ids depend on it.
NAMESPACE = uuid.UUID("5f0c2f8e-6b0a-4c39-9d59-3d2f1f6c8a11")


def resource_id(resource_type: str, system: str, value: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{resource_type}|{system}|{value}"))


def identifier_key(resource_type: str, system: str, value: str) -> str:
    return f"{resource_type}|{system}|{value}"
