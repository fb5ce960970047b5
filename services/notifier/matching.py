"""Which subscriptions an outbox event goes to: the topic first, then every filter (logical AND).

- The subscription must have started before the hub recorded the event, and not ended.
- The topic decides on the focus at the event's version and the version before it (``topics.triggered``).
- A filter on the focus's own type is a FHIR search (``shared.search.parse_search``) run on the
  focus at the event's version (``resource_history``, ``_id`` "Type/id/_history/N"), so a later change
  cannot decide about an earlier event; on the current version (``resources``) when the event names no
  version.
- A ServiceRequest filter on an event about another resource (a QuestionnaireResponse, a CarePlan) is
  run on that resource's referrals: the ServiceRequests in its ``basedOn``, else the patient's
  (``subject``) ServiceRequests. So "requester = the trust" reaches the HNA of a patient the trust
  referred.
- Last, whatever the criteria said: the subscriber's trust must be allowed to see the focus at the
  event's version (its ``trusts``, ``shared/visibility.py``; the MSCC team's subscriptions see
  everything). Criteria are written by subscribers and can be wrong (a requester filter matching another
  trust's referral through a shared patient, a filter that ignores the requester); visibility is what the
  hub knows about who referred the patient, the same rule every read applies. What is held back here is
  counted (``Matcher.withheld``), never delivered and never numbered.

Each distinct filter costs one query per batch of events, whatever the number of subscriptions.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shared.fhir import Resource
from shared.search import parse_search
from shared.store import Store
from shared.visibility import EVERYTHING, Visibility, trust_code, trusts_of

from .model import ChangeEvent, Filter, Subscription
from .topics import triggered

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Focused:
    """An event with its focus at the event's version, and the version before (None when unknown or
    never announced)."""

    event: ChangeEvent
    current: Resource | None
    previous: Resource | None
    trusts: tuple[str, ...] = ()  # who may see the focus at the event's version (none: the MSCC team only)

    def referrals(self) -> list[str]:
        """ "ServiceRequest/id" keys the focus is based on."""
        based_on = (self.current or {}).get("basedOn") or []
        return [
            str(ref["reference"])
            for ref in based_on
            if isinstance(ref, dict) and str(ref.get("reference", "")).startswith("ServiceRequest/")
        ]

    def subject(self) -> str | None:
        for key in ("subject", "patient"):
            ref = (self.current or {}).get(key)
            if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
                return str(ref["reference"])
        return None


def subscriber_visibility(trust: str, service_ods: str) -> Visibility:
    """What a subscription of ``trust`` may be told about: everything for the MSCC team's own
    subscriptions (``trust`` is the hub's organisation, ``service_ods``), else what names ``trust``."""
    code = trust_code(trust)
    if code is not None and code == trust_code(service_ods):
        return EVERYTHING
    return Visibility(code or "")


def _previous_id(event: ChangeEvent) -> str | None:
    version = event.focus.version
    return f"{event.focus.key}/_history/{version - 1}" if version and version > 1 else None


class Matcher:
    def __init__(self, store: Store, service_ods: str = "") -> None:
        """``service_ods``: the hub's own organisation (``MSCC_RECEIVING_FACILITY``), whose subscriptions
        see every trust's resources; empty, no subscription does (the safe side)."""
        self._store = store
        self._service_ods = service_ods
        self.withheld = 0  # (event, subscription) pairs the criteria matched but visibility refused

    async def load(self, events: list[ChangeEvent]) -> list[Focused]:
        """Each event with its focus versions (missing versions are None, never an error)."""
        wanted = {e.focus.history_id for e in events if e.focus.history_id}
        wanted |= {p for e in events if (p := _previous_id(e))}
        versions: dict[str, Any] = {}
        if wanted:
            found = self._store.history.find({"_id": {"$in": sorted(wanted)}}, {"resource": 1, "trusts": 1})
            versions = {d["_id"]: d async for d in found}
        unversioned = sorted({e.focus.key for e in events if e.focus.version is None})
        current: dict[str, Any] = {}
        if unversioned:
            found = self._store.resources.find({"_id": {"$in": unversioned}}, {"resource": 1, "trusts": 1})
            current = {d["_id"]: d async for d in found}
        # A previous version that never had an outbox event (the FHIR intake stores a created resource's
        # first version without one) was never announced: the event is then the resource's first news.
        previous = sorted({p for e in events if (p := _previous_id(e))})
        announced: set[str] = set()
        if previous:
            announced = {d["_id"] async for d in self._store.outbox.find({"_id": {"$in": previous}}, {"_id": 1})}
        out = []
        for e in events:
            now = versions.get(e.focus.history_id) if e.focus.history_id else current.get(e.focus.key)
            p = _previous_id(e)
            before = versions.get(p) if p and p in announced else None
            resource = now.get("resource") if now else None
            out.append(Focused(e, resource, before.get("resource") if before else None, trusts_of(now)))
        return out

    async def match(self, focused: list[Focused], subscriptions: list[Subscription]) -> dict[str, list[Subscription]]:
        """outbox id -> the subscriptions its event goes to (in the order given)."""
        candidates: dict[str, list[Subscription]] = {}
        for item in focused:
            event = item.event
            candidates[event.outbox_id] = [
                s
                for s in subscriptions
                if s.created_at <= event.recorded_at
                and (s.spec.end is None or event.recorded_at < s.spec.end)
                and triggered(s.spec.topic, event, item.current, item.previous)
            ]
        passing: dict[str, set[str]] = {}
        for text, flt in self._distinct_filters(candidates.values()).items():
            relevant = [f for f in focused if any(flt in s.spec.filters for s in candidates[f.event.outbox_id])]
            passing[text] = await self._passing(flt, relevant)
        trusts = {f.event.outbox_id: f.trusts for f in focused}
        out: dict[str, list[Subscription]] = {}
        for outbox_id, subs in candidates.items():
            matched = [s for s in subs if all(outbox_id in passing[f.text] for f in s.spec.filters)]
            out[outbox_id] = [s for s in matched if self._may_see(s, trusts[outbox_id])]
            for s in matched:
                if s not in out[outbox_id]:
                    self.withheld += 1
                    log.warning(
                        "notification withheld: the subscription's criteria match a resource its trust may not see",
                        extra={"subscription": s.id, "trust": s.spec.trust, "outbox_id": outbox_id},
                    )
        return out

    def _may_see(self, subscription: Subscription, trusts: tuple[str, ...]) -> bool:
        """Whether the subscription's trust may see a focus that names ``trusts`` (defence in depth: the
        criteria matched already)."""
        return subscriber_visibility(subscription.spec.trust, self._service_ods).sees({"trusts": list(trusts)})

    @staticmethod
    def _distinct_filters(groups: Iterable[list[Subscription]]) -> dict[str, Filter]:
        return {f.text: f for subs in groups for s in subs for f in s.spec.filters}

    async def _passing(self, flt: Filter, items: list[Focused]) -> set[str]:
        """The outbox ids of ``items`` whose event passes ``flt``."""
        query = parse_search(flt.resource_type, list(flt.params)).query
        passed: set[str] = set()
        same = [f for f in items if f.event.focus.type == flt.resource_type]
        # Several events may be about one version (an update, then an SLA event on it).
        versioned: dict[str, list[str]] = defaultdict(list)
        unversioned: dict[str, list[str]] = defaultdict(list)
        for f in same:
            focus = f.event.focus
            (versioned[focus.history_id] if focus.history_id else unversioned[focus.key]).append(f.event.outbox_id)
        for collection, wanted in ((self._store.history, versioned), (self._store.resources, unversioned)):
            if wanted:
                found = collection.find({"$and": [query, {"_id": {"$in": list(wanted)}}]}, {"_id": 1})
                async for doc in found:
                    passed.update(wanted[doc["_id"]])
        if flt.resource_type == "ServiceRequest":
            passed |= await self._passing_by_referral(
                query, [f for f in items if f.event.focus.type != flt.resource_type]
            )
        return passed

    async def _passing_by_referral(self, query: dict[str, Any], items: list[Focused]) -> set[str]:
        if not items:
            return set()
        keys = sorted({k for f in items for k in f.referrals()})
        subjects = sorted({s for f in items if not f.referrals() and (s := f.subject())})
        if not keys and not subjects:
            return set()
        scope = {"$or": [{"_id": {"$in": keys}}, {"resource.subject.reference": {"$in": subjects}}]}
        matched_keys: set[str] = set()
        matched_subjects: set[str] = set()
        async for doc in self._store.resources.find({"$and": [query, scope]}, {"_id": 1, "resource.subject": 1}):
            matched_keys.add(doc["_id"])
            subject = (doc.get("resource") or {}).get("subject") or {}
            if isinstance(subject.get("reference"), str):
                matched_subjects.add(subject["reference"])
        out = set()
        for f in items:
            refs = f.referrals()
            if (refs and matched_keys.intersection(refs)) or (not refs and f.subject() in matched_subjects):
                out.add(f.event.outbox_id)
        return out
