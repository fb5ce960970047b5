"""What ``mscc --help`` and ``mscc COMMAND --help`` say: one line on what each command is for, and
examples to copy. A command whose own module gives its description and examples keeps them; this fills
in the rest, so every command answers ``--help`` with both."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

TOP = """Examples:
  mscc run --demo                      # the whole hub on a laptop, with demo traffic
  mscc messages search --status rejected --since 2h
  mscc messages show <record id>
  mscc db status --json
  mscc COMMAND --help                  # each command's options and examples"""

# command -> (description, examples)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": (
        "Run intake (HTTP + MLLP), the mapper with the SLA scanner, and the notifier in one process, against "
        "MONGODB_URI or a local MongoDB it starts (and stops on exit). Ctrl-C or SIGTERM stops it cleanly.",
        """Examples:
  mscc run                                   # HTTP on MSCC_HTTP_PORT (8080), MLLP on MSCC_MLLP_PORT (2575)
  mscc run --demo                            # and send demo traffic once it is up
  MSCC_HTTP_PORT=9080 MSCC_MLLP_PORT=3575 mscc run""",
    ),
    "intake": (
        "Run intake only: the HTTP API (FHIR, POST /hl7v2, Subscriptions, review) and the MLLP listener.",
        """Examples:
  mscc intake
  MONGODB_URI=mongodb://db1,db2,db3/?replicaSet=rs0 mscc intake""",
    ),
    "mapper": (
        "Run the mapper only (with the SLA scanner and MRI-report follower): any number may run at once.",
        """Examples:
  mscc mapper                # until stopped
  mscc mapper --burst        # map what is ready, print the counts, exit""",
    ),
    "notifier": (
        "Run the notifier only: subscription fan-out and deliveries (rest-hook, MLLP), retried in order.",
        """Examples:
  mscc notifier
  mscc notifier --burst      # fan out what is ready, deliver what is due, exit""",
    ),
    "db": (
        "The local MongoDB for development, kept in MSCC_STATE_DIR (nothing to do when MONGODB_URI is set). "
        "status exits 0 when it runs, 3 when it does not.",
        """Examples:
  mscc db start
  mscc db status
  mscc db status --json      # {"running": true, "uri": ..., "pid": ...}
  mscc db stop""",
    ),
    "audit": (
        "Search the audit trail: who read, searched or wrote what, when, and with what outcome (newest first).",
        """Examples:
  mscc audit search --entity Patient/123 --since 2026-01-31
  mscc audit search --agent RBL --limit 100
  mscc audit search --since 2026-01-31T09:00:00Z --json""",
    ),
    "clients": (
        "Register, list, revoke and rotate the API's clients (OAuth 2.0 client credentials).",
        """Examples:
  mscc clients add rbl-engine --ods RBL
  mscc clients list --json
  mscc clients rotate rbl-engine
  mscc clients ACTION --help       # each action's options and examples""",
    ),
    "report": (
        "Audit reports for the MSCC team (timeliness: MRI and plan within their NICE windows).",
        """Examples:
  mscc report timeliness --help    # its options and examples""",
    ),
}


def document(parser: argparse.ArgumentParser, commands: Mapping[str, argparse.ArgumentParser]) -> None:
    """Give ``parser`` (``mscc``) and each command in ``commands`` a description and examples where it
    has none, laid out as written."""
    parser.epilog = parser.epilog or TOP
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    for name, command in commands.items():
        description, examples = COMMANDS.get(name, (None, None))
        if description is None or examples is None or command.epilog:
            continue
        command.description = command.description or description
        command.epilog = examples
        command.formatter_class = argparse.RawDescriptionHelpFormatter
