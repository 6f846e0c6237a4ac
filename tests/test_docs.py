"""Acceptance: the API's documentation pages (/docs, /redoc) work with no internet: their
scripts and
styles come from the server itself, and a headless Chromium refused every non-loopback
request renders them. Real server over real HTTP."""

from __future__ import annotations

import re
from urllib.parse import urljoin

import pytest
from playwright.sync_api import Page

from browser import Browser
from conftest import Server

CREATE_TASK = "/api/v1/jobs/createTask"
ASSETS = {  # what each page loads, and the type it must come as
    "/docs": {
        "/docs-static/swagger-ui-bundle.js": "text/javascript",
        "/docs-static/swagger-ui.css": "text/css",
        "/docs-static/favicon.png": "image/png",
        "/openapi.json": "application/json",
    },
    "/redoc": {
        "/docs-static/redoc.standalone.js": "text/javascript",
        "/docs-static/favicon.png": "image/png",
        "/openapi.json": "application/json",
    },
}


@pytest.mark.parametrize("page", sorted(ASSETS))
def test_the_docs_pages_load_everything_from_the_server_itself(server: Server, page: str) -> None:
    response = server.client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    # Every address in it: attribute values and the script's strings.
    urls = set(re.findall(r"""[=:]\s*["']((?:/|[a-z]+:)[^"'\s<>]*)["']""", html))
    assert urls == set(ASSETS[page]), urls
    for url, content_type in ASSETS[page].items():
        asset = server.client.get(urljoin(server.base_url + page, url))
        assert asset.status_code == 200, url
        assert asset.headers["content-type"].startswith(content_type), (url, asset.headers)
        assert len(asset.content) > 1000, url
    # Images only from here: ReDoc's sidebar would fetch Redocly's logo from its CDN.
    assert response.headers["content-security-policy"] == "img-src 'self' data:"
    spec = server.client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    assert "post" in spec["paths"][CREATE_TASK]


def _swagger_ui_operation(page: Page) -> str:
    path = page.locator(".opblock-summary-path", has_text=re.compile("createTask")).first
    path.wait_for(state="visible")
    return path.inner_text().replace("\u200b", "")  # Swagger UI lets long paths wrap


def test_swagger_ui_renders_the_api_without_internet(server: Server, browser: Browser) -> None:
    visit = browser.visit(server.base_url + "/docs", _swagger_ui_operation)
    assert visit.result == CREATE_TASK
    assert visit.blocked == []
    assert visit.errors == []


def _redoc_operation(page: Page) -> str:
    path = page.get_by_text(CREATE_TASK, exact=True).first
    path.wait_for(state="attached")
    return path.inner_text()


def test_redoc_renders_the_api_without_internet(server: Server, browser: Browser) -> None:
    visit = browser.visit(server.base_url + "/redoc", _redoc_operation)
    assert visit.result == CREATE_TASK
    assert visit.blocked == []
    assert visit.errors == []
