"""Structured logging for every part of the hub, with patient identifiers redacted.

``configure(settings)`` installs one handler on the root logger: JSON lines (``MSCC_LOG_FORMAT=json``)
or readable text. Extra fields passed with ``extra={...}`` are included. Any 10-digit run (an NHS
number or similar) in the message or the extra values is masked: logs must not carry patient data.

Every line written while a correlation id is bound (``shared/correlation.py``: a message, its mapping,
its deliveries, an HTTP request that sent one) carries it as ``correlation_id``, so one search of the
logs finds the whole path of one message. The hub's own ids (32 hexadecimal characters) are never
masked; an id a caller chose is masked like any other value.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from . import correlation
from .log_safety import install as install_log_safety
from .settings import Settings

_PATIENT_NUMBER = re.compile(r"(?<!\d)(\d{3})[ -]?\d{3}[ -]?(\d{4})(?!\d)")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


def redact(value: str) -> str:
    return _PATIENT_NUMBER.sub(lambda m: f"{m.group(1)}*****{m.group(2)[-1]}", value)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in vars(record).items():
        if key not in _STANDARD:
            hub_id = key == correlation.FIELD and isinstance(value, str) and _HUB_ID.fullmatch(value)
            out[key] = redact(value) if isinstance(value, str) and not hub_id else value
    return out


_HUB_ID = re.compile(r"[0-9a-f]{32}")  # a record id: its digit runs are no patient number


class CorrelationFilter(logging.Filter):
    """Puts the correlation id bound in the current task on each record (unless the call gave one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, correlation.FIELD):
            bound = correlation.current()
            if bound is not None:
                setattr(record, correlation.FIELD, bound)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            **_extras(record),
        }
        if record.exc_info:
            payload["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{self.formatTime(record)} {record.levelname:<7} {record.name}: {redact(record.getMessage())}"
        if extras:
            line += f" [{extras}]"
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        return line


def configure(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    handler.addFilter(CorrelationFilter())
    install_log_safety(handler)  # no database error's text (a duplicate key's value, a document) is logged
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    logging.getLogger("pymongo").setLevel(logging.WARNING)
