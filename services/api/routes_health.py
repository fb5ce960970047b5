"""Operations routes: ``/healthz`` (the process runs) and ``/readyz`` (the store answers and every
background task of this process completes its cycles)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from shared.supervision import TaskRegistry

from .deps import Api

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is running")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Ready: the store answers and every background task of this process completes its cycles",
)
async def readyz(api: Api, request: Request) -> JSONResponse:
    """503 naming what is wrong: the database does not answer, or a background task (mapper, SLA
    scanner, notifier loops) is dead or has completed no cycle in its expected time. ``tasks``
    says, for each, its state, when it last completed a cycle, its restarts and its last error."""
    registry: TaskRegistry = request.app.state.tasks
    reasons = [] if await api.store.ping() else ["the database does not answer"]
    problems = registry.problems()
    if problems:
        reasons.append("background task(s) not running: " + "; ".join(problems.values()))
    body: dict[str, object] = {"status": "unavailable" if reasons else "ready", "tasks": registry.report()}
    if reasons:
        body["reason"] = "; ".join(reasons)
        body["unhealthy_tasks"] = sorted(problems)
    return JSONResponse(body, status_code=503 if reasons else 200)
