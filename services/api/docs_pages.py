"""The API documentation pages, ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), served with local assets.

Hospital networks often cannot reach a CDN, so the pages load nothing from another host: FastAPI's
"self-hosting JavaScript and CSS for docs" pattern, with the files of the ``fastapi-offline`` package
(Swagger UI 5 and ReDoc 2 bundles, MIT-licensed, installed with the hub like any dependency) served
under ``/docs-assets``. Swagger UI's online validator is off (it would call validator.swagger.io) and
ReDoc loads no web fonts. Like FastAPI's own pages, these need no token.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import HTMLResponse

ASSETS = "/docs-assets"
SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"
REDOC_JS = "redoc.standalone.js"
FAVICON = "favicon.png"


def install(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Serve the pages and their assets on ``app`` (created with ``docs_url=None, redoc_url=None``)."""
    assets = files("fastapi_offline") / "static"
    app.mount(ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = f"{docs_url}/oauth2-redirect"

    async def swagger(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title}: Swagger UI",
            swagger_js_url=f"{root}{ASSETS}/{SWAGGER_JS}",
            swagger_css_url=f"{root}{ASSETS}/{SWAGGER_CSS}",
            swagger_favicon_url=f"{root}{ASSETS}/{FAVICON}",
            oauth2_redirect_url=f"{root}{redirect_url}",
            swagger_ui_parameters={"validatorUrl": None},
        )

    async def swagger_redirect(request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title}: ReDoc",
            redoc_js_url=f"{root}{ASSETS}/{REDOC_JS}",
            redoc_favicon_url=f"{root}{ASSETS}/{FAVICON}",
            with_google_fonts=False,
        )

    # Plain routes, as FastAPI adds its own pages: outside the OpenAPI document and the token check.
    app.add_route(docs_url, swagger, include_in_schema=False)
    app.add_route(redirect_url, swagger_redirect, include_in_schema=False)
    app.add_route(redoc_url, redoc, include_in_schema=False)
