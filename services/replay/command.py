"""``mscc replay``: the command line of the replay tool (its arguments, their checks, the exit status).

Exit status: 0 when every message was positively acknowledged (or, with ``--dry-run``, would map), 1
when any was not, 2 when the command cannot run as given (the message says what to fix).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from shared.settings import Settings

from .auth import Credentials, load_private_key
from .engine import Options, Replay
from .files import Source, UsageError, sources
from .summary import DEFAULT_FAILURES

SECRET_ENV = "MSCC_REPLAY_CLIENT_SECRET"
DESCRIPTION = "Replay message logs to the hub (HL7v2 over MLLP or HTTP, FHIR NDJSON over HTTP)."
EPILOG = f"""inputs (files, or folders read recursively; .gz files are read as gzip):
  ER7 message logs (CR, LF or CRLF; several messages, blank lines between), MLLP captures
  (VT ... FS CR), batch files (FHS/BHS ... BTS/FTS: one batch, or each message with --split-batches),
  NDJSON of FHIR resources or Bundles (.ndjson, .jsonl: --http only)

examples:
  mscc replay logs/rbl-2026-01.hl7                        # over MLLP to MSCC_MLLP_PORT on 127.0.0.1
  mscc replay logs/ --host hub.example.nhs.uk --port 2575 --concurrency 4 --rate 200
  mscc replay capture.mllp.gz --split-batches --resume rbl.journal   # a rerun skips what was acknowledged
  mscc replay referrals.ndjson adt.hl7 --http https://hub.example.nhs.uk \\
      --client-id 3f2c... --private-key rbl-engine.pem   # or --client-secret / {SECRET_ENV}
  mscc replay logs/ --dry-run                             # what the mapping would produce; nothing is sent

exit status: 0 all acknowledged (AA/CA, 2xx), 1 any failure (each in the --failures file with its
reason), 2 a usage error"""


def add_parser(sub: Any) -> None:
    """Register ``mscc replay`` on the CLI's subparsers."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "replay",
        help="replay message logs to the hub (HL7v2 over MLLP or HTTP, FHIR NDJSON over HTTP)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files or folders to replay")
    where = parser.add_argument_group("where to")
    where.add_argument("--host", default="127.0.0.1", help="MLLP host (default: 127.0.0.1)")
    where.add_argument("--port", type=int, help="MLLP port (default: MSCC_MLLP_PORT)")
    where.add_argument("--http", metavar="URL", help="send over HTTP to the hub at URL instead of MLLP")
    auth = parser.add_argument_group("authentication (--http; none: the development client on loopback)")
    auth.add_argument("--client-id", help="the client id registered with 'mscc clients add'")
    auth.add_argument("--client-secret", help=f"its secret (better: the environment variable {SECRET_ENV})")
    auth.add_argument("--private-key", type=Path, metavar="FILE", help="its PEM private key (private_key_jwt)")
    auth.add_argument("--key-id", help="the key id (kid) of that key, for a client registered by a JWKS URL")
    auth.add_argument("--scope", help="the scopes to ask for (default: all the client's)")
    how = parser.add_argument_group("how")
    how.add_argument("--split-batches", action="store_true", help="send each message of a batch on its own")
    how.add_argument("--rate", type=float, metavar="N", help="at most N messages per second, evenly spaced")
    how.add_argument("--concurrency", type=int, default=1, metavar="N", help="connections or requests at once")
    how.add_argument("--window", type=int, default=8, metavar="N", help="MLLP messages in flight per connection")
    how.add_argument("--timeout", type=float, default=30.0, metavar="S", help="seconds to wait for an answer")
    how.add_argument("--dry-run", action="store_true", help="map locally and report; send nothing")
    how.add_argument("--resume", type=Path, metavar="JOURNAL", help="skip what this journal says was acknowledged")
    out = parser.add_argument_group("output")
    out.add_argument(
        "--failures",
        type=Path,
        metavar="FILE",
        help=f"JSONL of every failure (default: {DEFAULT_FAILURES} here, written only when something fails)",
    )
    out.add_argument("--json", action="store_true", help="print the summary as JSON")
    out.add_argument("--quiet", action="store_true", help="no progress line")


def command(args: argparse.Namespace, settings: Settings) -> int:
    try:
        found = sources(args.paths)
        if args.dry_run:
            return _dry_run(args, settings, found)
        options = _options(args, settings, found)
        return asyncio.run(Replay(options, found, sys.stdout, sys.stderr).run())
    except UsageError as exc:
        print(f"mscc replay: {exc}", file=sys.stderr)
        return 2
    except ConnectionError as exc:
        print(f"mscc replay: {exc}", file=sys.stderr)
        return 1


def _dry_run(args: argparse.Namespace, settings: Settings, found: list[Source]) -> int:
    from services.mapper.service import load_mapping

    from .dry_run import DryRun

    report = DryRun(settings, load_mapping(settings.mapping_file)).run(found)
    print(json.dumps(report.to_json(), indent=2) if args.json else report.text())
    return 1 if report.failed else 0


def _options(args: argparse.Namespace, settings: Settings, found: list[Source]) -> Options:
    if args.http and args.port is not None:
        raise UsageError("give either --port (MLLP) or --http URL (HTTP), not both")
    if args.http and not args.http.startswith(("http://", "https://")):
        raise UsageError(f"--http {args.http}: give the hub's base URL, e.g. http://127.0.0.1:8080")
    for name, value, low in (("--rate", args.rate, 0.0), ("--timeout", args.timeout, 0.0)):
        if value is not None and value <= low:
            raise UsageError(f"{name} must be above {low:g}")
    for name, count in (("--concurrency", args.concurrency), ("--window", args.window)):
        if count < 1:
            raise UsageError(f"{name} must be at least 1")
    fhir = [s.name for s in found if s.ndjson]
    if fhir and not args.http:
        raise UsageError(f"{fhir[0]} holds FHIR (NDJSON), which travels over HTTP only: add --http URL")
    return Options(
        host=args.host,
        port=args.port if args.port is not None else settings.mllp_port,
        http=args.http.rstrip("/") if args.http else None,
        credentials=_credentials(args),
        split_batches=args.split_batches,
        rate=args.rate,
        concurrency=args.concurrency,
        window=args.window,
        timeout_s=args.timeout,
        resume=args.resume,
        failures=args.failures,
        json=args.json,
        quiet=args.quiet,
    )


def _credentials(args: argparse.Namespace) -> Credentials | None:
    secret = args.client_secret or (None if args.private_key else os.environ.get(SECRET_ENV))
    if args.client_id is None:
        if args.client_secret or args.private_key:
            raise UsageError("--client-secret and --private-key need --client-id")
        return None
    if not args.http:
        raise UsageError("--client-id authenticates over HTTP: add --http URL")
    if args.client_secret and args.private_key:
        raise UsageError("give --client-secret or --private-key, not both")
    if args.private_key:
        return Credentials(args.client_id, None, load_private_key(args.private_key), args.key_id, args.scope)
    if not secret:
        raise UsageError(f"--client-id needs --client-secret, {SECRET_ENV} or --private-key")
    return Credentials(args.client_id, secret, None, None, args.scope)
