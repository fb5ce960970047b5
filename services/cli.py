"""``mscc``: run the hub or one of its parts, manage the local MongoDB, inspect and reprocess messages."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from shared import mongod
from shared.logging import configure
from shared.settings import Settings

from . import audit_tools, cli_help, clients_cli, messages_cli, report_cli
from .replay import command as replay_command
from .signals import hold_stop_signals


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
    db.add_argument("--json", action="store_true", help="status: one JSON object (running, uri, pid, port, dbpath)")
    messages_cli.add_parser(sub)
    replay_command.add_parser(sub)
    audit_tools.add_parser(sub)
    clients_cli.add_parser(sub)
    report_cli.add_parser(sub)
    cli_help.document(parser, sub.choices)
    return parser


def _db(settings: Settings, action: str, as_json: bool = False) -> int:
    if settings.mongodb_uri and as_json and action == "status":
        print(json.dumps({"running": None, "external": True, "uri": settings.mongodb_uri}))
        return 0
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
        if as_json:
            shown: dict[str, object] = {"running": running is not None}
            if running:
                shown.update(uri=running.uri, pid=running.pid, port=running.port, dbpath=str(running.dbpath))
            print(json.dumps(shown))
            return 0 if running else 3
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
    if args.command in ("run", "intake", "mapper", "notifier"):
        hold_stop_signals()  # a SIGTERM while starting stops the process cleanly once it has started
    from . import runner

    if args.command == "run":
        runner.run(runner.serve(settings, demo=args.demo))
        return 0
    if args.command == "intake":
        runner.run(runner.serve(settings, parts=("intake",)))
        return 0
    if args.command == "mapper":
        if args.burst:
            stats = runner.run(runner.drain(settings))
            print(
                f"mapped {stats.mapped}, failed {stats.failed}, retrying {stats.retried}, dead {stats.dead}, "
                f"held for review {stats.held}"
            )
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
        return _db(settings, args.action, args.json)
    if args.command == "messages":
        return messages_cli.command(args, settings)
    if args.command == "replay":
        return replay_command.command(args, settings)
    if args.command == "audit":
        return audit_tools.command(args, settings)
    if args.command == "clients":
        return clients_cli.command(args, settings)
    if args.command == "report":
        return report_cli.command(args, settings)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
