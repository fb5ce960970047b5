"""The dashboard's pages (GET): each reads through a bounded, indexed query and renders ``views.py``.

Every page needs ``system/*.read`` (``services/api/route_scopes.py``: a GET outside ``/fhir``) and an
MSCC-team caller (``context.team``). None is in the OpenAPI document: they are HTML for people.
"""

from __future__ import annotations

from datetime import UTC
from types import SimpleNamespace

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from services.pathway.sla import SlaRules
from services.pathway.timeliness import Month, timeliness_report
from shared.message_query import FilterError, MessageFilter, MessageRow, search
from shared.message_trace import trace
from shared.messages import MessageRecord
from shared.supervision import TaskRegistry
from shared.visibility import Visibility

from . import html, views
from .channels import WINDOWS, channel_figures
from .context import Team, now, render, store
from .dead_letters import dead_letters
from .session import csrf_token
from .worklist import worklist

router = APIRouter(prefix="/ui", include_in_schema=False)
SEARCH_FIELDS = ("status", "sender", "type", "since", "until", "control_id")
SEARCH_LIMIT = 200


@router.get("")
async def channels_page(request: Request, caller: Team, window: str = "24h") -> HTMLResponse:
    window = window if window in WINDOWS else "24h"
    figures = await channel_figures(store(request), window, now(request))
    registry: TaskRegistry = request.app.state.tasks
    body = views.channels(figures, window, registry.report())
    return render(request, caller, "Channels", body, "/ui")


@router.get("/messages")
async def messages_page(request: Request, caller: Team) -> HTMLResponse:
    values = {k: request.query_params.get(k, "").strip() for k in SEARCH_FIELDS}
    error, rows = "", []
    try:
        where = MessageFilter.from_options(SimpleNamespace(**{k: v or None for k, v in values.items()}), now(request))
    except FilterError as exc:
        error = str(exc)
    else:
        docs = await search(store(request), where, SEARCH_LIMIT)
        rows = [MessageRow.of(MessageRecord.from_doc(d)) for d in docs]
    body = views.message_list(rows, values, error, SEARCH_LIMIT)
    return render(request, caller, "Messages", body, "/ui/messages", 400 if error else 200)


@router.get("/messages/{record_id}")
async def message_page(request: Request, caller: Team, record_id: str) -> HTMLResponse:
    found = await trace(store(request), record_id)
    if found is None:
        body = html.Markup(f'<p role="alert">No message record {html.esc(record_id)}.</p>')
        return render(request, caller, "Message not found", body, "/ui/messages", 404)
    return render(
        request, caller, f"Message {record_id}", views.message_page(found, csrf_token(request)), "/ui/messages"
    )


@router.get("/referrals")
async def referrals_page(request: Request, caller: Team) -> HTMLResponse:
    rules = SlaRules.from_settings(request.app.state.settings)
    rows, unreadable = await worklist(store(request), now(request), rules)
    return render(request, caller, "Referrals", views.referrals(rows, unreadable), "/ui/referrals")


@router.get("/timeliness")
async def timeliness_page(request: Request, caller: Team, month: str = "") -> HTMLResponse:
    at = now(request)
    error = ""
    try:
        chosen = Month.parse(month) if month else Month(at.astimezone(UTC).year, at.astimezone(UTC).month)
    except ValueError as exc:
        error = str(exc)
        chosen = Month(at.year, at.month)
    settings = request.app.state.settings
    report = await timeliness_report(
        store(request),
        chosen,
        at,
        zone=settings.service_time_zone,
        visibility=Visibility.of(caller, settings.receiving_facility),
        limit=0,
    )
    body = views.timeliness(report, str(chosen), error)
    return render(request, caller, "Timeliness", body, "/ui/timeliness", 400 if error else 200)


@router.get("/dead-letters")
async def dead_letters_page(request: Request, caller: Team) -> HTMLResponse:
    messages, events, deliveries = await dead_letters(store(request))
    body = views.dead_letters(messages, events, deliveries, csrf_token(request))
    return render(request, caller, "Dead letters", body, "/ui/dead-letters")
