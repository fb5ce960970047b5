"""The timeliness audit as FHIR: ``GET /fhir/MeasureReport/$timeliness?period=2026-11[&trust=RBL]``.

A thin handler over ``services/pathway/timeliness.py`` (the figures) and ``measure_report.py`` (the
MeasureReport). Registered before the generic ``/fhir/{type}/{id}`` read, which would otherwise take
``$timeliness`` for an id. Its scope is ``system/MeasureReport.r`` (``route_scopes.py``: a GET of
``/fhir/{type}/{x}``).

Who sees what: the MSCC team every trust (``trust`` narrows to one); a referring trust only its own
referrals, counted as the MSCC team would count them, with ``trust`` absent or its own ODS code (another
trust's is 403: the figures of another trust are not its to see).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request

from shared.fhir import FhirError
from shared.http_server import FhirResponse
from shared.visibility import trust_code

from ..pathway.measure_report import measure_report
from ..pathway.timeliness import Month, timeliness_report
from .authorisation import Who
from .deps import Api

router = APIRouter(prefix="/fhir", tags=["FHIR", "MSCC pathway"])
KNOWN = frozenset({"period", "trust", "_format", "_pretty"})


@router.get(
    "/MeasureReport/$timeliness",
    summary="NICE NG234 timeliness audit of one month as a MeasureReport (MRI and plan within their windows)",
    response_class=FhirResponse,
)
async def timeliness(
    request: Request,
    api: Api,
    who: Who,
    period: Annotated[str | None, Query(description="the calendar month of first contact, YYYY-MM")] = None,
    trust: Annotated[str | None, Query(description="one referring trust's ODS code")] = None,
) -> FhirResponse:
    """The MeasureReport (summary) of ``period``; 400 for a missing or malformed period or an unknown
    parameter, 403 for a trust asking for another trust's figures."""
    unknown = sorted({k for k in request.query_params if k not in KNOWN})
    if unknown:
        raise FhirError(400, "not-supported", f"unknown parameter(s) {', '.join(unknown)}: use period and trust")
    if not period or len(request.query_params.getlist("period")) > 1:
        raise FhirError(400, "required", "give one period, the month of first contact as YYYY-MM (period=2026-11)")
    try:
        month = Month.parse(period)
    except ValueError as exc:
        raise FhirError(400, "value", f"period {exc}") from exc
    asked = trust_code(trust)
    if trust is not None and asked is None:
        raise FhirError(400, "value", "trust needs an ODS code, e.g. trust=RBL")
    if not who.everything:
        if asked is not None and asked != who.trust:
            raise FhirError(
                403, "forbidden", f"organisation {who.trust} may see its own timeliness figures only, not {asked}'s"
            )
        asked = who.trust
    clock = api.intake.clock
    now = clock() if clock is not None else datetime.now(UTC)
    report = await timeliness_report(
        api.store, month, now, zone=api.settings.service_time_zone, visibility=who, trust=asked, limit=0
    )
    return FhirResponse(measure_report(report, api.settings.receiving_facility))
