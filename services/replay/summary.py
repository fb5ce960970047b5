"""The replay's tally: counts by message type and by sender (MSH-4), the failures file, the table.

Every failed message gets one JSON line in the failures file as soon as its answer is known (where it
came from, what it was, the answer and the reason), so a replay stopped halfway leaves what it learnt.
The default file (``replay-failures.jsonl`` in the working folder) is created only when something
fails; a file named with ``--failures`` is always written (empty when nothing failed).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from .files import UsageError
from .items import Item
from .outcomes import COLUMNS, STATUSES, Outcome

DEFAULT_FAILURES = "replay-failures.jsonl"


class Summary:
    """Counts per message type and per sender, and the failures file."""

    def __init__(self, failures: Path | None) -> None:
        self.by_type: dict[str, Counter[str]] = {}
        self.by_sender: dict[str, Counter[str]] = {}
        self.total: Counter[str] = Counter()
        self.skipped = 0
        self.failures_path = failures or Path(DEFAULT_FAILURES)
        self._explicit = failures is not None
        self._out: TextIO | None = None

    def open(self) -> Summary:
        if self._explicit:
            try:
                self._out = self.failures_path.open("w", encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"--failures {self.failures_path}: cannot be written ({exc.strerror or exc})") from exc
        return self

    @property
    def messages(self) -> int:
        return sum(self.total.values())

    @property
    def failed(self) -> int:
        return self.messages - self.total["accepted"]

    def record(self, item: Item, outcomes: list[Outcome]) -> None:
        """Count the outcome of each message of ``item`` (``outcomes`` in the order of its messages)."""
        for described, outcome in zip(item.messages, outcomes, strict=True):
            self.by_type.setdefault(described.message_type, Counter())[outcome.status] += 1
            self.by_sender.setdefault(described.sender, Counter())[outcome.status] += 1
            self.total[outcome.status] += 1
            if not outcome.ok:
                self._failure(item, described.message_type, described.sender, described.control_id, outcome)

    def _failure(self, item: Item, message_type: str, sender: str, control_id: str, outcome: Outcome) -> None:
        if self._out is None:
            self._out = self.failures_path.open("w", encoding="utf-8")
        line = {
            "source": item.source,
            "offset": item.offset,
            "message_type": message_type,
            "sender": sender,
            "control_id": control_id,
            "status": outcome.status,
            "answer": outcome.code,
            "reason": outcome.reason,
        }
        self._out.write(json.dumps(line, ensure_ascii=False) + "\n")
        self._out.flush()

    def close(self) -> None:
        if self._out is not None:
            self._out.close()

    @property
    def failures_written(self) -> bool:
        return self._explicit or self._out is not None

    def table(self, seconds: float) -> str:
        """The summary as text: totals, then a table by message type and one by sender."""
        rate = self.messages / seconds if seconds > 0 else 0.0
        lines = [
            f"replayed {self.messages} messages in {seconds:.1f} s ({rate:.1f} msg/s)"
            + (f"; skipped {self.skipped} already acknowledged (--resume)" if self.skipped else "")
        ]
        for title, rows in (("message type", self.by_type), ("sender (MSH-4)", self.by_sender)):
            lines.append("")
            lines.append(_row(title, ["messages", *(COLUMNS[s] for s in STATUSES)]))
            for name in sorted(rows):
                counts = rows[name]
                lines.append(_row(name, [str(sum(counts.values())), *(str(counts[s]) for s in STATUSES)]))
        lines.append(_row("total", [str(self.messages), *(str(self.total[s]) for s in STATUSES)]))
        if self.failed:
            lines.append(f"\n{self.failed} failed: each is in {self.failures_path} with its reason")
        return "\n".join(lines)

    def to_json(self, seconds: float) -> dict[str, Any]:
        def counts(counter: Counter[str]) -> dict[str, int]:
            return {"messages": sum(counter.values()), **{s: counter[s] for s in STATUSES}}

        return {
            **counts(self.total),
            "skipped": self.skipped,
            "seconds": round(seconds, 3),
            "rate": round(self.messages / seconds, 1) if seconds > 0 else 0.0,
            "by_message_type": {k: counts(v) for k, v in sorted(self.by_type.items())},
            "by_sender": {k: counts(v) for k, v in sorted(self.by_sender.items())},
            "failures_file": str(self.failures_path) if self.failures_written else None,
        }


def _row(name: str, cells: list[str]) -> str:
    first = name if len(name) <= 24 else name[:23] + "…"
    return f"{first:<24}" + "".join(f"{c:>11}" for c in cells)
