"""The NICE NG234 timeliness audit: the pure rules (windows, outcomes, months in BST and GMT, what is
counted), then real referrals end to end: HL7v2 REF^I12 through intake and the mapper, moved with
``$transition``, reported by the ``mscc report timeliness`` process (table, CSV, JSON) and as a
MeasureReport over the HTTP API, the two checked against each other and against the expected counts."""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from fhir.resources.R4B.measurereport import MeasureReport
from test_cli import mscc_env
from trusts import MSCC, client_as

from services.mapper.service import MapperService
from services.pathway.measure_report import MEASURE_URL, measure_report
from services.pathway.record import fhir_time
from services.pathway.timeliness import (
    NO_SIGNS,
    PLAN,
    SIGNS,
    Month,
    ReferralTimes,
    build_report,
    figures,
    mri_outcome,
    percentile,
    plan_outcome,
    slowest,
)
from shared.settings import Settings
from shared.store import Store

T0 = datetime(2026, 10, 5, 10, 0, tzinfo=UTC)
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
LONDON = ZoneInfo("Europe/London")
FHIR = {"Content-Type": "application/fhir+json"}
HL7 = {"Content-Type": "application/hl7-v2"}


def times(
    neuro: str = "present",
    mri: float | None = None,
    plan: float | None = None,
    ended: float | None = None,
    *,
    rid: str = "R1",
    trust: str = "RBL",
    cancelled: bool = False,
) -> ReferralTimes:
    """A referral received at T0 with its MRI, plan and end ``n`` hours after it (None: not reached)."""

    def at(h: float | None) -> datetime | None:
        return None if h is None else T0 + timedelta(hours=h)

    step = "cancelled" if cancelled else "discharged" if ended is not None else "received"
    return ReferralTimes(rid, trust, T0, neuro, step, at(mri), at(plan), at(ended), cancelled)


# --- the rules, table-driven ---------------------------------------------------------------------------

MRI_CASES = [
    # neurological, MRI after (h), now after (h), outcome
    ("present", 23, 100, "met"),
    ("present", 24, 100, "met"),  # exactly on the deadline is within it
    ("present", 25, 100, "late"),
    ("unknown", 23, 100, "met"),  # unknown takes the 24 hour window
    ("unknown", 25, 100, "late"),
    ("absent", 6 * 24, 200, "met"),
    ("absent", 25, 200, "met"),
    ("absent", 8 * 24, 200, "late"),
    ("present", None, 30, "open-late"),  # still open past its window: a breach
    ("present", None, 10, "pending"),
    ("absent", None, 72, "pending"),
    ("absent", None, 170, "open-late"),
]


@pytest.mark.parametrize(("neuro", "mri", "now", "expected"), MRI_CASES)
def test_mri_within_its_window(neuro: str, mri: float | None, now: float, expected: str) -> None:
    assert mri_outcome(times(neuro, mri), T0 + timedelta(hours=now)) == expected


@pytest.mark.parametrize(
    ("mri", "plan", "ended", "now", "expected"),
    [
        (10, 33, None, 100, "met"),  # 23 hours after the MRI
        (10, 35, None, 100, "late"),  # 25 hours
        (10, None, None, 100, "open-late"),
        (10, None, None, 20, "pending"),
        (10, None, 20, 100, "ended"),  # discharged within the window: not counted
        (10, None, 40, 100, "ended-late"),  # discharged after it: a breach
        (None, None, None, 100, None),  # no MRI: no plan clock
    ],
)
def test_plan_within_24_hours_of_the_mri(
    mri: float | None, plan: float | None, ended: float | None, now: float, expected: str | None
) -> None:
    assert plan_outcome(times("present", mri, plan, ended), T0 + timedelta(hours=now)) == expected


@pytest.mark.parametrize(
    ("ended", "expected"), [(10, "ended"), (30, "ended-late")]
)  # ended without an MRI: not counted within the window, a breach after it
def test_ended_without_mri(ended: float, expected: str) -> None:
    assert mri_outcome(times("present", None, None, ended), NOW) == expected


@pytest.mark.parametrize(
    ("month", "start", "end"),
    [
        ("2026-10", "2026-09-30T23:00:00+00:00", "2026-11-01T00:00:00+00:00"),  # BST to GMT (25 October)
        ("2026-03", "2026-03-01T00:00:00+00:00", "2026-03-31T23:00:00+00:00"),  # GMT to BST (29 March)
        ("2026-12", "2026-12-01T00:00:00+00:00", "2027-01-01T00:00:00+00:00"),  # across the year
        ("2026-07", "2026-06-30T23:00:00+00:00", "2026-07-31T23:00:00+00:00"),  # all BST
    ],
)
def test_month_bounds_are_local_midnights(month: str, start: str, end: str) -> None:
    assert Month.parse(month).bounds(LONDON) == (datetime.fromisoformat(start), datetime.fromisoformat(end))


@pytest.mark.parametrize(
    "text",
    ["2026-13", "2026-1", "26-11", "November", "2026-11-01", "", "0000-01", "9999-12", "\u0662\u0660\u0662\u0666-11"],
)
def test_a_month_that_is_not_one_says_how_to_write_it(text: str) -> None:
    with pytest.raises(ValueError, match="YYYY-MM"):
        Month.parse(text)


def test_figures_exclude_cancelled_count_open_breaches_and_show_each_window_apart() -> None:
    referrals = [
        times("present", 23, 30, rid="A"),  # MRI met, plan met (7 h)
        times("unknown", 25, 60, rid="B"),  # MRI late, plan late (35 h)
        times("present", rid="C"),  # open past its window
        times("absent", 5 * 24, rid="D"),  # 7 days: met; plan open past 24 hours
        times("absent", rid="E"),  # open past 7 days
        times("present", 2, rid="F", cancelled=True),  # excluded
    ]
    got = figures("RBL", referrals, NOW)
    assert (got.referrals, got.cancelled, got.counted) == (6, 1, 5)
    signs, none, plan = got.groups[SIGNS], got.groups[NO_SIGNS], got.groups[PLAN]
    assert (signs.population, signs.denominator, signs.numerator, signs.breaches) == (3, 3, 1, 2)
    assert signs.outcomes == {"met": 1, "late": 1, "open-late": 1}
    assert (none.population, none.denominator, none.numerator, none.outcomes["open-late"]) == (2, 2, 1, 1)
    assert (plan.population, plan.denominator, plan.numerator, plan.breaches) == (3, 3, 1, 2)
    assert got.times["referral-to-mri"].count == 3 and got.times["referral-to-mri"].median_hours == 25
    assert got.times["mri-to-plan"].median_hours == 21  # 7 and 35 hours


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 11)]
    assert percentile(values, 90) == 9 and percentile(values, 50) == 5 and percentile([4.0], 90) == 4
    assert percentile([], 90) is None


def test_slowest_cases_are_furthest_past_a_deadline() -> None:
    referrals = [
        times("present", 30, 40, rid="six-hours-late"),  # MRI 6 hours late, plan 10 hours after it
        times("present", 23, rid="plan-open"),  # MRI met; plan open since 47 hours after first contact
        times("absent", 8 * 24, 8 * 24 + 2, rid="one-day-late"),
        times("present", 2, rid="cancelled", cancelled=True),
        times("absent", None, rid="open"),  # no MRI, 7 days elapsed long ago
    ]
    found = slowest(referrals, NOW, 3)
    assert [c.times.referral_id for c in found] == ["plan-open", "open", "one-day-late"]
    assert (found[1].window, found[1].mri, found[2].mri, found[2].plan) == ("7 days", "open-late", "late", "met")
    assert found[2].overrun == timedelta(days=1)
    assert [c.times.referral_id for c in slowest(referrals, NOW, 10)][-1] == "six-hours-late"
    # a referral still within its window has no outcome yet, so it is not a case
    assert slowest([times("absent")], T0 + timedelta(hours=1), 5) == []


def test_measure_report_is_valid_fhir_and_stratified_by_trust() -> None:
    referrals = [times("present", 20, 30, rid="A"), times("absent", 30, rid="B", trust="RJR")]
    report = build_report(Month.parse("2026-10"), "Europe/London", referrals, NOW)
    resource = measure_report(report, "REN")
    MeasureReport.model_validate(resource)
    assert resource["measure"] == MEASURE_URL and resource["type"] == "summary"
    assert resource["period"] == {"start": "2026-10-01", "end": "2026-10-31"}
    groups = {g["code"]["coding"][0]["code"]: g for g in resource["group"]}
    assert groups[SIGNS]["measureScore"]["value"] == 1.0
    assert [s["value"]["text"] for s in groups[SIGNS]["stratifier"][0]["stratum"]] == ["RBL", "RJR"]
    rjr = groups[SIGNS]["stratifier"][0]["stratum"][1]
    assert "measureScore" not in rjr and counts(rjr) == {"initial-population": 0, "denominator": 0, "numerator": 0}


# --- end to end: HL7v2 referrals, $transition, the CLI and the MeasureReport ------------------------------


def counts(part: dict[str, Any]) -> dict[str, int]:
    return {p["code"]["coding"][0]["code"]: p["count"] for p in part["population"]}


def ref_i12(control: str, trust: str, received: datetime, neuro: str | None) -> bytes:
    when = received.strftime("%Y%m%d%H%M%S") + "+0000"
    lines = [
        f"MSH|^~\\&|ICE|{trust}|MSCC-HUB|REN|{when}||REF^I12^REF_I12|{control}|P|2.5",
        f"RF1|A^Accepted|S^STAT|MSCC^Metastatic spinal cord compression||R^Referral|{control}||||Suspected MSCC",
        f"PRD|RP|ONCOLOGY^ACUTE||^^^{trust}",
        f"PID|1||9449305552^^^NHS^NH~{control}^^^{trust}^MR||AUDIT^ALEX||19580214|M",
        *([f"OBX|1|ST|NEURO^Neurological status||{neuro}||||||F"] if neuro else []),
    ]
    return ("\r".join(lines) + "\r").encode()


SIGNS_TEXT, NONE_TEXT = "Bilateral leg weakness", "No neurological deficit"
# control id -> trust, first contact, neurological text, moves (step, hours after first contact)
REFERRALS: dict[str, tuple[str, datetime, str | None, list[tuple[str, float]]]] = {
    "A": ("RBL", T0, SIGNS_TEXT, [("triaged-accepted", 1), ("mri-reported", 20), ("mdt-discussed", 22),
                                  ("plan-agreed-radiotherapy", 30)]),  # MRI met, plan met (10 h)
    "B": ("RBL", T0 + timedelta(days=1), SIGNS_TEXT, [("triaged-accepted", 1), ("mri-requested", 2),
          ("mri-reported", 30), ("mdt-discussed", 40), ("plan-agreed-surgery", 60)]),  # both late
    "C": ("RBL", T0 + timedelta(days=2), NONE_TEXT, [("triaged-accepted", 2), ("mri-reported", 120)]),  # plan open
    "D": ("RBL", T0 + timedelta(days=3), SIGNS_TEXT, [("triaged-accepted", 1), ("cancelled", 2)]),  # excluded
    # 1 October 00:30 BST: October; left at received, past its window (unknown status: 24 hours)
    "E": ("RBL", datetime(2026, 9, 30, 23, 30, tzinfo=UTC), None, []),
    # 31 October 23:30 GMT: still October
    "F": ("RBL", datetime(2026, 10, 31, 23, 30, tzinfo=UTC), SIGNS_TEXT, []),
    # 30 September 23:30 BST: September, not counted
    "G": ("RBL", datetime(2026, 9, 30, 22, 30, tzinfo=UTC), SIGNS_TEXT, []),
    "H": ("RJR", T0 + timedelta(days=5), SIGNS_TEXT, [("triaged-accepted", 1), ("mri-reported", 12),
          ("mdt-discussed", 13), ("plan-agreed-systemic-therapy", 14)]),  # both met
    "I": ("RJR", T0 + timedelta(days=7), NONE_TEXT, [("triaged-not-mscc", 2)]),  # ended: not counted
}  # fmt: skip
EXPECTED = {  # stratum -> (referrals, cancelled, {group: (population, denominator, numerator)})
    "RBL": (6, 1, {SIGNS: (4, 4, 1), NO_SIGNS: (1, 1, 1), PLAN: (3, 3, 1)}),
    "RJR": (2, 0, {SIGNS: (1, 1, 1), NO_SIGNS: (1, 0, 0), PLAN: (1, 1, 1)}),
    "all": (8, 1, {SIGNS: (5, 5, 2), NO_SIGNS: (2, 1, 1), PLAN: (4, 4, 2)}),
}


async def _referrals(http: httpx.AsyncClient, store: Store) -> dict[str, str]:
    """Send every REF^I12, map them, move each along its steps; control id -> referral id."""
    # in the order they were written: the mapper does not let an older message overwrite the patient
    for control, (trust, received, neuro, _) in sorted(REFERRALS.items(), key=lambda item: item[1][1]):
        ack = await http.post("/hl7v2", content=ref_i12(f"TL-{control}", trust, received, neuro), headers=HL7)
        assert b"MSA|AA|" in ack.content, ack.content
    await MapperService(store).run(asyncio.Event(), burst=True)
    ids: dict[str, str] = {}
    async for plan in store.resources.find({"type": "CarePlan", "resource.title": "MSCC pathway"}):
        rid = plan["resource"]["supportingInfo"][0]["reference"].removeprefix("ServiceRequest/")
        request = await store.resources.find_one({"_id": f"ServiceRequest/{rid}"})
        assert request is not None
        [control] = [i["value"] for i in request["resource"]["identifier"] if str(i["value"]).startswith("TL-")]
        ids[control.removeprefix("TL-")] = rid
        # the neurological reading sets the window the audit uses
        neuro = REFERRALS[control.removeprefix("TL-")][2]
        assert ("7 days" in plan["resource"]["description"]) == (neuro == NONE_TEXT), plan["resource"]["description"]
    assert sorted(ids) == sorted(REFERRALS)
    for control, (_, received, _, moves) in REFERRALS.items():
        for step, after in moves:
            body = {
                "resourceType": "Parameters",
                "parameter": [
                    {"name": "step", "valueCode": step},
                    {"name": "time", "valueDateTime": fhir_time(received + timedelta(hours=after))},
                ],
            }
            moved = await http.post(f"/fhir/ServiceRequest/{ids[control]}/$transition", json=body, headers=FHIR)
            assert moved.status_code == 200, (control, step, moved.text)
    return ids


def report_cli(tmp_path: Path, mongodb_uri: str, settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "report", "timeliness", *args],
        env=mscc_env(tmp_path, MONGODB_URI=mongodb_uri, MSCC_DB_NAME=settings.db_name),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _check_json_stratum(stratum: dict[str, Any], key: str) -> None:
    referrals, cancelled, groups = EXPECTED[key]
    assert (stratum["referrals"], stratum["cancelled"]) == (referrals, cancelled), key
    for group, (population, denominator, numerator) in groups.items():
        got = stratum["groups"][group]
        assert (got["population"], got["denominator"], got["numerator"]) == (population, denominator, numerator), (
            key,
            group,
        )


def _check_measure_report(resource: dict[str, Any], cli: dict[str, Any], strata: list[str]) -> None:
    MeasureReport.model_validate(resource)
    assert resource["measure"] == MEASURE_URL and resource["period"]["start"] == "2026-10-01"
    by_trust = {s["trust"]: s for s in cli["trusts"]}
    total = cli["all"] if len(strata) > 1 else by_trust[strata[0]]
    for group in resource["group"]:
        key = group["code"]["coding"][0]["code"]
        if key not in (SIGNS, NO_SIGNS, PLAN):
            times_of = total["times"][key]
            assert counts(group) == {"measure-population": times_of["count"]}
            assert group.get("measureScore", {}).get("value") == times_of["median_hours"]
            continue
        want = total["groups"][key]
        expected = {"initial-population": want["population"], "denominator": want["denominator"]}
        assert counts(group) == {**expected, "numerator": want["numerator"]}, key
        assert group.get("measureScore", {}).get("value") == want["score"], key
        [stratifier] = group["stratifier"]
        assert [s["value"]["text"] for s in stratifier["stratum"]] == strata
        for stratum in stratifier["stratum"]:
            mine = by_trust[stratum["value"]["text"]]["groups"][key]
            assert counts(stratum)["numerator"] == mine["numerator"]
            assert counts(stratum)["denominator"] == mine["denominator"]


async def test_audit_of_real_referrals_cli_and_measure_report_agree(
    http: httpx.AsyncClient, store: Store, settings: Settings, mongodb_uri: str, tmp_path: Path
) -> None:
    ids = await _referrals(http, store)

    as_json = report_cli(tmp_path, mongodb_uri, settings, "--month", "2026-10", "--json")
    assert as_json.returncode == 0, as_json.stderr
    cli = json.loads(as_json.stdout)
    assert cli["month"] == "2026-10" and cli["start"] == "2026-09-30T23:00:00.000Z"
    assert [s["trust"] for s in cli["trusts"]] == ["RBL", "RJR"]
    for stratum in cli["trusts"]:
        _check_json_stratum(stratum, stratum["trust"])
    _check_json_stratum(cli["all"], "all")
    assert any("open past their window" in note for note in cli["notes"])
    assert any("cancelled" in note and "excluded" in note for note in cli["notes"])
    assert cli["all"]["groups"][SIGNS]["outcomes"]["open-late"] == 2  # E and F, never moved
    assert cli["all"]["times"]["referral-to-mri"] == {"count": 4, "median_hours": 25.0, "p90_hours": 120.0}
    assert cli["all"]["times"]["mri-to-plan"] == {"count": 3, "median_hours": 10.0, "p90_hours": 30.0}
    slow = {c["referral"]: c for c in cli["slowest"]}
    assert ids["D"] not in slow and ids["G"] not in slow  # cancelled; September
    # furthest past a deadline first: E's MRI (open since 1 October), C's plan (open since 13 October), F's MRI
    assert [c["referral"] for c in cli["slowest"][:3]] == [ids["E"], ids["C"], ids["F"]]
    assert (cli["slowest"][1]["mri"], cli["slowest"][1]["plan"], cli["slowest"][1]["window"]) == (
        "met",
        "open-late",
        "7 days",
    )
    assert slow[ids["B"]]["mri"] == "late" and slow[ids["B"]]["window"] == "24 hours"

    listed = tmp_path / "october.csv"
    table = report_cli(tmp_path, mongodb_uri, settings, "--month", "2026-10", "--csv", str(listed))
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[1].split()[:3] == ["trust", "referrals", "cancelled"]
    assert "2/5 (40%), 2 open-late" in table.stdout  # MRI with signs or unknown, all trusts
    rows = list(csv.DictReader(listed.read_text(encoding="utf-8").splitlines()))
    assert [r["trust"] for r in rows] == ["RBL", "RJR", "all"]
    for row in rows:
        referrals, cancelled, groups = EXPECTED[row["trust"]]
        assert (int(row["referrals"]), int(row["cancelled"])) == (referrals, cancelled)
        for group, (population, denominator, numerator) in groups.items():
            got = (int(row[f"{group}-population"]), int(row[f"{group}-denominator"]), int(row[f"{group}-numerator"]))
            assert got == (population, denominator, numerator), (row["trust"], group)
    assert rows[2][f"{SIGNS}-percent"] == "40.0" and rows[1][f"{NO_SIGNS}-percent"] == ""

    # The MSCC team's MeasureReport: every trust, the same numbers as the CLI.
    answer = await http.get("/fhir/MeasureReport/$timeliness", params={"period": "2026-10"})
    assert answer.status_code == 200, answer.text
    _check_measure_report(answer.json(), cli, ["RBL", "RJR"])

    # A trust's caller: its own stratum only, whether it names itself or not; another trust's is 403.
    async with client_as(http, "RJR", ["system/MeasureReport.r"]) as rjr:
        own = await rjr.get("/fhir/MeasureReport/$timeliness", params={"period": "2026-10"})
        assert own.status_code == 200, own.text
        _check_measure_report(own.json(), cli, ["RJR"])
        named = await rjr.get("/fhir/MeasureReport/$timeliness", params={"period": "2026-10", "trust": "rjr"})
        assert named.json()["group"] == own.json()["group"]
        other = await rjr.get("/fhir/MeasureReport/$timeliness", params={"period": "2026-10", "trust": "RBL"})
        assert other.status_code == 403 and other.json()["resourceType"] == "OperationOutcome"
    async with client_as(http, MSCC, ["system/MeasureReport.r"]) as team:
        narrowed = await team.get("/fhir/MeasureReport/$timeliness", params={"period": "2026-10", "trust": "RJR"})
        assert narrowed.json()["group"] == own.json()["group"]
    async with client_as(http, MSCC, ["system/ServiceRequest.rs"]) as unscoped:
        refused = await unscoped.get("/fhir/MeasureReport/$timeliness", params={"period": "2026-10"})
        assert refused.status_code == 403


@pytest.mark.parametrize(
    ("query", "status", "says"),
    [
        ({}, 400, "YYYY-MM"),
        ({"period": "2026-13"}, 400, "YYYY-MM"),
        ({"period": "2026-10", "subject": "x"}, 400, "unknown parameter"),
        ({"period": "2026-10", "trust": " "}, 400, "ODS code"),
    ],
)
async def test_bad_audit_requests_are_operation_outcomes(
    http: httpx.AsyncClient, query: dict[str, str], status: int, says: str
) -> None:
    answer = await http.get("/fhir/MeasureReport/$timeliness", params=query)
    assert answer.status_code == status
    outcome = answer.json()
    assert outcome["resourceType"] == "OperationOutcome" and says in outcome["issue"][0]["diagnostics"]


def test_cli_refuses_a_month_that_is_not_one(tmp_path: Path, mongodb_uri: str, settings: Settings) -> None:
    refused = report_cli(tmp_path, mongodb_uri, settings, "--month", "2026-13")
    assert refused.returncode == 2 and "YYYY-MM" in refused.stderr and refused.stdout == ""
