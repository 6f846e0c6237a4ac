"""Serving the web page: the shell at ``/`` and its scripts and styles under ``/assets/``.

The shell is the only thing rendered here (Jinja, for the Content-Security-Policy nonce and
the assets' version); everything else the page shows it fetches from the public API with
the visitor's key, so the page can do nothing that a script with that key could not. No
CDN and no build step: the modules in ``static/`` are what the browser runs.

The policy is the page's own (``/docs`` keeps the one Swagger UI needs): scripts only from
this server (and only those the shell names with its nonce), no inline styles, images
from this server or the links it hands out, API calls to this server alone. Everything
the page shows of what people typed is set as text, never parsed as HTML.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.responses import HTMLResponse, Response
from starlette.types import Scope

from bananastand import __version__
from bananastand.settings import Settings

ASSETS = "/assets"
_templates = Environment(
    loader=PackageLoader("bananastand.web", "templates"),
    autoescape=select_autoescape(default=True),
)


class _Assets(StaticFiles):
    """The page's modules and styles, revalidated on every load (``no-cache`` with their
    ETag): an upgraded server's page never runs a stale mix of old and new modules."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def install_web(app: FastAPI, settings: Settings) -> None:
    """Serve the page at ``/`` and its assets under ``/assets/``."""
    policy = content_security_policy(settings)
    app.mount(ASSETS, _Assets(packages=[("bananastand.web", "static")]), name="web-assets")

    async def shell(request: Request) -> HTMLResponse:
        nonce = secrets.token_urlsafe(18)
        html = _templates.get_template("index.html").render(nonce=nonce, version=__version__)
        return HTMLResponse(
            html,
            headers={
                "Content-Security-Policy": policy.replace("{nonce}", nonce),
                # The shell names a fresh nonce each time: never served from a cache.
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            },
        )

    app.add_route("/", shell, methods=["GET"], include_in_schema=False)


def content_security_policy(settings: Settings) -> str:
    """The page's policy, with ``{nonce}`` where each response puts its own.

    Result and upload links start with the public URL, which may name another origin than
    the one the visitor typed (a proxy, ``localhost`` against ``127.0.0.1``); with presigned
    redirects the images come from the bucket's host.
    """
    images = ["'self'", "data:", "blob:", _origin(settings.effective_public_url)]
    if settings.storage_backend == "s3" and settings.s3_presigned_redirect:
        endpoint = settings.s3_endpoint_url
        images.append(_origin(endpoint) if endpoint else "https://*.amazonaws.com")
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self' 'nonce-{nonce}'",
            "style-src 'self'",
            "img-src " + " ".join(dict.fromkeys(images)),
            "connect-src 'self'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
            "form-action 'self'",
            "object-src 'none'",
        ]
    )


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
