"""Which senders may send which messages: per-sender allow-lists, loaded from a JSON file.

File format (``MSCC_SENDERS_FILE``)::

    {"default": {"message_types": ["*"], "processing_ids": ["P", "T", "D"]},
     "senders": [{"facility": "RBL", "application": "*",
                  "message_types": ["ADT^A01", "ADT^A08", "REF^*"], "processing_ids": ["P"]}]}

A sender is matched by MSH-4 (sending facility, first component) and MSH-3 (``"*"`` matches any).
``message_types`` entries are ``CODE^EVENT``, ``CODE^*`` or ``*``. Without a file every type is allowed.
A message outside its sender's list is rejected (AR) with HL7 table 0357 code 200, 201 or 202.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .header import (
    UNSUPPORTED_EVENT,
    UNSUPPORTED_MESSAGE_TYPE,
    UNSUPPORTED_PROCESSING_ID,
    MessageHeader,
    Rejection,
)


@dataclass(frozen=True)
class SenderRule:
    facility: str = "*"
    application: str = "*"
    message_types: tuple[str, ...] = ("*",)
    processing_ids: tuple[str, ...] = ("P", "T", "D")

    def matches(self, header: MessageHeader) -> bool:
        return self.facility in ("*", header.sending_facility) and self.application in (
            "*",
            header.sending_application,
        )

    def check(self, header: MessageHeader) -> None:
        """Raise ``Rejection`` when this rule does not allow ``header``'s type or processing id."""
        who = f"{header.sending_application or '?'}@{header.sending_facility or '?'}"
        if header.processing_id and header.processing_id not in self.processing_ids:
            raise Rejection(
                UNSUPPORTED_PROCESSING_ID,
                f"processing id {header.processing_id!r} (MSH-11) is not accepted from {who}; "
                f"allowed: {', '.join(self.processing_ids)}",
                location="MSH-11",
            )
        allowed = self.message_types
        code, event = header.message_code, header.trigger_event
        if "*" in allowed or f"{code}^*" in allowed or f"{code}^{event}" in allowed or (not event and code in allowed):
            return
        code_known = any(t.split("^", 1)[0] == code for t in allowed)
        raise Rejection(
            UNSUPPORTED_EVENT if code_known else UNSUPPORTED_MESSAGE_TYPE,
            f"message type {header.message_type or '(empty)'} is not accepted from {who}; "
            f"allowed: {', '.join(allowed)}",
            location="MSH-9",
        )


@dataclass(frozen=True)
class SenderPolicy:
    default: SenderRule = field(default_factory=SenderRule)
    senders: tuple[SenderRule, ...] = ()

    def rule_for(self, header: MessageHeader) -> SenderRule:
        for rule in self.senders:
            if rule.matches(header):
                return rule
        return self.default

    def check(self, header: MessageHeader) -> None:
        self.rule_for(header).check(header)


def _rule(data: dict[str, Any], base: SenderRule) -> SenderRule:
    return SenderRule(
        facility=str(data.get("facility", base.facility)),
        application=str(data.get("application", base.application)),
        message_types=tuple(data.get("message_types", base.message_types)),
        processing_ids=tuple(data.get("processing_ids", base.processing_ids)),
    )


def load_policy(path: Path | None) -> SenderPolicy:
    """Read the senders file; ``ValueError`` names the file and what is wrong with it."""
    if path is None:
        return SenderPolicy()
    try:
        data = json.loads(path.read_text())
        default = _rule(data.get("default", {}), SenderRule())
        senders = tuple(_rule(item, default) for item in data.get("senders", []))
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise ValueError(f"MSCC_SENDERS_FILE {path}: {exc}") from exc
    return SenderPolicy(default, senders)
