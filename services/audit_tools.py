"""``mscc audit search``: the audit trail from the command line, for operators on the hub's own host.

It reads the database directly (as ``mscc messages`` does), so it answers whoever can reach the database:
the same people who could read the collection itself. Filters are those of ``GET /fhir/AuditEvent``:
``--entity`` (``Type/id`` or id), ``--agent`` (client id or ODS code), ``--since`` / ``--until`` (a date
or an instant); newest first. ``--json`` prints the AuditEvents themselves, one JSON array.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from typing import Any

from shared import audit_log
from shared.fhir import FhirError
from shared.settings import Settings
from shared.store import Store, connect

HEADERS = ("recorded", "action", "interaction", "outcome", "client", "ods", "peer", "entities", "reason")


def add_parser(sub: Any) -> None:
    """Register ``mscc audit`` on the CLI's subparsers."""
    audit = sub.add_parser("audit", help="search the audit trail (who read, searched or wrote what, and when)")
    audit.add_argument("action", choices=["search"])
    audit.add_argument("--entity", help="a resource (Patient/123 or 123) or a stored message record id")
    audit.add_argument("--agent", help="a client id or an ODS code")
    audit.add_argument("--since", help="from this date or instant on (2026-01-31, 2026-01-31T09:00:00Z)")
    audit.add_argument("--until", help="before this date or instant (a date: before that day starts)")
    audit.add_argument("--limit", type=int, default=50, help="at most this many events (1-100, default 50)")
    audit.add_argument("--json", action="store_true", help="print the AuditEvents as a JSON array")


def command(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``mscc audit``: 0 when the search ran (even with no match), 2 for a filter that is not valid."""
    if not 1 <= args.limit <= audit_log.MAX_COUNT:
        print(f"mscc audit search: --limit must be between 1 and {audit_log.MAX_COUNT}", file=sys.stderr)
        return 2
    params = [(name, value) for name, value in (("entity", args.entity), ("agent", args.agent)) if value]
    params += [("date", f"ge{args.since}")] if args.since else []
    params += [("date", f"lt{args.until}")] if args.until else []
    try:
        query = audit_log.parse_params([*params, ("_count", str(args.limit))])
    except FhirError as exc:
        print(f"mscc audit search: {exc} (--since/--until take 2026-01-31 or 2026-01-31T09:00:00Z)", file=sys.stderr)
        return 2
    from .runner import run  # the event loop only for this command: the parser stays light

    return run(_search(settings, query, args.json))


async def _search(settings: Settings, query: audit_log.AuditQuery, as_json: bool) -> int:
    from .runner import database

    async with database(settings) as uri:
        client = connect(uri)
        try:
            total, docs = await audit_log.search(Store(client, settings.db_name).audit, query)
        finally:
            await client.close()
    events = [doc["resource"] for doc in docs]
    if as_json:
        print(json.dumps(events, indent=2))
        return 0
    print(table([row(e) for e in events]))
    print(f"{len(events)} of {total} event(s)" + (", newest first" if events else ""))
    return 0


def row(event: dict[str, Any]) -> tuple[str, ...]:
    """One table row: who (client, ODS code, address), what (interaction, resources), when, outcome."""
    client = event["agent"][0]
    who = client.get("who", {})
    refs = [_entity_text(e) for e in event.get("entity", [])]
    shown = ", ".join(refs[:3]) + (f" (+{len(refs) - 3})" if len(refs) > 3 else "")
    return (
        event["recorded"],
        event["action"],
        event["subtype"][0]["code"],
        event["outcome"],
        who.get("display", ""),
        who.get("identifier", {}).get("value", ""),
        client.get("network", {}).get("address", ""),
        shown,
        event.get("outcomeDesc", ""),
    )


def _entity_text(entity: dict[str, Any]) -> str:
    what = entity.get("what", {})
    if "reference" in what:
        return str(what["reference"])
    if "identifier" in what:
        return f"record {what['identifier']['value']}"
    if "query" in entity:
        return "query " + base64.b64decode(entity["query"]).decode("utf-8", errors="replace")
    return "?"


def table(rows: list[tuple[str, ...]]) -> str:
    """Rows under ``HEADERS``, columns padded to their widest cell (the last column left ragged)."""
    lines = [HEADERS, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADERS) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(line, widths, strict=False)), line[-1]]).rstrip()
        for line in lines
    )
