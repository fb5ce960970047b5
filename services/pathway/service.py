"""The pathway's entry points for the HTTP API: parse a $transition Parameters, apply a move or an update,
keeping the inbound body with the change it made (or as rejected, with the OperationOutcome answered).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.auth import Caller
from shared.fhir import FhirError, Resource
from shared.store import Store

from .commit import applied_record
from .record import parse_time
from .transitions import Origin, TransitionResult, apply_transition
from .updates import Updater, UpdateResult


@dataclass(frozen=True)
class TransitionAsk:
    """The parameters of one $transition call."""

    step: str
    at: datetime | None
    note: str | None
    who: Resource | str | None


def _one(parameters: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    found = [p for p in parameters if isinstance(p, dict) and p.get("name") == name]
    if len(found) > 1:
        raise FhirError(
            400, "invalid", f"parameter {name!r} is given more than once", expression=["Parameters.parameter"]
        )
    return found[0] if found else None


def parse_transition(parameters: Resource) -> TransitionAsk:
    """step (valueCode), time (valueDateTime with a time and offset, optional), note (valueString), who
    (valueReference or valueString); ``FhirError`` 400 naming what is missing or malformed."""
    items = [p for p in parameters.get("parameter") or [] if isinstance(p, dict)]
    known = {"step", "time", "note", "who"}
    unknown = sorted({str(p.get("name")) for p in items} - known)
    if unknown:
        raise FhirError(
            400, "invalid", f"unknown parameter(s) {', '.join(unknown)}; $transition takes {', '.join(sorted(known))}"
        )
    step = (_one(items, "step") or {}).get("valueCode")
    if not isinstance(step, str) or not step:
        raise FhirError(
            400, "required", "parameter 'step' (valueCode) is required", expression=["Parameters.parameter"]
        )
    time_param = _one(items, "time")
    at = None
    if time_param is not None:
        raw = time_param.get("valueDateTime", time_param.get("valueInstant"))
        at = parse_time(raw)
        if at is None:
            raise FhirError(
                400, "invalid", f"parameter 'time' {raw!r} must be a dateTime with a time of day and a UTC offset"
            )
    note = (_one(items, "note") or {}).get("valueString")
    who_param = _one(items, "who") or {}
    who = who_param.get("valueReference") or who_param.get("valueString")
    return TransitionAsk(step, at, note if isinstance(note, str) else None, who)


class PathwayService:
    """Moves and updates for the API's pathway routes; ``clock`` is the time of each change."""

    def __init__(self, store: Store, clock: Callable[[], datetime] | None = None) -> None:
        self._store = store
        self._clock = clock or (lambda: datetime.now(UTC))
        self.updater = Updater(store, self._clock)

    def _origin(self, body: bytes, caller: Caller, peer: str, header: dict[str, Any]) -> Origin:
        record = applied_record(uuid.uuid4().hex, self._clock(), body, caller.to_doc(), peer, header, [])
        return Origin(source=f"api:{caller.client_id}", record=record)

    async def transition(
        self,
        referral_id: str,
        ask: TransitionAsk,
        expected_version: int | None,
        body: bytes,
        caller: Caller,
        peer: str,
    ) -> TransitionResult:
        """``apply_transition`` with the call's body kept as the message that caused the change."""
        header = {
            "interaction": "operation",
            "operation": "$transition",
            "resource_type": "ServiceRequest",
            "id": referral_id,
        }
        return await apply_transition(
            self._store,
            referral_id,
            ask.step,
            ask.at,
            ask.note,
            ask.who,
            expected_version,
            origin=self._origin(body, caller, peer, header),
            clock=self._clock,
        )

    async def update(
        self,
        resource: Resource,
        resource_type: str,
        resource_id: str,
        expected_version: int,
        body: bytes,
        caller: Caller,
        peer: str,
    ) -> UpdateResult:
        """``Updater.update`` with the body kept as the message that caused the change."""
        header = {"interaction": "update", "resource_type": resource_type, "id": resource_id}
        origin = self._origin(body, caller, peer, header)
        who = f"client {caller.client_id} ({caller.ods_code})"
        return await self.updater.update(resource, resource_type, resource_id, expected_version, who, origin)
