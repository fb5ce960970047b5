"""Operations routes: ``/healthz`` (the process runs) and ``/readyz`` (the store answers and every
background task of this process completes its cycles).

``/readyz`` answers within a second even when the database is down: a load balancer or an orchestrator
asking it must learn "not ready" quickly, not wait for the driver's server selection (10 s). The ping
is given ``MSCC_READYZ_TIMEOUT_S`` (0.8 s) and abandoned after it."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pymongo.errors import PyMongoError

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
    timeout_s: float = request.app.state.settings.readyz_timeout_s
    database = await _database(api, timeout_s)
    reasons = [] if database == "ok" else [f"database: {database}"]
    problems = registry.problems()
    if problems:
        reasons.append("background task(s) not running: " + "; ".join(problems.values()))
    body: dict[str, object] = {
        "status": "unavailable" if reasons else "ready",
        "dependencies": {"database": database},
        "tasks": registry.report(),
    }
    if reasons:
        body["reason"] = "; ".join(reasons)
        body["unhealthy_tasks"] = sorted(problems)
    return JSONResponse(body, status_code=503 if reasons else 200)


async def _database(api: Api, timeout_s: float) -> str:
    """``ok``, or why the database is not ready (no answer within ``timeout_s``, or an error)."""
    try:
        await asyncio.wait_for(api.store.db.command("ping"), timeout_s)
    except TimeoutError:
        return f"no answer within {timeout_s:g} s"
    except PyMongoError as exc:
        return f"does not answer ({type(exc).__name__}: {str(exc)[:200]})"
    return "ok"
