"""What the demo expects to see delivered, what it counted on the way, and the summary it prints."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from shared.store import Store

from .receiver import Received, Receiver


@dataclass(frozen=True)
class Expected:
    """A notification the story waits for: to ``trust`` on ``topic`` about a focus starting ``focus``."""

    label: str
    trust: str
    topic: str
    focus: str
    kind: str | None = None
    text: str | None = None  # in the focus's description (a step, "lacks")
    retried: bool = False  # accepted after the endpoint refused it at least once

    def matches(self, got: Received) -> bool:
        return (
            got.trust == self.trust
            and got.topic == self.topic
            and got.focus.startswith(self.focus)
            and (self.kind is None or got.kind == self.kind)
            and (self.text is None or self.text in got.what)
            and (not self.retried or got.refused_before > 0)
        )

    def met(self, received: list[Received]) -> bool:
        return any(self.matches(got) for got in received)


@dataclass
class Tally:
    """Every request the demo made, with the hub's answer (ACK code or HTTP status)."""

    sent: list[tuple[str, str, str]] = field(default_factory=list)  # (who, what, answer)

    def add(self, who: str, what: str, answer: int | str) -> None:
        self.sent.append((who, what, str(answer)))

    @staticmethod
    async def mapped_counts(store: Store, since: datetime) -> Counter[str]:
        """The resources (by type) the mapper wrote from the messages that arrived since ``since``,
        as their processing outcomes record them (``mscc messages show`` shows the same)."""
        counts: Counter[str] = Counter()
        cursor = store.messages.find({"received_at": {"$gte": since}, "status": "mapped"}, {"processing.resources": 1})
        async for doc in cursor:
            for written in (doc.get("processing") or {}).get("resources") or []:
                kind = written.get("type") if isinstance(written, dict) else str(written).split("/", 1)[0]
                counts[str(kind)] += 1
        return counts


def _grouped(sent: list[tuple[str, str, str]]) -> list[str]:
    """One line per distinct request, repeated ones counted (``$transition`` x3)."""
    order: list[tuple[str, str]] = []
    answers: dict[tuple[str, str], list[str]] = {}
    for who, what, answer in sent:
        key = (who, what.split(" ", 1)[0] if what.startswith("$transition") else what)
        if key not in answers:
            order.append(key)
            answers[key] = []
        answers[key].append(answer)
    lines = []
    for who, what in order:
        got = answers[(who, what)]
        shown = ", ".join(sorted(set(got))) + (f" (x{len(got)})" if len(got) > 1 else "")
        lines.append(f"  {who:<4} {what:<34} {shown}")
    return lines


def summary_lines(
    tally: Tally, mapped: Counter[str], receiver: Receiver, base: str, missing: list[str], *, metrics: bool = False
) -> list[str]:
    """The boxed summary: sent and answered, mapped, delivered, and where to look next (``/metrics``
    when the hub serves it)."""
    by_trust = Counter(r.trust for r in receiver.received)
    retried = [r for r in receiver.received if r.refused_before]
    delivered = ", ".join(f"{trust} {n}" for trust, n in sorted(by_trust.items())) or "none"
    lines = ["", "+" + "-" * 77, "| Summary", "|", "| Sent, and what the hub answered (ACK code or HTTP status):"]
    lines += ["|" + line for line in _grouped(tally.sent)]
    lines += ["|", "| What the mapper made of this run's messages (resource versions written, by type):"]
    made = ", ".join(f"{kind} {n}" for kind, n in sorted(mapped.items())) or "nothing yet"
    lines += [f"|   {made}", "|", f"| Notifications delivered: {len(receiver.received)} ({delivered}), all signed"]
    if not all(r.signed for r in receiver.received):
        lines[-1] = lines[-1].replace(", all signed", ", NOT all with a valid signature")
    for r in receiver.received:
        lines.append(f"|   {r.trust} '{r.topic}' event {r.number} ({r.kind}): {r.focus}")
    for r in retried:
        lines.append(
            f"| Retried: {r.trust} '{r.topic}' event {r.number}, answered 503 {r.refused_before} time(s), "
            "then delivered"
        )
    if missing:
        lines.append(f"| Not (yet) delivered: {'; '.join(missing)}")
    lines += [
        "|",
        "| Where to look next (from this machine no token is needed: the development client):",
        f"|   {base}/docs                                  the API",
        f"|   {base}/fhir/ServiceRequest?requester=Organization/RBL   RBL's referrals",
        f"|   {base}/fhir/Task?owner=Organization/RJR&status=requested   what RJR is asked for",
        f"|   {base}/fhir/Subscription                     the subscriptions ($status, $events)",
        f"|   {base}/readyz                                 readiness",
        *([f"|   {base}/metrics                                the hub's metrics"] if metrics else []),
        "|   .venv/bin/mscc messages list [--status rejected]   every message kept, and why one was refused",
        "|   .venv/bin/mscc replay --help                      send your own HL7v2 files over MLLP",
        "+" + "-" * 77,
    ]
    return lines
