"""The timeliness audit (``timeliness.py``) as a FHIR R4 MeasureReport (type ``summary``).

One group per window (MRI with neurological signs present or unknown, MRI with none, the plan after the
MRI), each with its initial-population (the referrals it applies to, cancelled ones left out),
denominator (those with an outcome: met or breached; pending ones and those ended within their window
are not), numerator (met) and ``measureScore`` (numerator / denominator, absent when the denominator is
0); and two continuous-variable groups (referral to MRI, MRI to plan) whose ``measureScore`` is the
median in hours, their 90th percentile in an extension. Every group is stratified by referring trust.
The Measure is named by the hub's canonical URL ``MEASURE_URL``; pure.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from shared.fhir import Resource
from shared.nhs import ODS_ORGANIZATION_SYSTEM

from .record import fhir_time
from .timeliness import GROUP_TEXT, GROUPS, NOTES, TIME_TEXT, TIMES, Durations, Figures, GroupFigures, Report

CANONICAL_BASE = "https://mscc.example.nhs.uk/fhir"
MEASURE_URL = f"{CANONICAL_BASE}/Measure/mscc-timeliness"
GROUP_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/mscc-timeliness-group"
P90_EXTENSION = f"{CANONICAL_BASE}/StructureDefinition/measure-score-90th-percentile"
POPULATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/measure-population"
UCUM = "http://unitsofmeasure.org"


def _code(system: str, code: str, text: str) -> Resource:
    return {"coding": [{"system": system, "code": code, "display": text}], "text": text}


POPULATION_DISPLAY = {
    "initial-population": "Initial Population",
    "denominator": "Denominator",
    "numerator": "Numerator",
    "measure-population": "Measure Population",
}


def _population(code: str, count: int) -> Resource:
    return {"code": _code(POPULATION_SYSTEM, code, POPULATION_DISPLAY[code]), "count": count}


def _rate(group: GroupFigures) -> dict[str, Any]:
    out: dict[str, Any] = {
        "population": [
            _population("initial-population", group.population),
            _population("denominator", group.denominator),
            _population("numerator", group.numerator),
        ]
    }
    if group.score is not None:
        out["measureScore"] = {"value": round(group.score, 4)}
    return out


def _hours(value: float) -> Resource:
    return {"value": round(value, 2), "unit": "h", "system": UCUM, "code": "h"}


def _duration(durations: Durations) -> dict[str, Any]:
    out: dict[str, Any] = {"population": [_population("measure-population", durations.count)]}
    if durations.median_hours is not None:
        out["measureScore"] = _hours(durations.median_hours)
    if durations.p90_hours is not None:
        out["extension"] = [{"url": P90_EXTENSION, "valueQuantity": _hours(durations.p90_hours)}]
    return out


def _part(figures: Figures, key: str) -> dict[str, Any]:
    return _rate(figures.groups[key]) if key in GROUPS else _duration(figures.times[key])


def _group(report: Report, key: str) -> Resource:
    text = GROUP_TEXT.get(key) or TIME_TEXT[key]
    group: Resource = {"code": _code(GROUP_SYSTEM, key, text), **_part(report.total, key)}
    strata = []
    for stratum in report.trusts:
        part = _part(stratum, key)
        strata.append({"value": {"text": stratum.trust or ""}, **part})
    if strata:
        group["stratifier"] = [{"code": [{"text": "referring trust (ODS code)"}], "stratum": strata}]
    return group


def _period(report: Report) -> Resource:
    """The month as whole local days (a date is a FHIR dateTime): the 1st to the last day."""
    zone = ZoneInfo(report.zone)
    last = report.end - timedelta(milliseconds=1)
    return {"start": report.start.astimezone(zone).date().isoformat(), "end": last.astimezone(zone).date().isoformat()}


def measure_report(report: Report, reporter_ods: str) -> Resource:
    """The MeasureReport of ``report``, made by the MSCC service ``reporter_ods``."""
    suffix = f"-{report.trust.lower()}" if report.trust else ""
    return {
        "resourceType": "MeasureReport",
        "id": f"mscc-timeliness-{report.month}{suffix}",
        "status": "complete",
        "type": "summary",
        "measure": MEASURE_URL,
        "date": fhir_time(report.generated),
        "reporter": {"identifier": {"system": ODS_ORGANIZATION_SYSTEM, "value": reporter_ods}},
        "period": _period(report),
        "improvementNotation": _code(
            "http://terminology.hl7.org/CodeSystem/measure-improvement-notation", "increase", "Increased score"
        ),
        "extension": [
            {"url": f"{CANONICAL_BASE}/StructureDefinition/measure-report-note", "valueString": note} for note in NOTES
        ],
        "group": [_group(report, key) for key in (*GROUPS, *TIMES)],
    }
