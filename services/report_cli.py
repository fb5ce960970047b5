"""``mscc report timeliness``: the NICE NG234 timeliness audit of one month, for the MSCC team's operators.

It reads the hub's database directly (found as ``mscc messages`` finds it), so it sees every trust; the
same figures reach a trust through ``GET /fhir/MeasureReport/$timeliness``, limited to its own. What is
counted, and how, is ``services/pathway/timeliness.py`` (and docs/pathway.md, "Timeliness audit").
Output: a table (one row per referring trust, then all trusts) and the slowest cases; ``--json`` the
same as one JSON object; ``--csv FILE`` the table's figures as CSV, one row per trust.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.settings import Settings
from shared.store import Store, connect
from shared.visibility import EVERYTHING, trust_code

from .pathway.measure_report import MEASURE_URL
from .pathway.record import fhir_time
from .pathway.table import window, window_label
from .pathway.timeliness import (
    GROUPS,
    NO_SIGNS,
    NOTES,
    PLAN,
    SIGNS,
    TIMES,
    Case,
    Figures,
    Month,
    Report,
    timeliness_report,
)

EXAMPLES = """examples:
  mscc report timeliness --month 2026-11                 # every trust: a table, then the slowest cases
  mscc report timeliness --month 2026-11 --trust RBL     # one referring trust (ODS code)
  mscc report timeliness --month 2026-11 --csv nov.csv   # also write the figures as CSV
  mscc report timeliness --month 2026-11 --json          # one JSON object instead of the table"""
CSV_HEADERS = (
    "month", "trust", "referrals", "cancelled", "counted",
    *(f"{g}-{part}" for g in GROUPS
      for part in ("population", "denominator", "numerator", "percent", "breaches", "open-late", "pending")),
    *(f"{t}-{part}" for t in TIMES for part in ("count", "median-hours", "p90-hours")),
)  # fmt: skip
CASE_HEADERS = ("referral", "trust", "received", "window", "mri reported", "mri", "plan agreed", "plan", "past by")


def add_parser(sub: Any) -> None:
    """Register ``mscc report`` on the CLI's subparsers."""
    report = sub.add_parser("report", help="audit reports (timeliness: MRI and plan within their NICE windows)")
    kinds = report.add_subparsers(dest="report_kind", required=True)
    text = "the NICE NG234 timeliness audit of one month: MRI within 24 hours / 7 days, plan within 24 hours"
    timeliness = kinds.add_parser(
        "timeliness", help=text, description=text, epilog=EXAMPLES, formatter_class=argparse.RawTextHelpFormatter
    )
    timeliness.add_argument("--month", required=True, help="the calendar month of first contact, YYYY-MM")
    timeliness.add_argument("--trust", help="only this referring trust (its ODS code)")
    timeliness.add_argument("--csv", type=Path, metavar="FILE", help="also write the figures to FILE as CSV")
    timeliness.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    timeliness.add_argument("--slowest", type=int, default=10, help="how many slowest cases to list (default 10)")


def command(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``mscc report timeliness``: 0 done (even with no referral), 2 an argument or file to fix."""
    try:
        month = Month.parse(args.month)
    except ValueError as exc:
        print(f"mscc report timeliness: --month {exc}", file=sys.stderr)
        return 2
    if args.slowest < 0:
        print("mscc report timeliness: --slowest must be 0 or more", file=sys.stderr)
        return 2
    if args.trust is not None and trust_code(args.trust) is None:
        print("mscc report timeliness: --trust needs an ODS code, e.g. RBL", file=sys.stderr)
        return 2
    from .runner import run  # the event loop only for this command: the parser stays light

    return run(_report(settings, month, args))


async def _report(settings: Settings, month: Month, args: argparse.Namespace) -> int:
    from .runner import database

    async with database(settings) as uri:
        client = connect(uri)
        try:
            report = await timeliness_report(
                Store(client, settings.db_name),
                month,
                datetime.now(UTC),
                zone=settings.service_time_zone,
                visibility=EVERYTHING,
                trust=trust_code(args.trust),
                limit=args.slowest,
            )
        finally:
            await client.close()
    if args.csv is not None:
        try:
            with args.csv.open("w", newline="", encoding="utf-8") as out:
                csv.writer(out).writerows([CSV_HEADERS, *csv_rows(report)])
        except OSError as exc:
            print(f"mscc report timeliness: cannot write --csv {args.csv}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(as_json(report), indent=2))
    else:
        print(text(report))
    return 0


def _hours(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _figures_json(figures: Figures) -> dict[str, Any]:
    groups = {}
    for key, group in figures.groups.items():
        groups[key] = {
            "population": group.population,
            "denominator": group.denominator,
            "numerator": group.numerator,
            "score": None if group.score is None else round(group.score, 4),
            "breaches": group.breaches,
            "outcomes": dict(sorted(group.outcomes.items())),
        }
    times = {
        key: {"count": d.count, "median_hours": _hours(d.median_hours), "p90_hours": _hours(d.p90_hours)}
        for key, d in figures.times.items()
    }
    return {
        "trust": figures.trust,
        "referrals": figures.referrals,
        "cancelled": figures.cancelled,
        "counted": figures.counted,
        "groups": groups,
        "times": times,
    }


def _case_json(item: Case) -> dict[str, Any]:
    t = item.times
    return {
        "referral": t.referral_id,
        "trust": t.trust,
        "neurological": t.neurological,
        "window": item.window,
        "received": fhir_time(t.received),
        "mri_reported": fhir_time(t.mri_at) if t.mri_at else None,
        "plan_agreed": fhir_time(t.plan_at) if t.plan_at else None,
        "step": t.step,
        "mri": item.mri,
        "plan": item.plan,
        "past_deadline_hours": round(item.overrun.total_seconds() / 3600, 2),
    }


def as_json(report: Report) -> dict[str, Any]:
    """The report as one JSON object: the month, the notes on what is counted, every stratum, the cases."""
    return {
        "measure": MEASURE_URL,
        "month": str(report.month),
        "time_zone": report.zone,
        "start": fhir_time(report.start),
        "end": fhir_time(report.end),
        "generated": fhir_time(report.generated),
        "trust": report.trust,
        "windows": {SIGNS: window_label(window("present")), NO_SIGNS: window_label(window("absent")), PLAN: "24 hours"},
        "notes": list(NOTES),
        "all": _figures_json(report.total),
        "trusts": [_figures_json(f) for f in report.trusts],
        "slowest": [_case_json(c) for c in report.slowest],
    }


def _cell(value: float | int | None) -> str:
    return "" if value is None else str(value)


def csv_rows(report: Report) -> list[list[str]]:
    """One row per trust, then one for all trusts (trust ``all``), under ``CSV_HEADERS``."""
    rows = []
    for figures in [*report.trusts, report.total]:
        row = [str(report.month), figures.trust or "all", str(figures.referrals), str(figures.cancelled),
               str(figures.counted)]  # fmt: skip
        for key in GROUPS:
            g = figures.groups[key]
            percent = None if g.score is None else round(100 * g.score, 1)
            outcomes = (g.outcomes.get("open-late", 0), g.outcomes.get("pending", 0))
            row += [_cell(v) for v in (g.population, g.denominator, g.numerator, percent, g.breaches, *outcomes)]
        for key in TIMES:
            d = figures.times[key]
            row += [_cell(d.count), _cell(_hours(d.median_hours)), _cell(_hours(d.p90_hours))]
        rows.append(row)
    return rows


def _share(figures: Figures, key: str) -> str:
    g = figures.groups[key]
    if g.score is None:
        return f"-/- ({g.population - g.denominator} not counted)" if g.population else "-"
    shown = f"{g.numerator}/{g.denominator} ({100 * g.score:.0f}%)"
    return shown + (f", {g.outcomes['open-late']} open-late" if g.outcomes.get("open-late") else "")


def _time(figures: Figures, key: str) -> str:
    d = figures.times[key]
    if d.median_hours is None or d.p90_hours is None:
        return "-"
    return f"{d.median_hours:.1f} h / {d.p90_hours:.1f} h"


def table(headers: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    """Rows under ``headers``, each column as wide as its widest cell."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = [headers, *rows]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def text(report: Report) -> str:
    """The table of figures, what is counted and how, and the slowest cases."""
    mri_signs = f"MRI <= {window_label(window('present'))} (signs/unknown)"
    mri_none = f"MRI <= {window_label(window('absent'))} (no signs)"
    headers = ("trust", "referrals", "cancelled", mri_signs, mri_none, "plan <= 24 h of MRI",
               "referral->MRI median / p90", "MRI->plan median / p90")  # fmt: skip
    rows = [
        (
            f.trust or "all",
            str(f.referrals),
            str(f.cancelled),
            _share(f, SIGNS),
            _share(f, NO_SIGNS),
            _share(f, PLAN),
            _time(f, "referral-to-mri"),
            _time(f, "mri-to-plan"),
        )
        for f in [*report.trusts, report.total]
    ]
    title = f"MSCC timeliness audit, {report.month} (first contact, {report.zone})"
    parts = [title + (f", trust {report.trust}" if report.trust else ""), table(headers, rows), ""]
    parts += [f"- {note}" for note in NOTES]
    if report.slowest:
        cases = [
            (
                c.times.referral_id,
                c.times.trust,
                fhir_time(c.times.received),
                c.window,
                fhir_time(c.times.mri_at) if c.times.mri_at else "-",
                c.mri,
                fhir_time(c.times.plan_at) if c.times.plan_at else "-",
                c.plan or "-",
                f"{c.overrun.total_seconds() / 3600:.1f} h" if c.overrun.total_seconds() > 0 else "-",
            )
            for c in report.slowest
        ]
        parts += ["", f"slowest {len(cases)} case(s), furthest past a deadline first:", table(CASE_HEADERS, cases)]
    return "\n".join(parts)
