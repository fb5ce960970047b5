"""The dashboard's pages as HTML bodies, from the typed figures the readers return (no I/O here).

Text that came in with a message (reasons, fields, trace steps) is shown with NHS numbers masked
(``shared.logging.redact``, as ``mscc messages`` shows them); identifiers of the hub's own records are
shown as they are.
"""

from __future__ import annotations

from datetime import UTC, datetime

from services.pathway.timeliness import GROUP_TEXT, GROUPS, Report
from shared import reprocess_mark
from shared.logging import redact
from shared.message_query import MessageRow
from shared.message_trace import Trace, instant, masked, segments
from shared.store import Document

from . import hl7_fields
from .channels import COLUMNS, WINDOWS, ChannelFigures
from .html import Markup, action, badge, bar_chart, esc, join, link, status, table
from .worklist import Row, span


def when(value: datetime | None) -> str:
    return instant(value) if value else "-"


def channels(figures: ChannelFigures, window: str, tasks: dict[str, dict[str, object]]) -> Markup:
    picks = join(
        Markup(f'<li><a href="/ui?window={w}"{" aria-current=true" if w == window else ""}>{w}</a></li>')
        for w in WINDOWS
    )
    rows = [(c.sender or "(none)", c.type, *(c.counts[k] for k in COLUMNS)) for c in figures.channels]
    totals = [sum(c.counts[k] for c in figures.channels) for k in COLUMNS]
    rows.append(("all senders", "all types", *totals))
    note = f" Deliveries are counted for the newest {2000} messages of the window." if figures.capped else ""
    chart = bar_chart(
        f"Messages received per interval since {when(figures.since)}",
        [(at.astimezone(UTC).strftime("%H:%M" if window != "7d" else "%d %H:%M"), n) for at, n in figures.per_interval],
    )
    task_rows = [
        (
            name,
            str(t.get("state", "")),
            str(t.get("last_cycle_at") or t.get("last_ok") or "-"),
            str(t.get("restarts", 0)),
            str(t.get("last_error") or ""),
        )
        for name, t in tasks.items()
    ]
    return join(
        [
            Markup(f'<nav aria-label="Window"><p>Window:</p><ul class="picks">{picks}</ul></nav>'),
            table(
                f"Messages per sender and type, last {window} (queued: ready or being mapped; failed: failed or dead)",
                ("sender", "type", *COLUMNS),
                rows,
                numeric=len(COLUMNS),
            ),
            Markup(f"<p>{esc(note)}</p>") if note else "",
            chart,
            table(
                "Background tasks of this process (as /readyz reports them)",
                ("task", "state", "last cycle", "restarts", "last error"),
                task_rows,
            ),
        ]
    )


def search_form(values: dict[str, str]) -> Markup:
    def field(name: str, label: str, hint: str = "") -> str:
        described = f' aria-describedby="{name}-hint"' if hint else ""
        small = f'<small id="{name}-hint">{esc(hint)}</small>' if hint else ""
        return (
            f'<div><label for="{name}">{esc(label)}</label>'
            f'<input id="{name}" name="{name}" value="{esc(values.get(name, ""))}"{described}>{small}</div>'
        )

    return Markup(
        '<form method="get" action="/ui/messages" class="search" role="search">'
        + field("status", "Status", "rejected, failed, dead, mapped, ready...")
        + field("sender", "Sender", "MSH-4 or the client's ODS code")
        + field("type", "Type", "REF^I12, ADT, fhir:Bundle")
        + field("since", "Since", "2026-01-31, 2026-01-31T09:00 or 2h, 3d")
        + field("until", "Until")
        + field("control_id", "Control id")
        + '<button type="submit">Search</button></form>'
    )


def message_list(rows: list[MessageRow], values: dict[str, str], error: str, limit: int) -> Markup:
    alert = Markup(f'<p role="alert" class="error">{esc(error)}</p>') if error else ""
    body = [
        (
            link(f"/ui/messages/{r.id}", r.id),
            when(r.received),
            status(r.status),
            r.type,
            r.sender,
            r.control_id,
            r.reason,
        )
        for r in rows
    ]
    cap = f" (the newest {limit})" if len(rows) >= limit else ""
    return join(
        [
            search_form(values),
            alert,
            table(
                f"{len(rows)} message(s){cap}",
                ("record", "received", "status", "type", "sender", "control id", "reason"),
                body,
            ),
        ]
    )


def message_page(found: Trace, csrf: str) -> Markup:
    record = found.record
    row = MessageRow.of(record)
    facts = [
        ("status", status(record.status)),
        ("received", when(record.received_at)),
        ("channel", f"{record.channel} from {record.peer}"),
        ("type", row.type),
        ("sender", row.sender or "-"),
        ("control id", row.control_id or "-"),
    ]
    if row.reason:
        facts.append(("reason", row.reason))
    listing = join(Markup(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>") for k, v in facts)
    steps = table(
        "Processing trace", ("time", "what happened"), [(when(s.at), masked(s.what, False)) for s in found.steps]
    )
    produced = table("Resources produced", ("resource", "note"), [(p.reference, p.note) for p in found.produced])
    deliveries = [
        (
            e.id,
            e.kind,
            e.status,
            d.subscription,
            d.number if d.number is not None else "-",
            status(d.status),
            d.attempts,
            d.last_code or "-",
        )
        for e in found.events
        for d in e.deliveries
    ]
    caused = table(
        "Deliveries caused",
        ("event", "kind", "event status", "subscription", "number", "status", "attempts", "last answer"),
        deliveries,
    )
    again = ""
    # Not reprocessed yet, or its run was interrupted (killed before it finished): it may be run again.
    if record.status in ("rejected", "failed", "dead") and reprocess_mark.open_to_run(record, datetime.now(UTC)):
        again = action(f"/ui/messages/{record.id}/reprocess", "Reprocess", csrf)
    return join(
        [
            Markup(f'<dl class="facts">{listing}</dl>'),
            again,
            raw_fields(record_segments(found)),
            steps,
            produced,
            caused,
        ]
    )


def record_segments(found: Trace) -> list[str]:
    return [redact(line) for line in segments(found.record)]


def raw_fields(lines: list[str]) -> Markup:
    """The message one segment a row, each field labelled (``PID-3``) with its name where known."""
    separator = lines[0][3] if lines and lines[0][:3] in ("MSH", "BHS", "FHS") and len(lines[0]) > 3 else "|"
    if not lines or not lines[0][:3].isalnum():
        return table("Message as received", ("line",), [(line,) for line in lines])
    rows = []
    for line in lines:
        name, found = hl7_fields.fields(line, separator)
        cells = join(
            Markup(
                f'<li><span class="label">{esc(f.label)}</span>'
                + (f' <span class="name">{esc(f.name)}</span>' if f.name else "")
                + f" <code>{esc(f.value)}</code></li>"
            )
            for f in found
        )
        rows.append(f'<tr><th scope="row">{esc(name)}</th><td><ul class="fields">{cells}</ul></td></tr>')
    return Markup(
        '<table class="segments"><caption>Message as received (NHS numbers masked), one segment a row</caption>'
        f'<thead><tr><th scope="col">segment</th><th scope="col">fields</th></tr></thead><tbody>{"".join(rows)}'
        "</tbody></table>"
    )


STATE_TONE = {"breached": "bad", "at risk": "warn", "running": "", "stopped": "ok"}


def referrals(rows: list[Row], unreadable: int) -> Markup:
    body = []
    for r in rows:
        if r.state == "breached":
            left = f"overdue by {span(r.left)}"
        elif r.state == "stopped":
            left = "clock stopped"
        else:
            left = f"{span(r.left)} left"
        body.append(
            Markup(
                f'<tr class="{esc(r.state.replace(" ", "-"))}"><th scope="row">'
                f"{esc(r.referral_id)}</th>"
                f"<td>{esc(r.trust)}</td><td>{esc(r.step)}</td><td>{esc(r.neurological)}</td>"
                f"<td>{esc(when(r.first_contact))}</td><td>{esc(when(r.deadline))}</td>"
                f"<td>{badge(r.state, STATE_TONE[r.state])} {esc(left)}</td></tr>"
            )
        )
    empty = '<tr><td colspan="7">no active referral</td></tr>' if not body else ""
    note = (
        f'<p role="status">{unreadable} plan(s) could not be read (see the pathway faults).</p>' if unreadable else ""
    )
    return Markup(
        f"{note}<table><caption>Active referrals, most urgent first ({len(rows)})</caption><thead><tr>"
        + "".join(
            f'<th scope="col">{h}</th>'
            for h in ("referral", "trust", "step", "neurological status", "first contact", "MRI deadline", "SLA clock")
        )
        + f"</tr></thead><tbody>{''.join(body)}{empty}</tbody></table>"
    )


def _pct(score: float | None) -> str:
    return "-" if score is None else f"{score * 100:.0f}%"


def timeliness(report: Report, month: str, error: str) -> Markup:
    form = Markup(
        '<form method="get" action="/ui/timeliness" class="search"><div><label for="month">Month</label>'
        f'<input id="month" name="month" type="month" value="{esc(month)}"></div>'
        '<button type="submit">Show</button></form>'
    )
    alert = Markup(f'<p role="alert" class="error">{esc(error)}</p>') if error else ""
    headers = ["trust", "referrals", "cancelled"]
    for g in GROUPS:
        headers += [f"{g}: met / counted", f"{g}: breaches", f"{g}: score"]
    rows = []
    for figures in [*report.trusts, report.total]:
        cells: list[object] = [figures.trust or "all trusts", figures.referrals, figures.cancelled]
        for g in GROUPS:
            group = figures.groups[g]
            cells += [f"{group.numerator} / {group.denominator}", group.breaches, _pct(group.score)]
        rows.append(cells)
    bars = [(f.trust or "?", round((f.groups[GROUPS[0]].score or 0) * 100, 1)) for f in report.trusts]
    legend = join(Markup(f"<li><strong>{esc(g)}</strong>: {esc(GROUP_TEXT[g])}</li>") for g in GROUPS)
    return join(
        [
            form,
            alert,
            table(f"NICE NG234 timeliness, {report.month} ({report.zone})", headers, rows, numeric=len(headers) - 1),
            Markup(f"<ul>{legend}</ul>"),
            bar_chart(f"MRI within its window (signs present or unknown), % per trust, {report.month}", bars, unit="%"),
        ]
    )


def dead_letters(messages: list[MessageRow], events: list[Document], deliveries: list[Document], csrf: str) -> Markup:
    message_rows = [
        (
            link(f"/ui/messages/{r.id}", r.id),
            when(r.received),
            status(r.status),
            r.type,
            r.sender,
            r.reason,
            action(f"/ui/messages/{r.id}/reprocess", "Reprocess", csrf) if not r.reprocessed_as else "reprocessed",
        )
        for r in messages
    ]
    event_rows = [
        (
            str(e["_id"]),
            str(e.get("kind") or ""),
            f"{e.get('type', '')}/{e.get('id', '')}",
            link(f"/ui/messages/{e['message_id']}", e["message_id"]) if e.get("message_id") else "-",
            when(e.get("dead_at") or e.get("created_at")),
            redact(str((e.get("fanout") or {}).get("error") or "")),
        )
        for e in events
    ]
    delivery_rows = []
    for d in deliveries:
        fields = {"subscription": str(d.get("subscription_id") or ""), "number": str(d.get("event_number") or "")}
        attempts = d.get("attempts") or []
        last = attempts[-1] if attempts else {}
        buttons = join(
            [
                action("/ui/dead-letters/redeliver", "Redeliver", csrf, fields),
                action("/ui/dead-letters/skip", "Skip", csrf, fields),
            ]
        )
        delivery_rows.append(
            (
                str(d["_id"]),
                fields["subscription"],
                fields["number"],
                when(d.get("dead_at")),
                redact(str(d.get("last_error") or last.get("error") or last.get("code") or "")),
                buttons,
            )
        )
    return join(
        [
            table(
                f"Failed and dead messages ({len(message_rows)})",
                ("record", "received", "status", "type", "sender", "reason", "action"),
                message_rows,
            ),
            table(
                f"Dead outbox events ({len(event_rows)})",
                ("event", "kind", "resource", "message", "since", "error"),
                event_rows,
            ),
            table(
                f"Dead notification deliveries ({len(delivery_rows)})",
                ("delivery", "subscription", "event number", "dead since", "last error", "actions"),
                delivery_rows,
            ),
        ]
    )
