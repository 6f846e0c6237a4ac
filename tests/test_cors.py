"""Acceptance: BANANASTAND_CORS_ORIGINS lets the named origins call the API from a browser, no
others."""

from __future__ import annotations

from collections.abc import Callable

from conftest import Server


def test_only_configured_origins_get_cors_headers(start_server: Callable[..., Server]) -> None:
    server = start_server(cors_origins=["https://app.example"])
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,idempotency-key",
    }
    allowed = server.client.options(
        "/api/v1/jobs/createTask", headers={"Origin": "https://app.example", **preflight}
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "idempotency-key" in allowed.headers["access-control-allow-headers"].lower()

    other = server.client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_no_cors_headers_by_default(server: Server) -> None:
    answer = server.client.get("/healthz", headers={"Origin": "https://app.example"})
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers
