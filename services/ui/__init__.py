"""The operator dashboard at ``/ui``: server-rendered pages for the MSCC team over the hub's own store.

    /ui                 channels: per sender and message type, what arrived and what became of it
    /ui/messages        search stored messages; /ui/messages/{id}: one message, its trace and fields
    /ui/referrals       the worklist: each open referral's step and SLA clock, breached first
    /ui/timeliness      the NICE NG234 audit figures per trust for a month
    /ui/dead-letters    failed and dead messages, dead outbox events and deliveries, with their actions

Access is the API's (``services/api/access.py``): pages need ``system/*.read``, actions ``system/*.write``,
and only the MSCC team's clients are served. A browser signs in at ``/ui/login`` with a client id and
secret and keeps the hub token in an HttpOnly, SameSite=Strict cookie; ``session.py`` turns that cookie
into the bearer token the API reads, so the UI has no authentication of its own. Every POST carries the
session's CSRF token. Nothing here is a build product: the templates are Python strings, the assets
are files in ``static/`` served by the app.
"""

from __future__ import annotations

from fastapi import FastAPI

from .routes import router
from .routes_actions import router as actions_router
from .session import SessionCookies


def install(app: FastAPI) -> None:
    """Add the dashboard's routes and its cookie-to-token middleware to ``app``."""
    app.include_router(router)
    app.include_router(actions_router)
    app.add_middleware(SessionCookies)
