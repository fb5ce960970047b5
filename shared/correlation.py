"""The correlation id: one id that follows a message from intake through its resources to its deliveries.

It is the message record's id, or the id an HTTP caller sent in ``X-Correlation-Id`` or ``X-Request-Id``
(echoed in the answer). Intake stores it on the message record (``correlation_id``); the mapper binds
it while it maps and writes that message, so the outbox events it writes carry it (``correlation_id``,
``shared/versions.py``); the notifier binds it for each delivery of those events. Every log line
written while an id is bound carries it (``shared/logging.py``), so searching the logs for one id shows
the whole path of one message.

Bound per task with a ``ContextVar``: concurrent requests, connections and lanes never see each other's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

FIELD = "correlation_id"  # on message records, outbox events and log lines
# The request headers read, in order of preference; the answer echoes the one that was sent.
HEADERS = ("X-Correlation-Id", "X-Request-Id")
# What an id sent by a caller may look like: it ends up in logs and documents, so printable and short.
_SENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")

_current: ContextVar[str | None] = ContextVar("mscc_correlation_id", default=None)


def current() -> str | None:
    """The id bound in this task (None outside a request, a message or a delivery)."""
    return _current.get()


@contextmanager
def bound(correlation_id: str | None) -> Iterator[None]:
    """Bind ``correlation_id`` for the block (None: nothing bound), restoring what was bound before."""
    token = _current.set(correlation_id)
    try:
        yield
    finally:
        _current.reset(token)


def sent(value: str | None) -> str | None:
    """A caller's correlation header, when it is usable (1-128 printable characters, no spaces or
    quotes); None otherwise, and the hub then uses its own ids."""
    if value is None:
        return None
    value = value.strip()
    return value if _SENT.fullmatch(value) else None


def of_message(doc: dict[str, Any]) -> str:
    """The correlation id of a stored message record: the one stored with it, else its own id."""
    return str(doc.get(FIELD) or doc["_id"])
