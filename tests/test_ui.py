"""The operator dashboard (/ui) in a real Chromium against the hub served by uvicorn on loopback.

The data goes in through the hub's own paths: a Subscription through the API, referrals and a refused
frame over MLLP, the mapper and the notifier run in-process (the receiver fails every notification and
a delivery has one attempt, so it is dead-lettered). Chromium is Debian's (``/usr/bin/chromium``):
without it these tests fail, saying which package to install.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from helpers import serve_app
from playwright.async_api import Browser, Page, async_playwright
from receivers import (
    RBL_REFERRALS,
    loopback_settings,
    notification_type,
    post_subscription,
    rest_hook_channel,
    serve_http,
    subscription_body,
)
from tokens import register

from services.api.app import create_app
from services.intake.service import IntakeService
from services.mapper.service import MapperService
from services.notifier.service import NotifierService
from shared.mllp import MllpClient
from shared.settings import Settings
from shared.store import Store

CHROMIUM = os.environ.get("MSCC_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
NHS = "9449305552"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Callbacks to the loopback receiver; one attempt per notification, so a failure is a dead letter.
    return loopback_settings(settings, notifier_max_attempts=1)


def referral(control_id: str, trust: str, when: datetime, nhs: str = NHS) -> bytes:
    stamp = when.astimezone(UTC).strftime("%Y%m%d%H%M%S")
    lines = [
        f"MSH|^~\\&|PAS|{trust}|MSCC-HUB|REN|{stamp}||REF^I12^REF_I12|{control_id}|P|2.5",
        f"RF1|A^Accepted|S^STAT|MSCC^Metastatic spinal cord compression||R^Referral|{trust}-{control_id}|{stamp}|||"
        "Suspected MSCC",
        f"PRD|RP|ONCOLOGY^ACUTE||^^^{trust}",
        f"PID|1||{nhs}^^^NHS^NH~{trust}{control_id}^^^{trust}^MR||DEMO^ALEX||19580214|M",
        "OBX|1|ST|NEURO^Neurological status||Bilateral leg weakness||||||F",
    ]
    return ("\r".join(lines) + "\r").encode()


async def send(intake: IntakeService, *messages: bytes) -> list[bytes]:
    client = await MllpClient.connect("127.0.0.1", intake.mllp.port, timeout_s=30)
    try:
        return [await client.send(m) for m in messages]
    finally:
        await client.close()


async def failing_receiver(request: web.Request) -> web.Response:
    """Answers the handshake, fails every notification after it."""
    body = await request.json()
    return web.Response(status=200 if notification_type(body) == "handshake" else 500)


@pytest.fixture
async def hub(
    intake: IntakeService, settings: Settings, session: aiohttp.ClientSession
) -> AsyncIterator[tuple[str, IntakeService]]:
    """The hub with its data, served on a loopback port; yields the base URL."""
    app = create_app(intake)
    transport = httpx.ASGITransport(app=app)
    async with serve_http(failing_receiver) as base, httpx.AsyncClient(transport=transport, base_url="http://t") as api:
        body = subscription_body(
            settings,
            rest_hook_channel(f"{base}/hook", "id-only"),
            topic="referral-status",
            reason="AOS",
            filters=[RBL_REFERRALS],
        )
        await post_subscription(api, body)
        notifier = NotifierService(intake.store, settings, session)
        await notifier.run(asyncio.Event(), burst=True)  # the handshake
        now = datetime.now(UTC)
        acks = await send(
            intake,
            referral("UI-BREACH", "RBL", now - timedelta(hours=30)),
            referral("UI-RISK", "RJR", now - timedelta(hours=20), "9434765919"),
            b"PID|1||9449305552^^^NHS^NH||NO^HEADER\r",
        )
        assert [a.count(b"MSA|AA|") for a in acks] == [1, 1, 0]
        await MapperService(intake.store).run(asyncio.Event(), burst=True)
        await notifier.run(asyncio.Event(), burst=True)
    assert await intake.store.deliveries.count_documents({"status": "dead"}) == 1
    async with serve_app(app) as url:
        yield url, intake


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: install the Debian 'chromium' package (apt-get install chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def open_page(browser: Browser) -> tuple[Page, list[str]]:
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))
    return page, errors


def cells(row: Any) -> list[str]:
    return [str(c).strip() for c in row]


async def row_of(page: Page, caption: str, first: str) -> list[str]:
    table = page.locator("table", has=page.locator("caption", has_text=caption))
    row = table.locator("tbody tr", has=page.locator(f'th:text-is("{first}")'))
    return cells(await row.locator("th, td").all_inner_texts())


async def test_the_dashboard_pages_and_actions(hub: tuple[str, IntakeService], browser: Browser) -> None:
    base, intake = hub
    store = intake.store
    page, errors = await open_page(browser)

    # Channels: the figures are the store's.
    answer = await page.goto(f"{base}/ui?window=7d")
    assert answer is not None and answer.status == 200
    rbl = await row_of(page, "Messages per sender and type", "RBL")
    stored = await store.messages.count_documents({"header.sending_facility": "RBL"})
    mapped = await store.messages.count_documents({"header.sending_facility": "RBL", "status": "mapped"})
    delivered = await store.deliveries.count_documents({"status": "delivered"})
    assert rbl[1] == "REF^I12" and rbl[2] == str(stored) and rbl[5] == str(mapped) and rbl[8] == str(delivered)
    total = await row_of(page, "Messages per sender and type", "all senders")
    everything = await store.messages.count_documents({"protocol": {"$ne": "hl7v2-batch"}})
    rejected = await store.messages.count_documents({"status": "rejected"})
    assert total[2] == str(everything) and total[4] == str(rejected) and rejected == 1
    assert await page.locator("svg.chart rect").count() > 0

    # Messages: search, then the message page labels PID-3 and masks the NHS number.
    await page.goto(f"{base}/ui/messages")
    await page.fill("#control_id", "UI-BREACH")
    await page.click("form.search button")
    await page.wait_for_url(re.compile(r"control_id=UI-BREACH"))
    links = page.locator("table tbody a")
    assert await links.count() == 1
    await links.first.click()
    await page.wait_for_selector("table.segments")
    text = await page.inner_text("main")
    assert "PID-3" in text and "Patient Identifier List" in text
    content = await page.content()
    assert NHS not in content, content[max(content.find(NHS) - 300, 0) : content.find(NHS) + 50]
    assert "944*****2" in text
    assert "Processing trace" in text and "ServiceRequest/" in text

    # Referrals: the breached one stands out, in words too; the other is at risk.
    await page.goto(f"{base}/ui/referrals")
    breached = page.locator("tr.breached")
    assert await breached.count() == 1 and "RBL" in await breached.inner_text()
    assert "breached" in await breached.inner_text() and "overdue by" in await breached.inner_text()
    assert "at risk" in await page.locator("tr.at-risk").inner_text()

    # Timeliness: the month of the referrals, one row per trust.
    month = (datetime.now(UTC) - timedelta(hours=30)).strftime("%Y-%m")
    answer = await page.goto(f"{base}/ui/timeliness?month={month}")
    assert answer is not None and answer.status == 200
    assert "RBL" in await page.inner_text("table") and await page.locator("svg.chart").count() == 1

    # Dead letters: redeliver, then skip, the dead delivery; the store changes each time.
    await page.goto(f"{base}/ui/dead-letters")
    [dead] = [d async for d in store.deliveries.find({"status": "dead"})]
    await page.click('button:text-is("Redeliver")')
    await page.wait_for_selector("text=queued again")
    again = await store.deliveries.find_one({"_id": dead["_id"]})
    assert again is not None and again["status"] == "pending"
    await store.deliveries.update_one({"_id": dead["_id"]}, {"$set": {"status": "dead"}})  # failed once more
    await page.goto(f"{base}/ui/dead-letters")
    await page.click('button:text-is("Skip")')
    await page.wait_for_selector("text=skipped")
    skipped = await store.deliveries.find_one({"_id": dead["_id"]})
    assert skipped is not None and skipped["status"] == "skipped"
    assert errors == []


async def test_reprocess_and_csrf(hub: tuple[str, IntakeService], browser: Browser) -> None:
    base, intake = hub
    store = intake.store
    record = await store.messages.find_one({"header.control_id": "UI-RISK"})
    assert record is not None
    await store.messages.update_one({"_id": record["_id"]}, {"$set": {"status": "failed"}})  # as a mapper failure
    page, errors = await open_page(browser)
    await page.goto(f"{base}/ui/dead-letters")
    await page.click(f'form[action="/ui/messages/{record["_id"]}/reprocess"] button')
    await page.wait_for_selector("text=a copy queued for the mapper")
    original = await store.messages.find_one({"_id": record["_id"]})
    assert original is not None and len(original["reprocessed_as"]) == 1
    copy = await store.messages.find_one({"_id": original["reprocessed_as"][0]})
    assert copy is not None and copy["status"] == "ready"
    assert errors == []

    # A POST without the CSRF token (the session cookie alone) is refused, and changes nothing.
    async with httpx.AsyncClient(base_url=base) as client:
        await client.get("/ui")
        assert client.cookies.get("mscc_ui_csrf")
        refused = await client.post("/ui/dead-letters/skip", data={"subscription": "x", "number": "1"})
        assert refused.status_code == 403 and "CSRF" in refused.text
        wrong = await client.post("/ui/dead-letters/skip", data={"subscription": "x", "number": "1", "csrf": "no"})
        assert wrong.status_code == 403


async def test_sign_in(hub: tuple[str, IntakeService], browser: Browser, store: Store) -> None:
    base, intake = hub
    team = await register(intake.store, "REN", ["system/*.read", "system/*.write"])
    trust = await register(intake.store, "RBL", ["system/*.read", "system/*.write"])
    assert team.secret and trust.secret

    # Not on loopback, no credentials: sent to sign in; an expired or forged cookie too.
    app = create_app(intake)
    remote = httpx.ASGITransport(app=app, client=("192.0.2.10", 50000))
    async with httpx.AsyncClient(transport=remote, base_url="http://hub.test") as client:
        answer = await client.get("/ui/referrals")
        assert answer.status_code == 303 and answer.headers["location"].startswith("/ui/login?next=")
        client.cookies.set("mscc_ui_token", "not-a-token", domain="hub.test", path="/ui")
        answer = await client.get("/ui")
        assert answer.status_code == 303 and "mscc_ui_token=;" in answer.headers["set-cookie"]

    page, errors = await open_page(browser)
    for client, expected in ((trust, 403), (team, 200)):
        await page.goto(f"{base}/ui/login?next=/ui/referrals")
        await page.fill("#client_id", client.client_id)
        await page.fill("#client_secret", client.secret or "")
        async with page.expect_navigation() as navigation:
            await page.click("form.login button")
        answer = await navigation.value
        assert answer is not None and answer.status == expected
    assert page.url.endswith("/ui/referrals")
    assert team.client_id in await page.inner_text("header")
    cookie = next(c for c in await page.context.cookies() if c["name"] == "mscc_ui_token")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    # 403 for the trust printed a console error for the refused document; nothing else may.
    assert [e for e in errors if "403" not in e] == []
