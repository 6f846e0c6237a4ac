"""The API's documentation pages, working without internet: Swagger UI at ``/docs``, ReDoc
at ``/redoc``.

FastAPI's own pages load their scripts and styles from a CDN, so on a closed network (where
self-hosted servers often live) they stay blank. Here they come from the ``fastapi-offline``
package, which ships current builds of swagger-ui-dist 5 and the ReDoc 2 standalone bundle
(the ``swagger-ui-bundle`` package ships Swagger UI 4, which cannot render the OpenAPI 3.1
that FastAPI writes), served under ``/docs-static/``. ReDoc goes without Google Fonts, and
a Content-Security-Policy keeps images to this server: ReDoc's sidebar would fetch
Redocly's logo from its CDN (its page hides the image when it fails to load).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

STATIC = "/docs-static"
_HEADERS = {"Content-Security-Policy": "img-src 'self' data:"}


def install_docs(app: FastAPI) -> None:
    """Serve the pages and their assets; the app is made with ``docs_url=None`` and
    ``redoc_url=None`` so that FastAPI's CDN-bound pages are not there as well."""
    app.mount(STATIC, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-static")
    app.add_route("/docs", _swagger_ui, include_in_schema=False)
    app.add_route("/redoc", _redoc, include_in_schema=False)


def _urls(request: Request) -> tuple[str, str]:
    """The OpenAPI document's URL and the assets' folder, behind any proxy prefix."""
    root = str(request.scope.get("root_path", "")).rstrip("/")
    return root + str(request.app.openapi_url), root + STATIC


async def _swagger_ui(request: Request) -> HTMLResponse:
    openapi_url, static = _urls(request)
    return _contained(
        get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{request.app.title} - Swagger UI",
            swagger_js_url=f"{static}/swagger-ui-bundle.js",
            swagger_css_url=f"{static}/swagger-ui.css",
            swagger_favicon_url=f"{static}/favicon.png",
        )
    )


async def _redoc(request: Request) -> HTMLResponse:
    openapi_url, static = _urls(request)
    return _contained(
        get_redoc_html(
            openapi_url=openapi_url,
            title=f"{request.app.title} - ReDoc",
            redoc_js_url=f"{static}/redoc.standalone.js",
            redoc_favicon_url=f"{static}/favicon.png",
            with_google_fonts=False,
        )
    )


def _contained(page: HTMLResponse) -> HTMLResponse:
    """``page`` under the policy that keeps its images to this server."""
    page.headers.update(_HEADERS)
    return page
