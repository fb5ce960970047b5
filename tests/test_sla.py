"""SLA clocks and the scanner, against a real mongod, with the clock driven by the test (nothing sleeps).

Referrals are created through the FHIR API and mapped (the CarePlan's period.start is the first
contact: the referral's authoredOn); the scan is then run at chosen instants.
"""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from test_pathway import create_referrals, referral_body

from services.pathway import table
from services.pathway.plan import care_plan_id
from services.pathway.scanner import SlaScanner
from services.pathway.sla import ServiceHours, SlaRules, scan_sla
from services.pathway.transitions import apply_transition
from shared.settings import Settings
from shared.store import Document, Store

LONDON = ZoneInfo("Europe/London")
# Thursday 15 January 2026, 03:00 in London (GMT: London time is UTC).
NIGHT = datetime(2026, 1, 15, 3, 0, tzinfo=UTC)
DAY = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)


async def sla_events(store: Store) -> dict[str, Document]:
    return {d["sla_event"]: d async for d in store.outbox.find({"kind": "sla"})}


# --- service hours --------------------------------------------------------------------------------------


def test_service_hours_and_the_next_opening() -> None:
    hours = ServiceHours()
    assert not hours.is_open(NIGHT)
    assert hours.next_opening(NIGHT) == datetime(2026, 1, 15, 7, 30, tzinfo=UTC)
    assert hours.is_open(DAY)
    evening = datetime(2026, 1, 15, 20, 0, tzinfo=UTC)  # closing time is closed
    assert not hours.is_open(evening)
    assert hours.next_opening(evening) == datetime(2026, 1, 16, 7, 30, tzinfo=UTC)
    # British Summer Time: 07:30 in London is 06:30 UTC
    summer = datetime(2026, 7, 1, 2, 0, tzinfo=UTC)
    assert hours.next_opening(summer) == datetime(2026, 7, 1, 6, 30, tzinfo=UTC)
    assert hours.is_open(datetime(2026, 7, 1, 6, 45, tzinfo=UTC))
    # configurable: weekdays 08:00-18:00; Saturday night waits for Monday
    weekdays = ServiceHours(time(8), time(18), frozenset(range(5)), LONDON)
    saturday = datetime(2026, 1, 17, 23, 0, tzinfo=UTC)
    assert weekdays.next_opening(saturday) == datetime(2026, 1, 19, 8, 0, tzinfo=UTC)
    assert not weekdays.is_open(datetime(2026, 1, 17, 12, 0, tzinfo=UTC))


def test_rules_from_settings() -> None:
    settings = Settings(
        _env_file=None,
        service_opens=time(8),
        service_closes=time(18),
        service_days=[0, 1, 2, 3, 4],
        sla_at_risk_fraction=0.5,
    )
    rules = SlaRules.from_settings(settings)
    assert rules.hours.opens == time(8) and rules.hours.days == frozenset(range(5))
    assert rules.at_risk_fraction == 0.5 and rules.hours.zone == LONDON
    with pytest.raises(ValueError, match="MSCC_SERVICE_OPENS"):
        Settings(_env_file=None, service_opens=time(20), service_closes=time(8))
    with pytest.raises(ValueError, match="time zone"):
        Settings(_env_file=None, service_time_zone="Mars/Olympus")


# --- the scan -------------------------------------------------------------------------------------------


async def test_out_of_hours_at_risk_and_breached_within_24_hours(http: httpx.AsyncClient, store: Store) -> None:
    [rid] = await create_referrals(http, store, referral_body("SLA-24", NIGHT))
    [written] = await scan_sla(store, NIGHT + timedelta(minutes=5))
    assert written["_id"] == f"sla:{rid}:out-of-hours" and written["sla_event"] == "out-of-hours"
    assert written["pickup"] == datetime(2026, 1, 15, 7, 30, tzinfo=UTC)
    assert written["focus"].startswith(f"ServiceRequest/{rid}/_history/") and written["status"] == "ready"
    assert written["window_hours"] == 24 and written["neurological"] == "present"

    assert await scan_sla(store, NIGHT + timedelta(hours=17, minutes=59)) == []  # just before 75%
    [at_risk] = await scan_sla(store, NIGHT + timedelta(hours=18))
    assert at_risk["sla_event"] == "at-risk" and at_risk["due"].replace(tzinfo=UTC) == NIGHT + timedelta(hours=18)
    assert await scan_sla(store, NIGHT + timedelta(hours=23, minutes=59)) == []
    [breached] = await scan_sla(store, NIGHT + timedelta(hours=24))
    assert breached["sla_event"] == "breached" and breached["deadline"].replace(tzinfo=UTC) == NIGHT + timedelta(
        hours=24
    )
    for _ in range(3):  # repeated scans write nothing more
        assert await scan_sla(store, NIGHT + timedelta(days=3)) == []
    assert set(await sla_events(store)) == {"out-of-hours", "at-risk", "breached"}


async def test_seven_day_window_without_neurological_signs(http: httpx.AsyncClient, store: Store) -> None:
    await create_referrals(http, store, referral_body("SLA-7D", DAY, neuro="No neurological deficit"))
    assert await scan_sla(store, DAY + timedelta(hours=24)) == []  # in hours, and far from 7 days
    assert await scan_sla(store, DAY + timedelta(hours=125, minutes=59)) == []
    [at_risk] = await scan_sla(store, DAY + timedelta(hours=126))  # 75% of 168 hours
    assert at_risk["sla_event"] == "at-risk" and at_risk["window_hours"] == 168
    assert at_risk["neurological"] == "absent"
    [breached] = await scan_sla(store, DAY + timedelta(days=7))
    assert breached["sla_event"] == "breached"


async def test_unknown_neurological_status_takes_24_hours(http: httpx.AsyncClient, store: Store) -> None:
    await create_referrals(http, store, referral_body("SLA-UNK", DAY, neuro=None))
    written = await scan_sla(store, DAY + timedelta(hours=24))
    assert {e["sla_event"] for e in written} == {"at-risk", "breached"}
    assert {e["neurological"] for e in written} == {"unknown"}


async def test_no_event_when_the_mri_is_reported_in_time(http: httpx.AsyncClient, store: Store) -> None:
    [rid] = await create_referrals(http, store, referral_body("SLA-OK", DAY))
    for n, step in enumerate(("triaged-accepted", "mri-requested", "mri-reported"), start=1):
        at = DAY + timedelta(hours=n * 4)
        await apply_transition(store, rid, step, at, clock=lambda at=at: at)
    assert await scan_sla(store, DAY + timedelta(days=10)) == []
    # the clock stops too when the pathway ends before an MRI
    [other] = await create_referrals(http, store, referral_body("SLA-NOT", DAY))
    later = DAY + timedelta(hours=1)
    await apply_transition(store, other, "triaged-not-mscc", later, clock=lambda: later)
    assert await scan_sla(store, DAY + timedelta(days=10)) == []
    assert await sla_events(store) == {}


async def test_at_risk_fraction_is_configurable(http: httpx.AsyncClient, store: Store) -> None:
    await create_referrals(http, store, referral_body("SLA-HALF", DAY))
    rules = SlaRules(at_risk_fraction=0.5)
    assert await scan_sla(store, DAY + timedelta(hours=11, minutes=59), rules) == []
    [at_risk] = await scan_sla(store, DAY + timedelta(hours=12), rules)
    assert at_risk["sla_event"] == "at-risk"


async def test_concurrent_scanners_write_each_event_once(http: httpx.AsyncClient, store: Store) -> None:
    ids = await create_referrals(http, store, *(referral_body(f"SLA-C{n}", NIGHT) for n in range(3)))
    results = await asyncio.gather(*(scan_sla(store, NIGHT + timedelta(days=2)) for _ in range(4)))
    written = [e["_id"] for batch in results for e in batch]
    assert sorted(written) == sorted(
        f"sla:{rid}:{event}" for rid in ids for event in ("out-of-hours", "at-risk", "breached")
    )
    assert await store.outbox.count_documents({"kind": "sla"}) == 9


async def test_scanner_runs_until_stopped_on_an_injected_clock(
    http: httpx.AsyncClient, store: Store, settings: Settings
) -> None:
    [rid] = await create_referrals(http, store, referral_body("SLA-RUN", NIGHT))
    instants = [NIGHT + timedelta(minutes=1), NIGHT + timedelta(hours=19), NIGHT + timedelta(hours=25)]

    def clock() -> datetime:  # each pass one instant later; the last one stays
        return instants.pop(0) if len(instants) > 1 else instants[0]

    scanner = SlaScanner(store, SlaRules.from_settings(settings), settings.pathway_mri_pattern, clock)
    assert [e["sla_event"] for e in (await scanner.run_once()).sla_events] == ["out-of-hours"]
    assert [e["sla_event"] for e in (await scanner.run_once()).sla_events] == ["at-risk"]
    stop = asyncio.Event()
    task = asyncio.create_task(scanner.run(stop, interval=0.01))
    for _ in range(500):
        if "breached" in await sla_events(store):
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert (await sla_events(store))["breached"]["id"] == rid


# --- one window table -----------------------------------------------------------------------------------


async def test_one_window_table_sets_the_care_plan_deadlines_and_the_scanners_windows(
    http: httpx.AsyncClient, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Changing the SLA window is one edit: window_hours of the pathway table. Both the deadlines written
    # on the CarePlan and the window the scanner falls back to (a plan without deadlines) follow it.
    changed = copy.deepcopy(table.pathway_table())
    changed["window_hours"] = {"present": 6, "absent": 48, "unknown": 6}
    monkeypatch.setattr(table, "pathway_table", lambda: changed)
    signs, clear = await create_referrals(
        http,
        store,
        referral_body("SLA-W1", DAY, "weakness both legs since yesterday"),
        referral_body("SLA-W2", DAY, "Power 5/5 throughout. Sensation normal. No saddle anaesthesia"),
    )
    plans = [f"CarePlan/{care_plan_id(rid)}" for rid in (signs, clear)]
    for key, hours, words in zip(plans, (6, 48), ("6 hours", "2 days"), strict=True):
        plan = (await store.resources.find_one({"_id": key}) or {})["resource"]
        mri = plan["activity"][0]["detail"]
        assert datetime.fromisoformat(mri["scheduledPeriod"]["end"]) == DAY + timedelta(hours=hours)
        assert f"within {words} of first contact" in plan["description"]

    await store.resources.update_many(
        {"_id": {"$in": plans}}, {"$unset": {"resource.activity.$[].detail.scheduledPeriod": ""}}
    )
    written = await scan_sla(store, DAY + timedelta(hours=48))
    assert {e["id"]: e["window_hours"] for e in written if e["sla_event"] == "breached"} == {signs: 6, clear: 48}
