"""Helpers for the accounts tests: the admin API, the CLI, and the credit endpoint."""

from __future__ import annotations

from typing import Any

import httpx

from conftest import Server

ADMIN_TOKEN = "admin-secret-for-tests-0123456789"


def admin(server: Server, method: str, path: str, body: Any = None) -> dict[str, Any]:
    response = server.client.request(
        method, path, json=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert response.status_code == 200
    answer: dict[str, Any] = response.json()
    return answer


def admin_ok(server: Server, method: str, path: str, body: Any = None) -> Any:
    answer = admin(server, method, path, body)
    assert answer["code"] == 200, answer
    return answer["data"]


def switch_model(
    server: Server, model: str, *, enabled: bool, account_id: str | None = None
) -> None:
    """Switch ``model`` on or off over the admin API, for everyone or for one account."""
    body: dict[str, Any] = {"enabled": enabled}
    if account_id is not None:
        body["accountId"] = account_id
    admin_ok(server, "POST", f"/admin/models/{model}", body)


def new_account(server: Server, credits: int = 0, *, test: bool = False) -> tuple[str, str]:
    """(account id, live key secret) made over the admin API, with ``credits`` granted."""
    account_id = admin_ok(server, "POST", "/admin/accounts", {"name": "team"})["id"]
    if credits:
        admin_ok(server, "POST", f"/admin/accounts/{account_id}/credits", {"amount": credits})
    key = admin_ok(server, "POST", f"/admin/accounts/{account_id}/keys", {"test": test})
    return account_id, key["secret"]


def call(server: Server, method: str, path: str, key: str, **kwargs: Any) -> httpx.Response:
    response = server.client.request(
        method, path, headers={"Authorization": f"Bearer {key}"}, **kwargs
    )
    assert response.status_code == 200
    return response


def balance(server: Server, key: str) -> Any:
    answer = call(server, "GET", "/api/v1/chat/credit", key).json()
    assert answer["code"] == 200, answer
    return answer["data"]
