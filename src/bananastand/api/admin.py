"""The operator's HTTP API under ``/admin/``: the same domain operations as the CLI.

Guarded by ``BANANASTAND_ADMIN_TOKEN``, a secret of its own (never an API key), compared
in constant time. Without a token configured the whole API answers 404, as if absent.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from bananastand.api.deps import Services, ServicesDep, services_of
from bananastand.api.envelope import envelope
from bananastand.errors import AuthenticationError, NotFoundError


async def require_admin(request: Request) -> None:
    token = services_of(request).settings.admin_token.get_secret_value()
    if not token:
        raise NotFoundError("the admin API is disabled: set BANANASTAND_ADMIN_TOKEN to enable it")
    scheme, _, given = (request.headers.get("authorization") or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        raise AuthenticationError("admin token required: send Authorization: Bearer <admin token>")


router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


class _Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class NewAccount(_Body):
    name: str = ""


class Limits(_Body):
    """Only the fields sent change; ``null`` restores the server default."""

    create_rate: str | None = None
    read_rate: str | None = None
    max_waiting: Annotated[int, Field(ge=0)] | None = None
    monthly_cap: Annotated[int, Field(ge=0)] | None = None


class NewKeyBody(_Body):
    name: str = ""
    test: bool = False
    expires_at: int | None = None  # epoch milliseconds


class Grant(_Body):
    amount: int
    note: str = ""


class Maintenance(_Body):
    on: bool
    message: str = ""


class ModelSwitch(_Body):
    enabled: bool
    account_id: str | None = None


@router.get("/accounts")
async def list_accounts(services: ServicesDep) -> Response:
    return envelope([account.to_admin() for account in await services.accounts.list_accounts()])


@router.post("/accounts")
async def create_account(services: ServicesDep, body: NewAccount) -> Response:
    return envelope((await services.accounts.create_account(body.name)).to_admin())


@router.get("/accounts/{account_id}")
async def show_account(services: ServicesDep, account_id: str) -> Response:
    return envelope(await account_details(services, account_id))


async def account_details(services: Services, account_id: str) -> dict[str, Any]:
    account = await services.accounts.get_account(account_id)
    keys = await services.accounts.list_keys(account_id)
    history = await services.billing.history(account_id)
    return {
        **account.to_admin(),
        "keys": [key.to_admin() for key in keys],
        "ledger": [
            {
                "amount": entry.amount,
                "reason": entry.reason,
                "taskId": entry.task_id,
                "note": entry.note,
                "createdAt": entry.created_at,
            }
            for entry in history
        ],
    }


@router.post("/accounts/{account_id}/limits")
async def set_limits(services: ServicesDep, account_id: str, body: Limits) -> Response:
    changes = body.model_dump(include=body.model_fields_set)
    return envelope((await services.accounts.set_limits(account_id, changes)).to_admin())


@router.post("/accounts/{account_id}/keys")
async def create_key(services: ServicesDep, account_id: str, body: NewKeyBody) -> Response:
    made = await services.accounts.create_key(
        account_id=account_id, name=body.name, is_test=body.test, expires_at=body.expires_at
    )
    return envelope({**made.key.to_admin(), "secret": made.secret})


@router.post("/keys/{key_id}/revoke")
async def revoke_key(services: ServicesDep, key_id: str) -> Response:
    await services.accounts.revoke_key(key_id)
    return envelope({"id": key_id, "revoked": True})


@router.post("/accounts/{account_id}/credits")
async def add_credits(services: ServicesDep, account_id: str, body: Grant) -> Response:
    balance = await services.billing.grant(account_id, body.amount, body.note)
    return envelope({"accountId": account_id, "credits": balance})


@router.get("/credits/audit")
async def audit(services: ServicesDep) -> Response:
    found = await services.billing.audit()
    return envelope(
        {
            "ok": not found,
            "discrepancies": [
                {"kind": d.kind, "id": d.id, "recorded": d.recorded, "ledger": d.ledger}
                for d in found
            ],
        }
    )


@router.get("/switches")
async def switches(services: ServicesDep) -> Response:
    return envelope((await services.switches.current()).to_admin())


@router.post("/maintenance")
async def maintenance(services: ServicesDep, body: Maintenance) -> Response:
    await services.switches.set_maintenance(body.on, body.message)
    return envelope((await services.switches.current()).to_admin())


@router.post("/models/{model}")
async def switch_model(services: ServicesDep, model: str, body: ModelSwitch) -> Response:
    await services.switches.set_model(model, enabled=body.enabled, account_id=body.account_id)
    return envelope((await services.switches.current()).to_admin())
