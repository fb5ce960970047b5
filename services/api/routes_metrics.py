"""``GET /metrics``: this process's Prometheus metrics, in the text exposition format, without a token.

The counters come from where things happen (intake, mapper, notifier, the HTTP layer: ``shared/metrics.py``);
the queue depths are read from the database now, within ``MSCC_METRICS_TIMEOUT_S`` (a slow database makes
``mscc_metrics_database_up`` 0, never a slow scrape); the background tasks are this process's
(``app.state.tasks``). ``docs/operations.md`` lists every metric.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from shared.metrics import CONTENT_TYPE, Scrape, render

from .deps import Api

router = APIRouter(tags=["operations"])


@router.get("/metrics", summary="Prometheus metrics of this process", include_in_schema=False)
async def metrics(api: Api, request: Request) -> Response:
    scrape = Scrape(api.store, request.app.state.tasks, api.settings.metrics_timeout_s)
    return Response(await render(scrape), media_type=CONTENT_TYPE)
