"""``mscc``: run the hub or one of its parts, manage the local MongoDB, inspect and reprocess messages."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from shared import mongod
from shared.logging import configure
from shared.settings import Settings

from . import audit_tools, clients_cli


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mscc", description="MSCC integration hub")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="run intake, the mapper and the notifier in one process against a local MongoDB it starts"
    )
    run.add_argument("--demo", action="store_true", help="send demo traffic once it is up")
    sub.add_parser("intake", help="run intake only (HTTP + MLLP)")
    mapper = sub.add_parser("mapper", help="run the mapper only")
    mapper.add_argument("--burst", action="store_true", help="drain what is ready, then exit")
    notifier = sub.add_parser("notifier", help="run the notifier only (subscription fan-out and deliveries)")
    notifier.add_argument("--burst", action="store_true", help="fan out what is ready, deliver what is due, then exit")
    db = sub.add_parser("db", help="the local MongoDB (ignored when MONGODB_URI is set)")
    db.add_argument("action", choices=["start", "stop", "status"])
    messages = sub.add_parser(
        "messages", help="inspect and reprocess stored messages; review those held for a patient conflict"
    )
    messages.add_argument("action", choices=["list", "show", "reprocess", "review", "apply", "reject"])
    messages.add_argument("record", nargs="?", help="record id (show, reprocess, apply, reject)")
    messages.add_argument("--status", help="list only this status (ready, rejected, needs-review, ...)")
    messages.add_argument("--limit", type=int, default=20)
    messages.add_argument("--reason", help="why the held message is rejected (reject: required)")
    messages.add_argument("--by", help="who decides (apply, reject; default: the login name)")
    replay = sub.add_parser("replay", help="send HL7v2 files (one message, batches or message logs) over MLLP")
    replay.add_argument("files", nargs="+")
    replay.add_argument("--host", default="127.0.0.1")
    replay.add_argument("--port", type=int, help="MLLP port (default: MSCC_MLLP_PORT)")
    audit_tools.add_parser(sub)
    clients_cli.add_parser(sub)
    return parser


def _db(settings: Settings, action: str) -> int:
    if settings.mongodb_uri:
        print(f"MONGODB_URI is set ({settings.mongodb_uri}): the hub uses that server, not a local one")
        return 0
    if action == "start":
        state = mongod.start_daemon(
            settings.state_dir, settings.cache_dir, settings.mongod_cache_gb, settings.mongod_transaction_lifetime_s
        )
        print(f"local MongoDB running: {state.uri} (pid {state.pid}, data {state.dbpath})")
    elif action == "stop":
        stopped = mongod.stop_daemon(settings.state_dir)
        print("stopped" if stopped else "no local MongoDB was running")
    else:
        running = mongod.read_state(settings.state_dir)
        print(f"running: {running.uri} (pid {running.pid})" if running else "not running")
        return 0 if running else 3
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"mscc: configuration error:\n{exc}", file=sys.stderr)
        return 2
    configure(settings)
    try:
        return _dispatch(args, settings)
    except mongod.MongodError as exc:
        print(f"mscc: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a configuration file (MSCC_SENDERS_FILE, MSCC_MAPPING_FILE) is wrong
        print(f"mscc: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    from . import runner, tools

    if args.command == "run":
        runner.run(runner.serve(settings, demo=args.demo))
        return 0
    if args.command == "intake":
        runner.run(runner.serve(settings, parts=("intake",)))
        return 0
    if args.command == "mapper":
        if args.burst:
            stats = runner.run(runner.drain(settings))
            print(f"mapped {stats.mapped}, failed {stats.failed}, retrying {stats.retried}, dead {stats.dead}")
            return 0
        runner.run(runner.serve(settings, parts=("mapper",)))
        return 0
    if args.command == "notifier":
        if args.burst:
            print(runner.run(runner.drain_notifier(settings)).summary())
            return 0
        runner.run(runner.serve(settings, parts=("notifier",)))
        return 0
    if args.command == "db":
        return _db(settings, args.action)
    if args.command == "messages":
        if args.action in ("review", "apply", "reject"):
            decision = tools.Decision(args.record, args.by or tools.operator(), args.reason or "")
            return runner.run(tools.review(settings, args.action, decision, args.limit))
        return runner.run(tools.messages(settings, args.action, args.record, args.status, args.limit))
    if args.command == "replay":
        return runner.run(tools.replay(args.files, args.host, args.port or settings.mllp_port))
    if args.command == "audit":
        return audit_tools.command(args, settings)
    if args.command == "clients":
        return clients_cli.command(args, settings)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
