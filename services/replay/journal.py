"""The resume journal: an append-only file of what the hub positively acknowledged.

One JSON line per item (``{"source", "offset", "sha256", "at"}``), written and flushed as each
acknowledgement arrives, so a replay stopped at any point (Ctrl-C, a lost connection, a kill) leaves a
journal that a rerun with the same ``--resume`` file trusts: items whose source, offset and content
digest it holds are skipped, and the rerun says how many. An item is journaled only when every
message in it was accepted (AA/CA, or a 2xx over HTTP); anything else is sent again next time. A
changed file (other content at an offset) is sent again too. A line cut short by a crash is ignored.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from .files import UsageError
from .items import Item


class Journal:
    """The keys already acknowledged (read once at start) and the file new ones are appended to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: set[bytes] = set()  # compact digests of the keys read at start
        self._out: TextIO | None = None

    def open(self) -> Journal:
        try:
            if self.path.exists():
                with self.path.open(encoding="utf-8") as handle:
                    for line in handle:
                        self._load(line)
            self._out = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--resume {self.path}: cannot read or write the journal ({exc})") from exc
        return self

    def _load(self, line: str) -> None:
        try:
            entry = json.loads(line)
            self.done.add(_compact(f"{entry['source']}\t{entry['offset']}\t{entry['sha256']}"))
        except (ValueError, KeyError, TypeError):
            pass  # a line cut short by a crash: that item is simply sent again

    def seen(self, item: Item) -> bool:
        return _compact(item.key) in self.done

    def record(self, item: Item) -> None:
        """Append ``item`` (kept on disk only: memory holds just what the run started with)."""
        if self._out is None:
            return
        entry = {"source": item.source, "offset": item.offset, "sha256": item.digest}
        self._out.write(json.dumps({**entry, "at": datetime.now(UTC).isoformat(timespec="seconds")}) + "\n")
        self._out.flush()

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def _compact(key: str) -> bytes:
    return hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=16).digest()
