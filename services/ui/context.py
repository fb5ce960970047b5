"""What every dashboard handler works with: the MSCC-team caller, the store, the clock, and the answer.

The caller is the one the API's access check resolved (``shared.http_server.get_caller``); a client of
any other organisation is refused here with ``Forbidden`` (a 403 page), whatever its scopes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse

from services.intake.service import IntakeService
from shared.auth import Caller, Forbidden
from shared.http_server import get_caller
from shared.settings import Settings
from shared.store import Store
from shared.visibility import is_mscc_team

from . import html
from .session import csrf_token


async def team(request: Request) -> Caller:
    caller = await get_caller(request)
    settings: Settings = request.app.state.settings
    if not is_mscc_team(caller, settings.receiving_facility):
        request.state.auth_failure = f"client {caller.client_id} is not the MSCC team's"
        raise Forbidden(
            f"client {caller.client_id} of organisation {caller.ods_code or '?'} is not one of the MSCC team's: "
            "the dashboard is for the MSCC team only",
            "MSCC team",
        )
    return caller


Team = Annotated[Caller, Depends(team)]


def intake(request: Request) -> IntakeService:
    service: IntakeService = request.app.state.intake
    return service


def store(request: Request) -> Store:
    return intake(request).store


def now(request: Request) -> datetime:
    """The pathway's clock (the API's), else the wall clock."""
    clock = intake(request).clock
    return clock() if clock is not None else datetime.now(UTC)


def render(request: Request, caller: Caller, title: str, body: object, current: str, status: int = 200) -> HTMLResponse:
    text = html.page(
        title, body, current=current, who=f"{caller.client_id} ({caller.ods_code})", csrf=csrf_token(request)
    )
    return HTMLResponse(text, status_code=status, headers={"Cache-Control": "no-store"})
