"""Logs carry no patient data from database errors: a logging filter that replaces their text.

A database error's text can quote what was being written: a duplicate key's value (``dup key: { :
"JONES" }``), a bulk write's failing documents (``full error: {'writeErrors': [{'op': {...}}]}``), a value
BSON cannot encode. Whatever a worker logs (``log.exception`` of a failed cycle, ``exc_info=``, an error
passed as an argument, ``extra={"reason": str(exc)}``), ``PatientSafeFilter`` rewrites the record before
any handler formats it:

- every database error in the record (``exc_info`` and its whole ``__cause__``/``__context__`` chain,
  the message arguments, ``extra`` values) is replaced by a stand-in of the same class whose text is the
  safe summary: class, code(s), error labels (``shared.db_errors.safe_summary``);
- every string of the record (the message, string arguments, ``extra`` values, the messages of other
  exceptions in the chain, which often quote the database error: ``Conflict(f"...: {exc}")``) has the
  database errors' texts replaced by their summaries, and whatever still looks like a database error's
  quotation (``dup key: {...}``, ``full error: {...}``, ``cannot encode object: ...``) cut off.

Connection failures (no server, a timeout, not primary) keep their text: it names servers, never a
document, and it is what an operator needs. The record is changed in place, so every handler after the
one the filter is installed on (``install``; ``shared.logging.configure`` installs it on the hub's
handler) sees the safe record too.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from bson.errors import BSONError
from pymongo.errors import ConnectionFailure, PyMongoError

from .db_errors import safe_summary

# Quotations a database error's text makes of data, wherever they survive (a text cut to N characters).
_QUOTED = re.compile(
    r"(dup key: |full error: |cannot encode object: |failing document: |keyValue: |'keyValue': |'op': )[^\n]*"
)
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def is_database_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an error whose text may quote stored or written data."""
    return isinstance(exc, PyMongoError | BSONError) and not isinstance(exc, ConnectionFailure)


def summary(exc: BaseException) -> str:
    """The safe text of a database error: ``DuplicateKeyError (code 11000; labels: ...)``."""
    found = safe_summary(exc)
    parts = []
    if "code" in found:
        parts.append(f"code {found['code']}")
    if found.get("labels"):
        parts.append(f"labels: {', '.join(found['labels'])}")
    return f"{found['error']} ({'; '.join(parts)})" if parts else str(found["error"])


class _Scrubber:
    """The database errors of one record, and how to make any text or exception of it safe."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}  # a database error's str() and repr() -> its summary
        self.done: dict[int, BaseException] = {}  # id(original) -> its safe copy

    def collect(self, value: Any, seen: set[int] | None = None) -> None:
        seen = seen if seen is not None else set()
        if not isinstance(value, BaseException) or id(value) in seen:
            return
        seen.add(id(value))
        if is_database_error(value):
            safe = summary(value)
            for text in (str(value), repr(value), getattr(value, "_message", "")):
                if isinstance(text, str) and len(text) > 3:
                    self.texts[text] = safe
        for linked in (value.__cause__, value.__context__, *getattr(value, "exceptions", ())):
            self.collect(linked, seen)

    def text(self, value: str) -> str:
        for raw in sorted(self.texts, key=len, reverse=True):
            if raw in value:
                value = value.replace(raw, self.texts[raw])
        return _QUOTED.sub(lambda m: f"{m.group(1)}(removed from the log)", value)

    def value(self, value: Any) -> Any:
        if isinstance(value, BaseException) and is_database_error(value):
            return summary(value)
        if isinstance(value, str):
            return self.text(value)
        return value

    def exception(self, exc: BaseException) -> BaseException:
        """A copy of ``exc`` (same class, traceback and chain) whose texts are safe."""
        if id(exc) in self.done:
            return self.done[id(exc)]
        try:
            copy = exc.__class__.__new__(exc.__class__)
            copy.__dict__.update(exc.__dict__)
        except Exception:  # a class that cannot be copied this way: a plain stand-in
            copy = Exception(f"{type(exc).__name__}: {self.text(str(exc))}")
        self.done[id(exc)] = copy
        if is_database_error(exc):
            copy.args = (summary(exc),)
            if isinstance(exc, PyMongoError):
                copy._message = summary(exc)  # type: ignore[attr-defined]
            if hasattr(exc, "_OperationFailure__details"):
                copy._OperationFailure__details = None  # type: ignore[attr-defined]
        else:
            copy.args = tuple(self.value(a) for a in exc.args)
            for key, value in list(vars(copy).items()):  # what a custom __str__ may read
                if isinstance(value, str):
                    setattr(copy, key, self.text(value))
        notes = getattr(exc, "__notes__", None)
        if isinstance(notes, list):
            copy.__notes__ = [self.text(str(n)) for n in notes]
        copy.__traceback__ = exc.__traceback__
        copy.__cause__ = self.exception(exc.__cause__) if exc.__cause__ else None
        copy.__context__ = self.exception(exc.__context__) if exc.__context__ else None
        copy.__suppress_context__ = exc.__suppress_context__
        return copy


class PatientSafeFilter(logging.Filter):
    """Rewrites every record so no database error's text reaches a handler (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        scrub = _Scrubber()
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        exc = record.exc_info[1] if isinstance(record.exc_info, tuple) else None
        args = record.args if isinstance(record.args, tuple) else tuple((record.args or {}).values())
        for value in (exc, record.msg, *args, *extras.values()):
            scrub.collect(value)
        record.msg = scrub.value(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(scrub.value(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: scrub.value(v) for k, v in record.args.items()}
        for key, value in extras.items():
            setattr(record, key, scrub.value(value))
        if exc is not None and record.exc_info is not None:
            record.exc_info = (type(exc), scrub.exception(exc), exc.__traceback__)
            record.exc_text = None  # formatted again, from the safe copy
        return True


def install(handler: logging.Handler) -> None:
    """Add the filter to ``handler`` (once)."""
    if not any(isinstance(f, PatientSafeFilter) for f in handler.filters):
        handler.addFilter(PatientSafeFilter())
