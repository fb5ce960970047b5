"""The dashboard's POST actions, its sign-in and its assets.

Actions (``system/*.write``, MSCC team, CSRF token checked first): reprocess a failed or dead message
(``services/intake/reprocess.py``, as ``mscc messages reprocess`` does), redeliver or skip a
dead-lettered notification (the notifier's ``$redeliver`` and ``$skip``, for one event number). Each
answers a page saying what was done, or why not.

Sign-in (public, CSRF-checked too): a client id and secret of an MSCC-team client, checked against the
client registry (``shared/clients.py``); the hub token it gets (``shared/tokens.py``, the token
endpoint's own service) is kept in the session cookie for as long as the token lives.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from services.intake.reprocess import Reprocessor
from services.notifier.subscriptions import SubscriptionService
from shared.auth import Caller
from shared.bearer import Authenticator
from shared.clients import SECRET, secret_matches
from shared.fhir import FhirError
from shared.messages import MessageRecord
from shared.settings import Settings
from shared.visibility import is_mscc_team

from . import html
from .context import Team, intake, render, store
from .session import CSRF_COOKIE, LOGIN, TOKEN_COOKIE, cookie_header, csrf_ok, csrf_token, is_https

router = APIRouter(prefix="/ui", include_in_schema=False)
STATIC = Path(__file__).parent / "static"
ASSETS = {"ui.css": "text/css", "ui.js": "text/javascript"}
MAX_FORM = 16 * 1024


async def form_of(request: Request) -> dict[str, str]:
    """The urlencoded form, one value a field; an oversize body reads as an empty form (refused by CSRF)."""
    body = await request.body()
    if len(body) > MAX_FORM:
        return {}
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True).items()}


def refused_csrf(request: Request) -> HTMLResponse:
    text = html.page(
        "Not allowed",
        html.Markup(
            '<p role="alert">The form\'s CSRF token is missing or does not '
            "match this browser's session: reload the page and try again.</p>"
        ),
    )
    return HTMLResponse(text, status_code=403)


def _done(request: Request, caller: Caller, title: str, text: str, back: str, status: int = 200) -> HTMLResponse:
    body = html.join([html.Markup(f'<p role="status">{html.esc(text)}</p>'), html.link(back, "Back")])
    return render(request, caller, title, body, back, status)


@router.get("/static/{name}")
async def asset(name: str) -> Response:
    if name not in ASSETS:
        return Response("no such asset\n", status_code=404, media_type="text/plain")
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers={"Cache-Control": "max-age=300"})


@router.get("/login")
async def login_form(request: Request, next: str = "/ui") -> HTMLResponse:
    return HTMLResponse(html.login_page(_local(next), csrf_token(request)), headers={"Cache-Control": "no-store"})


@router.post("/login")
async def login(request: Request) -> Response:
    form = await form_of(request)
    if not csrf_ok(request, form):
        return refused_csrf(request)
    target = _local(form.get("next", "/ui"))
    auth: Authenticator = request.app.state.auth
    settings: Settings = request.app.state.settings
    client = await auth.clients.get(form.get("client_id", "").strip())
    stored = client.secret_hash if client is not None and client.auth_method == SECRET and client.active else None
    if (
        client is None
        or stored is None
        or not await asyncio.to_thread(secret_matches, form.get("client_secret", ""), stored)
    ):
        page = html.login_page(
            target, csrf_token(request), "Unknown client, wrong secret, or a client that signs in with a key."
        )
        return HTMLResponse(page, status_code=401)
    if not is_mscc_team(Caller(client.client_id, client.ods_code), settings.receiving_facility):
        detail = (
            f"client {client.client_id} belongs to organisation {client.ods_code}: "
            "the dashboard is for the MSCC team only"
        )
        return HTMLResponse(html.forbidden_page(detail), status_code=403)
    issued = await auth.tokens.issue(client.client_id, client.ods_code, list(client.scopes))
    answer = RedirectResponse(target, status_code=303)
    answer.headers.append(
        "set-cookie",
        cookie_header(TOKEN_COOKIE, issued.token, secure=is_https(request.scope), max_age=issued.expires_in),
    )
    return answer


@router.post("/logout")
async def logout(request: Request) -> Response:
    form = await form_of(request)
    if not csrf_ok(request, form):
        return refused_csrf(request)
    answer = RedirectResponse(LOGIN, status_code=303)
    secure = is_https(request.scope)
    answer.headers.append("set-cookie", cookie_header(TOKEN_COOKIE, "", secure=secure, max_age=0))
    answer.headers.append("set-cookie", cookie_header(CSRF_COOKIE, "", secure=secure, max_age=0))
    return answer


@router.post("/messages/{record_id}/reprocess")
async def reprocess(request: Request, caller: Team, record_id: str) -> Response:
    if not csrf_ok(request, await form_of(request)):
        return refused_csrf(request)
    doc = await store(request).messages.find_one({"_id": record_id})
    if doc is None:
        return _done(request, caller, "Not reprocessed", f"no message record {record_id}", "/ui/dead-letters", 404)
    service = intake(request)
    async with Reprocessor(service.settings, service.store, f"ui:{caller.client_id}") as reprocessor:
        outcome = await reprocessor.run(MessageRecord.from_doc(doc))
    made = ", ".join(outcome.new_records)
    text = f"{record_id}: {outcome.note}" + (f" (new record {made})" if made else "")
    return _done(
        request,
        caller,
        "Reprocessed" if outcome.done else "Not reprocessed",
        text,
        "/ui/dead-letters",
        200 if outcome.done else 409,
    )


@router.post("/dead-letters/redeliver")
async def redeliver(request: Request, caller: Team) -> Response:
    return await _resume(request, caller, "redeliver")


@router.post("/dead-letters/skip")
async def skip(request: Request, caller: Team) -> Response:
    return await _resume(request, caller, "skip")


async def _resume(request: Request, caller: Caller, what: str) -> Response:
    form = await form_of(request)
    if not csrf_ok(request, form):
        return refused_csrf(request)
    service = SubscriptionService(store(request), request.app.state.settings)
    subscription, number = form.get("subscription", ""), form.get("number", "")
    if not number.isdigit():
        return _done(request, caller, "Not done", "give one event number (a whole number)", "/ui/dead-letters", 400)
    try:
        if what == "redeliver":
            await service.redeliver(subscription, caller, number)
        else:
            await service.skip(subscription, caller, number)
    except FhirError as exc:
        return _done(request, caller, "Not done", str(exc), "/ui/dead-letters", exc.status)
    verb = "queued again" if what == "redeliver" else "skipped"
    return _done(request, caller, "Done", f"event {number} of Subscription/{subscription} {verb}", "/ui/dead-letters")


def _local(target: str) -> str:
    """``target`` when it is a dashboard path (never another site: no scheme, no ``//``), else ``/ui``."""
    if (target == "/ui" or target.startswith("/ui/") or target.startswith("/ui?")) and "\\" not in target:
        return target
    return "/ui"
