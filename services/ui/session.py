"""The browser's session: the hub token in a cookie, the CSRF token, and what a refused page turns into.

The API reads a caller from ``Authorization: Bearer`` (``shared/bearer.py``). A browser cannot send that
header on a link or a form, so ``SessionCookies`` copies the session cookie into it for ``/ui`` requests;
everything after that (scopes, rate limits, revoked clients, expired tokens) is the API's own checking.
Without the cookie a loopback browser in development is the development client, as for the API.

Answers the API gives to a page are turned into what a person can act on: a 401 (no token, or an expired
or revoked one) becomes a redirect to ``/ui/login`` (the stale cookie cleared), a 403 an HTML page.

CSRF: each browser gets a random token in its own cookie (set on the first ``/ui`` answer) and every form
carries it back in a hidden field; a POST whose field does not match the cookie is refused (403). Both
cookies are HttpOnly and SameSite=Strict, and Secure when the request came over HTTPS.
"""

from __future__ import annotations

import hmac
import secrets
from http.cookies import SimpleCookie
from urllib.parse import quote

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import html

TOKEN_COOKIE = "mscc_ui_token"
CSRF_COOKIE = "mscc_ui_csrf"
CSRF_FIELD = "csrf"
LOGIN = "/ui/login"
_SESSION_S = 12 * 3600  # the CSRF cookie's life; the token cookie lives as long as the token


def cookie_header(name: str, value: str, *, secure: bool, max_age: int) -> str:
    """A ``Set-Cookie`` value: HttpOnly, SameSite=Strict, path /ui, Secure over HTTPS."""
    parts = [f"{name}={value}", "Path=/ui", "HttpOnly", "SameSite=Strict", f"Max-Age={max_age}"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def is_https(scope: Scope) -> bool:
    return scope.get("scheme") == "https"


def _cookies(scope: Scope) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for key, value in scope.get("headers") or []:
        if key == b"cookie":
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed cookie header: read as no cookies
                continue
    return {k: m.value for k, m in jar.items()}


def csrf_token(request: Request) -> str:
    """This browser's CSRF token, for the forms of the page being rendered."""
    token: str = request.scope.get("state", {}).get("csrf", "")
    return token


def csrf_ok(request: Request, form: dict[str, str]) -> bool:
    """Whether the form's CSRF field matches this browser's CSRF cookie."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = form.get(CSRF_FIELD, "")
    return bool(cookie) and bool(sent) and hmac.compare_digest(cookie.encode(), sent.encode())


class SessionCookies:
    """ASGI middleware for ``/ui``: cookie -> bearer token, a CSRF cookie, and 401/403 made into pages."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/ui" or path.startswith("/ui/")):
            await self.app(scope, receive, send)
            return
        cookies = _cookies(scope)
        headers = list(scope.get("headers") or [])
        token = cookies.get(TOKEN_COOKIE)
        if token and not any(k == b"authorization" for k, _ in headers):
            headers.append((b"authorization", f"Bearer {token}".encode("latin-1", errors="replace")))
        csrf = cookies.get(CSRF_COOKIE) or ""
        new_csrf = "" if csrf else secrets.token_urlsafe(32)
        scope = {**scope, "headers": headers}
        scope.setdefault("state", {})["csrf"] = csrf or new_csrf
        secure = is_https(scope)
        page = not path.startswith("/ui/static/")
        held: list[Message] = []

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                if page and status in (401, 403) and _is_api_answer(message):
                    held.append(message)
                    return
                if new_csrf:
                    message = _with_cookie(
                        message, cookie_header(CSRF_COOKIE, new_csrf, secure=secure, max_age=_SESSION_S)
                    )
                await send(message)
                return
            if held:
                if message["type"] == "http.response.body":
                    held.append(message)
                    if not message.get("more_body"):
                        await _replace(held, send, scope, secure, new_csrf)
                return
            await send(message)

        await self.app(scope, receive, sending)


def _is_api_answer(start: Message) -> bool:
    """An answer of the API's access checks (JSON), not one of the dashboard's own HTML pages."""
    for key, value in start.get("headers") or []:
        if key.lower() == b"content-type":
            return not value.startswith(b"text/html")
    return True


def _with_cookie(start: Message, cookie: str) -> Message:
    return {**start, "headers": [*start.get("headers", []), (b"set-cookie", cookie.encode("latin-1"))]}


async def _replace(held: list[Message], send: Send, scope: Scope, secure: bool, new_csrf: str) -> None:
    start = held[0]
    body = b"".join(m.get("body", b"") for m in held[1:])
    headers: list[tuple[bytes, bytes]] = [(b"cache-control", b"no-store")]
    if new_csrf:
        headers.append(
            (b"set-cookie", cookie_header(CSRF_COOKIE, new_csrf, secure=secure, max_age=_SESSION_S).encode())
        )
    if start["status"] == 401:
        target = scope.get("path", "/ui")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        location = f"{LOGIN}?next={quote(target, safe='')}"
        headers += [
            (b"location", location.encode("latin-1")),
            (b"set-cookie", cookie_header(TOKEN_COOKIE, "", secure=secure, max_age=0).encode()),
            (b"content-type", b"text/plain; charset=utf-8"),
        ]
        await send({"type": "http.response.start", "status": 303, "headers": headers})
        await send({"type": "http.response.body", "body": b"sign in at " + location.encode("latin-1")})
        return
    detail = html.json_detail(body)
    page = html.forbidden_page(detail).encode()
    headers.append((b"content-type", b"text/html; charset=utf-8"))
    await send({"type": "http.response.start", "status": 403, "headers": headers})
    await send({"type": "http.response.body", "body": page})
