"""``mscc messages``: find stored messages, see what became of one, reprocess after a fix, and decide
the ones held for a patient conflict.

It works on the hub's database (``MONGODB_URI``, else the local MongoDB of ``MSCC_STATE_DIR``), so it is
for operators on the hub's own host. Tables start with a header row; ``--json`` prints one JSON object
per line (``show``: one object) for scripts. Text shown (reasons, issues, the message itself) has NHS
numbers masked unless ``--unmask`` is given. Exit codes: 0 done, 1 a record missing or not processed
(the message says why), 2 an option to correct.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from shared import review as held_messages
from shared.message_query import WHEN_HELP, FilterError, MessageFilter, MessageRow, search
from shared.message_trace import instant, masked, render, segments, to_json, trace
from shared.messages import MessageRecord
from shared.settings import Settings
from shared.store import Store

from .intake.reprocess import Outcome, Reprocessor, by_ids, plan, select

MAX_LIMIT = 10_000
HELP = "find stored messages, see what became of one, reprocess after a fix, decide held ones"
DESCRIPTION = """Stored messages: every message the hub received (HL7v2, FHIR), with what became of it:
find them, see one, reprocess after a fix, decide those held for a patient conflict."""
EXAMPLES = {
    "messages": """Examples:
  mscc messages search --status rejected --since 2h
  mscc messages show 5f0c1e7d9a8b4c3d2e1f0a9b8c7d6e5f --raw
  mscc messages reprocess --status failed --since 1d --dry-run
  mscc messages review""",
    "search": """Examples:
  mscc messages search                                   # the newest 20 records
  mscc messages search --status rejected,failed --since 3d
  mscc messages search --sender RBL --type 'REF^I12' --since 2026-01-31 --until 2026-02-01
  mscc messages search --type 'ADT^*' --limit 100
  mscc messages search --type fhir:Bundle --json         # one JSON object per line
  mscc messages search --control-id MSG0001
  mscc messages search --text 'Suspected MSCC' --since 1d   # a scan: narrow it with other filters""",
    "show": """Examples:
  mscc messages show 5f0c1e7d9a8b4c3d2e1f0a9b8c7d6e5f
  mscc messages show 5f0c1e7d9a8b4c3d2e1f0a9b8c7d6e5f --raw      # the message, one segment a line
  mscc messages show 5f0c1e7d9a8b4c3d2e1f0a9b8c7d6e5f --json | jq .resources""",
    "reprocess": """Examples:
  mscc messages reprocess 5f0c1e7d9a8b4c3d2e1f0a9b8c7d6e5f
  mscc messages reprocess --status failed --since 1d --dry-run   # what would be done
  mscc messages reprocess --status rejected --sender RBL --since 2h

rejected records go through intake again; failed and dead ones are queued for the mapper as a copy
(keeping their arrival time). The original stays, with reprocessed_as; the new record has reprocess_of.""",
    "review": """Examples:
  mscc messages review
  mscc messages review --json""",
    "apply": """Examples:
  mscc messages apply 5f0c1e7d9a8b4c3d2e1f0a9b8c7d6e5f --by 'Dr A Smith'""",
    "reject": """Examples:
  mscc messages reject 5f0c1e7d9a8b4c3d2e1f0a9b8c7d6e5f --reason 'wrong patient: sender to correct' --by asmith""",
}


def operator() -> str:
    """The login name of whoever runs the command (recorded on the records they decide or reprocess)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown operator"


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--status", action="append", help="ready, mapped, rejected, failed, dead, needs-review... (repeat or a,b)"
    )
    parser.add_argument("--sender", help="the sending facility (MSH-4) or the calling client's ODS code, e.g. RBL")
    parser.add_argument("--type", help="REF^I12, ADT (or ADT^*: every ADT event), fhir:Bundle, fhir:ServiceRequest")
    parser.add_argument("--since", help=f"received at or after: {WHEN_HELP}")
    parser.add_argument("--until", help="received before: the same forms (a date: before that day starts)")


def add_parser(sub: Any) -> None:
    """Register ``mscc messages`` and its actions on the CLI's subparsers."""
    messages = sub.add_parser(
        "messages",
        help=HELP,
        description=DESCRIPTION,
        epilog=EXAMPLES["messages"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = messages.add_subparsers(dest="messages_action", required=True, metavar="ACTION")

    def action(name: str, text: str, aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(
            name,
            aliases=list(aliases),
            help=text,
            description=text,
            epilog=EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return parser

    found = action("search", "find stored messages: a table with a header row, newest first", aliases=["list"])
    _filters(found)
    found.add_argument("--control-id", help="the sender's control id (MSH-10)")
    found.add_argument("--id", action="append", help="a record id (repeat or a,b)")
    found.add_argument("--text", help="a piece of the message as received; a scan of the records the others leave")
    found.add_argument("--limit", type=int, default=20, help=f"at most this many (1-{MAX_LIMIT}, default 20)")
    found.add_argument("--json", action="store_true", help="one JSON object per line")
    found.add_argument("--raw", action="store_true", help="the message too (with --json: a 'raw' field)")
    found.add_argument("--unmask", action="store_true", help="show NHS numbers as they are (masked by default)")

    show = action("show", "one record: header, trace, resources produced, outbox events and deliveries, links")
    show.add_argument("record", help="the record id (from 'mscc messages search')")
    show.add_argument("--raw", action="store_true", help="the message as received, one segment a line")
    show.add_argument("--json", action="store_true", help="one JSON object")
    show.add_argument("--unmask", action="store_true", help="show NHS numbers as they are (masked by default)")

    again = action("reprocess", "run rejected, failed or dead records again after a fix, keeping their history")
    again.add_argument("records", nargs="*", metavar="ID", help="record ids (or select with --status)")
    _filters(again)
    again.add_argument("--limit", type=int, default=100, help="at most this many selected, oldest first (default 100)")
    again.add_argument("--dry-run", action="store_true", help="say what would be done; change nothing")
    again.add_argument("--json", action="store_true", help="one JSON object per record")
    again.add_argument("--by", help="who reprocesses (default: the login name)")

    held = action("review", "list the messages held for a patient conflict, oldest first, with the conflicts")
    held.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    held.add_argument("--json", action="store_true", help="one JSON object per line")
    apply = action("apply", "write a held message despite its conflict (it is queued for the mapper again)")
    apply.add_argument("record", help="the held record's id (from 'mscc messages review')")
    apply.add_argument("--by", help="who decides (default: the login name)")
    reject = action("reject", "close a held message with the reason: nothing from it is written; it is kept")
    reject.add_argument("record", help="the held record's id (from 'mscc messages review')")
    reject.add_argument("--reason", help="why it is rejected (required)")
    reject.add_argument("--by", help="who decides (default: the login name)")


def _fail(action: str, message: str, code: int) -> int:
    print(f"mscc messages {action}: {message}", file=sys.stderr)
    return code


def command(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``mscc messages ...``; options are checked before the database is opened."""
    from .runner import opened_store, run

    name: str = "search" if args.messages_action == "list" else args.messages_action
    limit = getattr(args, "limit", 1)
    if not 1 <= limit <= MAX_LIMIT:
        return _fail(name, f"--limit must be between 1 and {MAX_LIMIT}", 2)
    try:
        where = MessageFilter.from_options(args)
    except FilterError as exc:
        return _fail(name, str(exc), 2)
    if name == "reprocess" and not args.records and not where.statuses:
        return _fail(name, "name the records (ids) or select them with --status (e.g. --status failed)", 2)
    filtered = where.statuses or where.since or where.until or where.sender or where.type
    if name == "reprocess" and args.records and filtered:
        return _fail(name, "give record ids or filters (--status ...), not both", 2)
    if name == "reject" and not (args.reason or "").strip():
        return _fail(name, "give the reason (--reason ...)", 2)

    async def go() -> int:
        async with opened_store(settings) as store:
            if name == "search":
                return await _search(store, where, args)
            if name == "show":
                return await _show(store, args)
            if name == "reprocess":
                return await _reprocess(settings, store, where, args)
            return await _review(store, name, args)

    return run(go())


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Rows under a header row, columns padded to their widest cell (the last one left ragged)."""
    lines = [tuple(headers), *(tuple(r) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers) - 1)]
    return ["  ".join([*(c.ljust(w) for c, w in zip(line, widths, strict=False)), line[-1]]).rstrip() for line in lines]


def _json_line(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, default=str))


async def _search(store: Store, where: MessageFilter, args: argparse.Namespace) -> int:
    docs = await search(store, where, args.limit, with_text=args.raw)
    records = [MessageRecord.from_doc(doc) for doc in docs]
    rows = [MessageRow.of(r, unmask=args.unmask) for r in records]
    if args.json:
        for record, row in zip(records, rows, strict=True):
            item = row.to_json()
            if args.raw:
                item["raw"] = masked("\r".join(segments(record)) + "\r", args.unmask)
            _json_line(item)
        return 0
    lines = table(MessageRow.HEADERS, [row.cells() for row in rows])
    print(lines[0])
    for record, line in zip(records, lines[1:], strict=True):
        print(line)
        if args.raw:
            for segment in segments(record):
                print(f"    {masked(segment, args.unmask)}")
    more = " (the limit: --limit for more)" if len(rows) == args.limit else ""
    print(f"{len(rows)} record(s), newest first{more}" if rows else "no record matches")
    return 0


async def _show(store: Store, args: argparse.Namespace) -> int:
    found = await trace(store, args.record)
    if found is None:
        return _fail("show", f"no record {args.record} (see 'mscc messages search')", 1)
    if args.json:
        print(json.dumps(to_json(found, unmask=args.unmask, raw=args.raw), ensure_ascii=False, indent=2, default=str))
    else:
        print("\n".join(render(found, unmask=args.unmask, raw=args.raw)))
    return 0


async def _reprocess(settings: Settings, store: Store, where: MessageFilter, args: argparse.Namespace) -> int:
    missing: list[str] = []
    if args.records:
        records, missing = await by_ids(store, list(dict.fromkeys(args.records)))
    else:
        records = await select(store, where, args.limit)
    by = args.by or operator()
    outcomes: list[Outcome] = []
    async with Reprocessor(settings, store, by) as reprocessor:
        for record in records:
            if args.dry_run:
                outcomes.append(plan(record, raw_kept=record.raw is not None))
            else:
                outcomes.append(await reprocessor.run(record))
    outcomes += [Outcome(i, "", "none", False, note="no such record") for i in missing]
    if args.json:
        for outcome in outcomes:
            _json_line({**outcome.to_json(), "dry_run": args.dry_run})
    else:
        _print_outcomes(outcomes, args.dry_run)
    refused = [o for o in outcomes if o.action == "none" or (not args.dry_run and not o.done)]
    return 1 if refused else 0


def _print_outcomes(outcomes: list[Outcome], dry_run: bool) -> None:
    if not outcomes:
        print("no record matches (records reprocessed before are not selected again)")
        return
    rows = []
    for o in outcomes:
        if o.action == "none":
            result = f"not reprocessed: {o.note}"
        elif dry_run:
            result = f"would be {'sent through intake again' if o.action == 'intake' else 'queued for the mapper'}"
        elif not o.done:
            result = f"not reprocessed: {o.note}"
        else:
            answer = f" ({o.answer})" if o.answer else ""
            result = f"{o.note}{answer} -> {', '.join(o.new_records) or 'no new record'}"
        rows.append((o.record, o.status or "-", o.action, _masked(result)))
    print("\n".join(table(("record", "status", "action", "result"), rows)))
    done = sum(1 for o in outcomes if o.done)
    skipped = sum(1 for o in outcomes if o.action == "none" or (not dry_run and not o.done))
    if dry_run:
        print(f"dry run: {len(outcomes) - skipped} would be reprocessed, {skipped} would not; nothing was changed")
    else:
        print(f"reprocessed {done} of {len(outcomes)} record(s); {skipped} not reprocessed")


def _masked(text: str) -> str:
    """Intake's answers can quote the message: masked like every other text shown."""
    return str(masked(text, False))


def _held_row(doc: dict[str, Any]) -> tuple[str, ...]:
    item = held_messages.summary(doc)
    conflicts = "; ".join(str(c) for c in item["conflicts"]) or "(no conflict recorded)"
    return (
        str(item["id"]),
        instant(item["received_at"]),
        str(item["sender"] or "?"),
        str(item["message_type"] or "?"),
        instant(item["held_at"]),
        _masked(conflicts),
    )


async def _review(store: Store, name: str, args: argparse.Namespace) -> int:
    """``review``: the held records (oldest first, conflicts with masked values); ``apply`` / ``reject``:
    decide one. 1 when the record does not exist or is not held."""
    if name == "review":
        docs = await held_messages.held(store, args.limit)
        if args.json:
            for doc in docs:
                item = held_messages.summary(doc)
                _json_line({k: instant(v) if isinstance(v, datetime) else v for k, v in item.items()})
            return 0
        if not docs:
            print("no message is waiting for review")
            return 0
        print("\n".join(table(("id", "received", "sender", "type", "held", "conflicts"), map(_held_row, docs))))
        print(f"{len(docs)} held record(s), oldest first")
        return 0
    by = args.by or operator()
    try:
        if name == "apply":
            await held_messages.apply(store, args.record, by, datetime.now(UTC))
            print(f"{args.record}: queued to be written despite the conflict (by {by})")
        else:
            await held_messages.reject(store, args.record, by, args.reason, datetime.now(UTC))
            print(f"{args.record}: rejected by {by}; nothing from it is written")
    except held_messages.ReviewError as exc:
        return _fail(name, str(exc), 1)
    return 0
