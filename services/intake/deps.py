"""FastAPI dependency of intake's routers: the intake service, as an ``Annotated`` alias for thin handlers
(the caller, the peer and the bounded body read are in ``shared/http_server.py``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .service import IntakeService


def get_intake(request: Request) -> IntakeService:
    service: IntakeService = request.app.state.intake
    return service


Intake = Annotated[IntakeService, Depends(get_intake)]
