"""/docs (Swagger UI) and /redoc load nothing from another host: every asset is served by the hub itself.

Hospital networks often have no internet access, so a page that names a CDN shows nothing there. The
pages are fetched as a browser would, without a token and from another machine (no development client).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from services.api.app import create_app
from services.intake.service import IntakeService

BASE = "http://hub.test"
# src="...", href="...", url: '...', spec-url="..." in the pages (every URL a browser would load).
_URL = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|\burl\s*:\s*["']([^"']+)["']""")


@pytest.fixture
async def browser(intake: IntakeService) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(intake), client=("198.51.100.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield client


def urls(html: str) -> list[str]:
    return [a or b for a, b in _URL.findall(html)]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_pages_name_no_other_host_and_every_asset_answers(browser: httpx.AsyncClient, page: str) -> None:
    answer = await browser.get(page)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    html = answer.text
    assert "cdn.jsdelivr.net" not in html and "fonts.googleapis.com" not in html
    found = urls(html)
    assert any(u.endswith(".js") for u in found), found
    for url in found:
        absolute = urljoin(f"{BASE}{page}", url)
        assert urlsplit(absolute).netloc == "hub.test", f"{page} loads {url} from another host"
        asset = await browser.get(absolute)
        assert asset.status_code == 200, (url, asset.status_code)
        assert asset.content, url


async def test_swagger_ui_calls_no_online_validator_and_its_assets_are_the_bundles(browser: httpx.AsyncClient) -> None:
    html = (await browser.get("/docs")).text
    assert '"validatorUrl": null' in html  # otherwise Swagger UI asks validator.swagger.io about the document
    script = next(u for u in urls(html) if u.endswith(".js"))
    bundle = await browser.get(script)
    assert "SwaggerUIBundle" in bundle.text[:2000]
    assert bundle.headers["content-type"] in ("text/javascript; charset=utf-8", "application/javascript")
    assert (await browser.get("/docs/oauth2-redirect")).status_code == 200
