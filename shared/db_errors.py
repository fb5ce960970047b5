"""What a database failure means for the caller: send it again later, or never (and why), and what of it
may be logged.

**Transient** (``is_transient``): what ``shared.retry.retryable`` retries (a transaction aborted by a
conflict or an election, a dropped connection), and every other failure of the network, the primary or
a time limit: no server reachable, not primary, a socket or server-side timeout, a write concern not
satisfied in time. The request may succeed if sent again: HTTP 503 with ``Retry-After``, HL7v2 AE 207.

**Permanent**: anything else. The same request would fail the same way, so asking for a resend would
make a sender retry for ever: a document too large (413), a key that cannot be indexed or a document
that fails validation or cannot be encoded (422), a duplicate key outside the hub's own guards (409), a
query the server refuses (400), or an unexpected failure (500, never "try again").

**Logging** (``safe_summary``): a database error's text can carry what was being written, such as a
duplicate key's value or the offending document, so it never reaches the log. Only the error's class,
its code(s) and labels do, next to the record ids the caller adds. A write the database refuses because
of the input itself (``refused_input``: a document or a transaction too large, a value too long for an
index) is no outage: it is logged as a warning naming the record and what to do, where an outage (no
server, not primary, a write concern not met) or an unexpected failure is an error (``log_failure``),
which is what operators alert on.
"""

from __future__ import annotations

import logging
from typing import Any

from bson.errors import BSONError, InvalidDocument
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DocumentTooLarge,
    DuplicateKeyError,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    WriteConcernError,
)

from .fhir import FhirError
from .retry import TransientError, retryable

DatabaseError = (PyMongoError, BSONError)

# Server codes that mean "not now": not primary, shutting down, network, time limits (the retryable
# write and read codes of the drivers' specifications).
TRANSIENT_CODES = frozenset({6, 7, 50, 63, 89, 91, 134, 150, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})
TOO_LARGE_CODES = frozenset({10334, 17419, 17420})  # BSONObjectTooLarge and kin
# TransactionTooLarge: the writes of one transaction exceed 16 MiB together, which MongoDB 4.0 refuses
# (4.2 and later split a transaction's oplog entries); MSCC_LIMIT_TRANSACTION_BYTES set above that.
TRANSACTION_TOO_LARGE = 257
KEY_TOO_LONG = 17280
DOCUMENT_VALIDATION = 121
DUPLICATE_KEY_CODES = frozenset({11000, 11001})
BAD_QUERY_CODES = frozenset({2, 9, 14, 51091})  # BadValue, FailedToParse, TypeMismatch, a regex refused


def _codes(exc: BaseException) -> list[int]:
    """The server codes of ``exc``: its own, or each write error's of a bulk write."""
    if isinstance(exc, BulkWriteError):
        return [int(err.get("code", 0)) for err in (exc.details or {}).get("writeErrors", [])]
    code = getattr(exc, "code", None)
    return [int(code)] if isinstance(code, int) else []


def is_transient(exc: BaseException) -> bool:
    """Whether the work that failed with ``exc`` may succeed if tried again (see the module docstring)."""
    if isinstance(exc, TransientError) or retryable(exc):
        return True
    if isinstance(exc, (ConnectionFailure, ExecutionTimeout, WriteConcernError)):
        return True
    if isinstance(exc, BulkWriteError) and (exc.details or {}).get("writeConcernErrors"):
        return True
    codes = _codes(exc)
    return bool(codes) and all(code in TRANSIENT_CODES for code in codes)


def safe_summary(exc: BaseException) -> dict[str, Any]:
    """What may be logged of ``exc``: its class, its code(s) and error labels, never its text."""
    summary: dict[str, Any] = {"error": type(exc).__name__}
    codes = _codes(exc)
    if codes:
        summary["code"] = codes[0] if len(codes) == 1 else sorted(set(codes))
    labels = [label for label in ("TransientTransactionError", "UnknownTransactionCommitResult") if _has(exc, label)]
    if labels:
        summary["labels"] = labels
    return summary


def _has(exc: BaseException, label: str) -> bool:
    return isinstance(exc, PyMongoError) and exc.has_error_label(label)


def describe(exc: BaseException) -> str:
    """``safe_summary`` as text, e.g. ``DuplicateKeyError (code 11000)``."""
    summary = safe_summary(exc)
    return f"{summary['error']} (code {summary['code']})" if "code" in summary else str(summary["error"])


# What an operator can do about a write the database refused because of the input (``refused_input``).
DOCUMENT_TOO_LARGE_ACTION = (
    "a document would be over MongoDB's 16 MiB: the input cannot be stored as it is (split it at the "
    "source); keep MSCC_LIMIT_DOCUMENT_BYTES and MSCC_MLLP_MAX_MESSAGE_BYTES low enough that intake refuses "
    "such input first, naming the limit"
)
TRANSACTION_TOO_LARGE_ACTION = (
    "one transaction would write over 16 MiB, which MongoDB 4.0 refuses: the input cannot be written as it "
    "is (split it at the source); keep MSCC_LIMIT_TRANSACTION_BYTES under 16 MiB so that intake refuses such "
    "input first, naming the limit (or run MongoDB 4.2 or later)"
)
KEY_TOO_LONG_ACTION = (
    "a value is longer than an index key may be (1024 bytes on MongoDB 4.0): have it corrected at the "
    "source; if an index the deployment added takes that field, drop or narrow the index (MongoDB 4.2 and "
    "later have no such limit)"
)


def refused_input(exc: BaseException | None) -> str | None:
    """What to do when ``exc`` (or a failure it wraps, ``__cause__``) is the database refusing a write
    because of the input itself; None for anything else (an outage, a conflict, a bug). The same input
    fails the same way every time, so it is never retried; it is no outage either."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        codes = set(_codes(exc))
        if isinstance(exc, DocumentTooLarge) or codes & TOO_LARGE_CODES:
            return DOCUMENT_TOO_LARGE_ACTION
        if TRANSACTION_TOO_LARGE in codes:
            return TRANSACTION_TOO_LARGE_ACTION
        if KEY_TOO_LONG in codes:
            return KEY_TOO_LONG_ACTION
        exc = exc.__cause__
    return None


def log_failure(log: logging.Logger, what: str, exc: BaseException | None, **extra: Any) -> None:
    """Log one line about a database failure of ``what`` (``extra``: the record ids and such): a warning
    saying what to do when the input caused it (``refused_input``), else an error. Never the error's
    text (``safe_summary``), never a traceback."""
    facts = {**extra, **(safe_summary(exc) if exc is not None else {})}
    action = refused_input(exc)
    if action is None:
        log.error(what, extra=facts, stacklevel=2)
    else:
        log.warning(f"{what}: the database refused it because of the input; {action}", extra=facts, stacklevel=2)


def _permanent_status(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, OperationOutcome code, reason) for a failure that will not go away."""
    codes = set(_codes(exc))
    if isinstance(exc, DocumentTooLarge) or codes & TOO_LARGE_CODES:
        return 413, "too-costly", "it is larger than a stored document can be"
    if TRANSACTION_TOO_LARGE in codes:
        return (
            413,
            "too-costly",
            (
                "what it writes is larger than one database transaction may be (16 MiB on MongoDB 4.0: keep "
                "MSCC_LIMIT_TRANSACTION_BYTES under it)"
            ),
        )
    if KEY_TOO_LONG in codes:
        return 422, "too-long", "a value is too long to be indexed"
    if isinstance(exc, DuplicateKeyError) or codes & DUPLICATE_KEY_CODES:
        return 409, "duplicate", "it collides with a stored record"
    if DOCUMENT_VALIDATION in codes:
        return 422, "invariant", "the database's validation refused the document"
    if isinstance(exc, InvalidDocument) or (isinstance(exc, BSONError) and not isinstance(exc, PyMongoError)):
        return 422, "structure", "it cannot be encoded as a stored document"
    if isinstance(exc, OperationFailure) and codes & BAD_QUERY_CODES:
        return 400, "invalid", "the database refused the query it asks for"
    return 500, "exception", "the database refused it"


def database_failure(exc: BaseException, what: str) -> FhirError:
    """The answer for ``what`` (e.g. "ServiceRequest not stored": no content of the request) failing
    with ``exc``: 503 "send it again" when transient, else the permanent status (never 503)."""
    if is_transient(exc):
        return FhirError(503, "transient", f"{what}: the database did not answer, send it again")
    status, code, reason = _permanent_status(exc)
    return FhirError(status, code, f"{what}: {reason} ({describe(exc)}); sending it again will not help")
