"""``mscc clients``: register, list, revoke and rotate the API's clients (``shared/clients.py``).

It works on the database of the hub (found as ``mscc messages`` finds it: ``MONGODB_URI``, else the local
MongoDB of ``MSCC_STATE_DIR``), so it is for operators on the hub's own host. A secret is printed once,
when the client is added or rotated; only its hash is stored.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from shared.clients import ClientError, ClientRecord, ClientRegistry
from shared.settings import Settings
from shared.store import Store, connect

# What a referring trust's engine needs when no --scope is given: read and search, send referrals (FHIR
# and HL7v2), move or cancel its referrals, manage its Subscriptions.
DEFAULT_SCOPES = [
    "system/*.rs",
    "system/ServiceRequest.cu",
    "system/Bundle.c",
    "system/Subscription.cud",
    "system/hl7v2.c",
]
HEADERS = ("name", "client_id", "ods", "auth", "keys", "scopes", "status")
EXAMPLES = {
    "add": """examples:
  mscc clients add rbl-engine --ods RBL                     # a secret client with the default scopes
  mscc clients add rbl-epr --ods RBL --scope system/ServiceRequest.crs --scope system/Patient.rs \\
      --public-key rbl-epr.pem                              # private_key_jwt with a PEM public key
  mscc clients add rjr-engine --ods RJR --jwks-url https://rjr.example.nhs.uk/jwks.json""",
    "list": """examples:
  mscc clients list
  mscc clients list --json""",
    "revoke": """examples:
  mscc clients revoke rbl-engine    # no new tokens; its tokens stop working within MSCC_AUTH_CLIENT_CACHE_S""",
    "rotate": """examples:
  mscc clients rotate rbl-engine    # prints the new secret once; the old one stops working at once""",
}


def add_parser(sub: Any) -> None:
    """Register ``mscc clients`` and its actions on the CLI's subparsers."""
    clients = sub.add_parser("clients", help="register, list, revoke and rotate the API's clients (OAuth 2.0)")
    actions = clients.add_subparsers(dest="clients_action", required=True)

    def action(name: str, text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(
            name, help=text, description=text, epilog=EXAMPLES[name], formatter_class=argparse.RawTextHelpFormatter
        )
        return parser

    add = action("add", "register a client: prints its client_id and, for a secret client, its secret (once)")
    add.add_argument("name", help="a unique name (letters, digits, '.', '_', '-')")
    add.add_argument("--ods", required=True, help="the ODS code of the organisation the client acts for")
    add.add_argument(
        "--scope",
        action="append",
        help="a SMART scope it may be granted (repeat, or space-separated); default: " + " ".join(DEFAULT_SCOPES),
    )
    keys = add.add_mutually_exclusive_group()
    keys.add_argument("--public-key", type=Path, help="PEM public key (RSA or EC) for private_key_jwt")
    keys.add_argument("--jwks-url", help="URL of the client's JWK set, for private_key_jwt")
    listing = action("list", "list the clients (a table; --json for JSON)")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    action("revoke", "revoke a client: it gets no token, and its tokens stop working").add_argument("name")
    action("rotate", "give a secret client a new secret (printed once); the old one stops working").add_argument("name")


def command(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``mscc clients ...``: 0 done, 1 refused (the message says why), 2 a file that cannot be read."""
    from .runner import run

    name: str = args.clients_action
    if name == "add":
        public_key = None
        if args.public_key is not None:
            try:
                public_key = args.public_key.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                print(f"mscc clients add: cannot read {args.public_key}: {exc}", file=sys.stderr)
                return 2
        scopes = [s for text in (args.scope or DEFAULT_SCOPES) for s in text.split()]
        return run(_with_registry(settings, name, lambda r: _add(r, args, scopes, public_key)))
    if name == "list":
        return run(_with_registry(settings, name, lambda r: _list(r, args.json)))
    if name == "revoke":
        return run(_with_registry(settings, name, lambda r: _revoke(r, args.name, settings)))
    return run(_with_registry(settings, name, lambda r: _rotate(r, args.name)))


async def _with_registry(settings: Settings, action: str, work: Callable[[ClientRegistry], Awaitable[None]]) -> int:
    from .runner import database

    async with database(settings) as uri:
        client = connect(uri)
        try:
            store = Store(client, settings.db_name)
            if action == "add":  # the unique index on names must exist before the first client is added
                await store.ensure_schema()
            await work(ClientRegistry(store))
        except ClientError as exc:
            print(f"mscc clients {action}: {exc}", file=sys.stderr)
            return 1
        finally:
            await client.close()
    return 0


async def _add(registry: ClientRegistry, args: argparse.Namespace, scopes: list[str], public_key: str | None) -> None:
    record, secret = await registry.add(args.name, args.ods, scopes, public_key_pem=public_key, jwks_url=args.jwks_url)
    shown: dict[str, Any] = {"client_id": record.client_id, **record.summary()}
    if secret is not None:
        shown["client_secret"] = secret
        print(
            "the client secret is shown this once: keep it now (mscc clients rotate gives a new one)", file=sys.stderr
        )
    print(json.dumps(shown, indent=2))


async def _list(registry: ClientRegistry, as_json: bool) -> None:
    records = await registry.all()
    if as_json:
        print(json.dumps([r.summary() for r in records], indent=2))
        return
    print(table([row(r) for r in records]))
    print(f"{len(records)} client(s)")


async def _revoke(registry: ClientRegistry, name: str, settings: Settings) -> None:
    record = await registry.revoke(name)
    print(
        f"client {record.name} ({record.client_id}) is revoked: it gets no token, and the tokens it holds stop "
        f"working within {settings.auth_client_cache_s:g} s"
    )


async def _rotate(registry: ClientRegistry, name: str) -> None:
    record, secret = await registry.rotate(name)
    print("the new secret is shown this once; the old one no longer works", file=sys.stderr)
    print(json.dumps({"client_id": record.client_id, "name": record.name, "client_secret": secret}, indent=2))


def row(record: ClientRecord) -> tuple[str, ...]:
    status = f"revoked {record.revoked_at:%Y-%m-%d %H:%M}" if record.revoked_at else "active"
    return (record.name, record.client_id, record.ods_code, record.auth_method, record.key_source,
            " ".join(record.scopes), status)  # fmt: skip


def table(rows: list[tuple[str, ...]]) -> str:
    """Rows under ``HEADERS``, each column as wide as its widest cell."""
    widths = [max(len(r[i]) for r in [HEADERS, *rows]) for i in range(len(HEADERS))]
    lines = [HEADERS, *rows]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)
