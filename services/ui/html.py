"""The dashboard's HTML: the page frame, tables, forms and inline SVG charts, as escaped strings.

Every value put into a page goes through ``esc`` (or ``table``, which escapes its cells), so text from
messages can never become markup. Status words are shown as text beside their colour (``badge``): the
colour only repeats what the word says.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from html import escape
from urllib.parse import urlencode

NAV = (
    ("/ui", "Channels"),
    ("/ui/messages", "Messages"),
    ("/ui/referrals", "Referrals"),
    ("/ui/timeliness", "Timeliness"),
    ("/ui/dead-letters", "Dead letters"),
)


class Markup(str):
    """Text that is already HTML (built here from escaped parts): ``esc`` leaves it as it is."""


def esc(value: object) -> Markup:
    if isinstance(value, Markup):
        return value
    return Markup(escape("" if value is None else str(value), quote=True))


def join(parts: Iterable[object]) -> Markup:
    return Markup("".join(esc(p) for p in parts))


def link(href: str, text: object, params: dict[str, str] | None = None) -> Markup:
    query = f"?{urlencode(params)}" if params else ""
    return Markup(f'<a href="{esc(href + query)}">{esc(text)}</a>')


def badge(word: str, tone: str = "") -> Markup:
    """A status word in a coloured box; ``tone`` (ok, warn, bad) only styles it."""
    kind = f" {tone}" if tone else ""
    return Markup(f'<span class="badge{kind}">{esc(word)}</span>')


STATUS_TONES = {
    "mapped": "ok",
    "delivered": "ok",
    "dispatched": "ok",
    "ready": "",
    "mapping": "",
    "pending": "",
    "rejected": "bad",
    "failed": "bad",
    "dead": "bad",
    "needs-review": "warn",
    "skipped": "warn",
}


def status(word: str) -> Markup:
    return badge(word, STATUS_TONES.get(word, ""))


def table(caption: str, headers: Sequence[str], rows: Iterable[Sequence[object]], *, numeric: int = 0) -> Markup:
    """A table with a caption and column headers; the last ``numeric`` columns are right-aligned."""
    head = "".join(f'<th scope="col">{esc(h)}</th>' for h in headers)
    body = []
    first_num = len(headers) - numeric
    for row in rows:
        cells = []
        for n, cell in enumerate(row):
            cls = ' class="num"' if n >= first_num else ""
            tag = "th" if n == 0 else "td"
            scope = ' scope="row"' if n == 0 else ""
            cells.append(f"<{tag}{scope}{cls}>{esc(cell)}</{tag}>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(headers)}">none</td></tr>')
    return Markup(
        f"<table><caption>{esc(caption)}</caption><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def hidden(name: str, value: str) -> Markup:
    return Markup(f'<input type="hidden" name="{esc(name)}" value="{esc(value)}">')


def action(path: str, label: str, csrf: str, fields: dict[str, str] | None = None) -> Markup:
    """A one-button POST form carrying the CSRF token."""
    inputs = "".join(hidden(k, v) for k, v in (fields or {}).items())
    return Markup(
        f'<form method="post" action="{esc(path)}" class="inline">{hidden("csrf", csrf)}{inputs}'
        f'<button type="submit">{esc(label)}</button></form>'
    )


def bar_chart(title: str, bars: Sequence[tuple[str, float]], *, unit: str = "", width: int = 640) -> Markup:
    """A horizontal-axis bar chart as inline SVG, with a text alternative listing every value."""
    height, pad, label_h = 160, 4, 18
    top = max((v for _, v in bars), default=0) or 1
    step = (width - 2 * pad) / max(len(bars), 1)
    shapes = []
    for n, (label, value) in enumerate(bars):
        h = (height - label_h - pad) * value / top
        x = pad + n * step
        y = height - label_h - h
        shapes.append(
            f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(step - 2, 1):.1f}" height="{h:.1f}">'
            f"<title>{esc(label)}: {value:g}{esc(unit)}</title></rect>"
        )
        if len(bars) <= 24 or n % max(len(bars) // 12, 1) == 0:
            shapes.append(f'<text x="{x + step / 2:.1f}" y="{height - 4}" text-anchor="middle">{esc(label)}</text>')
    described = "; ".join(f"{label}: {value:g}{unit}" for label, value in bars) or "no data"
    return Markup(
        f'<figure><svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">'
        f"<title>{esc(title)}</title>{''.join(shapes)}</svg>"
        f'<figcaption>{esc(title)}<span class="sr-only">: {esc(described)}</span></figcaption></figure>'
    )


def page(title: str, body: object, *, current: str = "", who: str = "", csrf: str = "") -> str:
    """The whole document: header with navigation (the current page marked), main content."""
    items = []
    for href, text in NAV:
        mark = ' aria-current="page"' if href == current else ""
        items.append(f'<li><a href="{href}"{mark}>{esc(text)}</a></li>')
    signed = ""
    if who:
        out = action("/ui/logout", "Sign out", csrf) if csrf else Markup("")
        signed = f'<p class="who">Signed in as <strong>{esc(who)}</strong> {out}</p>'
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · MSCC hub</title>"
        '<link rel="icon" href="data:,"><link rel="stylesheet" href="/ui/static/ui.css">'
        '<script src="/ui/static/ui.js" defer></script>'
        '</head><body><a class="skip" href="#main">Skip to content</a>'
        f'<header><p class="brand">MSCC hub</p><nav aria-label="Dashboard"><ul>{"".join(items)}</ul></nav>{signed}'
        f'</header><main id="main"><h1>{esc(title)}</h1>{esc(body)}</main></body></html>'
    )


def json_detail(body: bytes) -> str:
    """The ``detail`` of the API's JSON refusal, else the body as text."""
    try:
        found = json.loads(body)
    except ValueError:
        return body.decode("utf-8", errors="replace")[:500]
    return str(found.get("detail") if isinstance(found, dict) else found)[:500]


def forbidden_page(detail: str) -> str:
    body = Markup(
        f'<p role="alert">{esc(detail)}</p><p>The dashboard is for the MSCC team\'s clients with the '
        f"scopes <code>system/*.read</code> (pages) and <code>system/*.write</code> (actions). "
        f"{link('/ui/login', 'Sign in with another client')}.</p>"
    )
    return page("Not allowed", body)


def login_page(next_path: str, csrf: str, error: str = "") -> str:
    alert = f'<p role="alert" class="error">{esc(error)}</p>' if error else ""
    form = (
        f'{alert}<form method="post" action="/ui/login" class="login">{hidden("csrf", csrf)}'
        f"{hidden('next', next_path)}"
        '<label for="client_id">Client id</label>'
        '<input id="client_id" name="client_id" autocomplete="username" required>'
        '<label for="client_secret">Client secret</label>'
        '<input id="client_secret" name="client_secret" type="password" autocomplete="current-password" required>'
        '<button type="submit">Sign in</button></form>'
        "<p>Use an API client of the MSCC team (<code>mscc clients add</code>); a trust's client is refused.</p>"
    )
    return page("Sign in", Markup(form))
