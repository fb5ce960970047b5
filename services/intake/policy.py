"""Which senders may send which messages: per-sender allow-lists, loaded from a JSON file.

File format (``MSCC_SENDERS_FILE``)::

    {"default": {"message_types": ["*"], "processing_ids": ["P", "T", "D"]},
     "senders": [{"facility": "RBL", "application": "*",
                  "message_types": ["ADT^A01", "ADT^A08", "REF^*"], "processing_ids": ["P"]}]}

A sender is matched by MSH-4 (sending facility, first component) and MSH-3 (``"*"`` matches any).
``ods_code`` (optional) names the organisation a sender is when its MSH-4 is a local name rather than its
ODS code (``{"facility": "ROYALBOLTON", "ods_code": "RBL"}``): its messages are that trust's, and that
trust's clients may post them over HTTP (``trust.py``).
``message_types`` entries are ``CODE^EVENT``, ``CODE^*`` or ``*``. Without a file every type is allowed.
A message outside its sender's list is rejected (AR) with HL7 table 0357 code 200, 201 or 202.

Per listener (``"mllp"``, ``"http"``), a sender may be allowed only from some peer addresses or client
certificates (``origin.py`` says how certificates are named)::

    {"facility": "RBL", "mllp": {"addresses": ["10.20.0.0/16"], "certificates": ["CN=engine.rbl.nhs.uk"]}}

Once any rule (``default`` included) names a listener, every message on that listener must come from
where its rule allows (a sender without its own list has the default's; without one there, nowhere):
otherwise it is rejected (AR, code 207 at MSH-4, kept with the reason). A listener no rule names
accepts any peer, as without a file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .header import (
    APPLICATION_INTERNAL_ERROR,
    UNSUPPORTED_EVENT,
    UNSUPPORTED_MESSAGE_TYPE,
    UNSUPPORTED_PROCESSING_ID,
    MessageHeader,
    Rejection,
)
from .origin import Origin, OriginRule

LISTENERS = ("mllp", "http")


@dataclass(frozen=True)
class SenderRule:
    facility: str = "*"
    application: str = "*"
    message_types: tuple[str, ...] = ("*",)
    processing_ids: tuple[str, ...] = ("P", "T", "D")
    ods_code: str = ""  # the organisation this sender is, when MSH-4 is not its ODS code
    origins: tuple[tuple[str, OriginRule], ...] = ()  # per listener, where this sender may send from

    def matches(self, header: MessageHeader) -> bool:
        return self.facility in ("*", header.sending_facility) and self.application in (
            "*",
            header.sending_application,
        )

    def check(self, header: MessageHeader) -> None:
        """Raise ``Rejection`` when this rule does not allow ``header``'s type or processing id."""
        processing_id = header.processing_id
        if processing_id and processing_id not in self.processing_ids:
            raise Rejection(
                UNSUPPORTED_PROCESSING_ID,
                f"processing id {processing_id!r} (MSH-11) is not accepted from {_who(header)}; "
                f"allowed: {', '.join(self.processing_ids)}",
                location="MSH-11",
            )
        allowed = self.message_types
        if "*" in allowed:  # any type (the default): nothing more of the header to read
            return
        code, event = header.message_code, header.trigger_event
        if f"{code}^*" in allowed or f"{code}^{event}" in allowed or (not event and code in allowed):
            return
        code_known = any(t.split("^", 1)[0] == code for t in allowed)
        raise Rejection(
            UNSUPPORTED_EVENT if code_known else UNSUPPORTED_MESSAGE_TYPE,
            f"message type {header.message_type or '(empty)'} is not accepted from {_who(header)}; "
            f"allowed: {', '.join(allowed)}",
            location="MSH-9",
        )


def _who(header: MessageHeader) -> str:
    """The sender, as a rejection names it: ``MSH-3@MSH-4``."""
    return f"{header.sending_application or '?'}@{header.sending_facility or '?'}"


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

    @cached_property
    def _guarded(self) -> frozenset[str]:
        """The listeners some rule (``default`` included) gives an allow-list."""
        return frozenset(name for rule in (self.default, *self.senders) for name, _ in rule.origins)

    @cached_property
    def _aliased(self) -> tuple[SenderRule, ...]:
        """The sender rules that name an ``ods_code``, in order."""
        return tuple(rule for rule in self.senders if rule.ods_code)

    def check_origin(self, header: MessageHeader, origin: Origin | None) -> None:
        """``Rejection`` (AR) when the listener has an allow-list and ``header``'s sender may not send
        from ``origin``'s address or certificate."""
        if origin is None or origin.listener not in self._guarded:
            return
        allowed = dict(self.rule_for(header).origins).get(origin.listener)
        if allowed is not None and allowed.admits(origin):
            return
        facility = header.sending_facility or "(empty)"
        raise Rejection(
            APPLICATION_INTERNAL_ERROR,
            f"sending facility {facility} (MSH-4) may not send over {origin.listener.upper()} from "
            f'{origin.describe()}: not in its allow-list (MSCC_SENDERS_FILE, "{origin.listener}")',
            location="MSH-4",
        )

    def trust_of(self, header: MessageHeader) -> str:
        """The ODS code of the organisation a message speaks for: the ``ods_code`` of the sender rule
        it matches, else its MSH-4.1, upper case ("" when MSH-4 is empty)."""
        alias = next((rule.ods_code for rule in self._aliased if rule.matches(header)), "")
        return (alias or header.sending_facility).strip().upper()


def _rule(data: dict[str, Any], base: SenderRule) -> SenderRule:
    return SenderRule(
        facility=str(data.get("facility", base.facility)),
        application=str(data.get("application", base.application)),
        message_types=tuple(data.get("message_types", base.message_types)),
        processing_ids=tuple(data.get("processing_ids", base.processing_ids)),
        ods_code=str(data.get("ods_code", "")).strip().upper(),
        origins=tuple(
            (name, OriginRule.from_doc(data[name]) if name in data else dict(base.origins)[name])
            for name in LISTENERS
            if name in data or name in dict(base.origins)
        ),
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
