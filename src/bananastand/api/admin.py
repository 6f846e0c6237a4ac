"""The operator's HTTP API under ``/admin/``: the same domain operations as the CLI.

Guarded by ``BANANASTAND_ADMIN_TOKEN``, a secret of its own (never an API key), compared
in constant time. Without a token configured the whole API answers 404, as if absent.

Bodies are read by a dependency (`json_body`) rather than as FastAPI body parameters:
FastAPI reads and parses those before any dependency runs, so a caller without the token
could make the server hold any body it sent. This way the token is checked first and the
body is capped and parsed as createTask's is (``BANANASTAND_MAX_BODY_BYTES``).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError
from pydantic.alias_generators import to_camel

from bananastand.api.deps import ServicesDep, services_of
from bananastand.api.envelope import envelope
from bananastand.api.jobs import parse_json, read_body
from bananastand.billing import account_details
from bananastand.breakers import upstream_views
from bananastand.contract import describe_validation_error
from bananastand.errors import AuthenticationError, NotFoundError, ValidationError
from bananastand.providers.registry import route_plan
from bananastand.storable import INT32_MAX, INT64_MAX


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
    max_waiting: Annotated[int, Field(ge=0, le=INT32_MAX)] | None = None
    monthly_cap: Annotated[int, Field(ge=0, le=INT64_MAX)] | None = None


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


BodyT = TypeVar("BodyT", bound=_Body)


def json_body(model: type[BodyT]) -> Callable[[Request], Awaitable[BodyT]]:
    """A dependency that reads the body as ``model``; it runs after `require_admin`."""

    async def read(request: Request) -> BodyT:
        raw = await read_body(request, services_of(request).settings.max_body_bytes)
        try:
            return model.model_validate(parse_json(raw))
        except PydanticValidationError as exc:
            raise ValidationError(describe_validation_error(exc)) from None

    return read


def documented(model: type[_Body]) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` FastAPI would have written for a body parameter."""
    schema = model.model_json_schema(by_alias=True)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


@router.get("/accounts")
async def list_accounts(services: ServicesDep) -> Response:
    return envelope([account.to_admin() for account in await services.accounts.list_accounts()])


@router.post("/accounts", openapi_extra=documented(NewAccount))
async def create_account(
    services: ServicesDep, body: Annotated[NewAccount, Depends(json_body(NewAccount))]
) -> Response:
    return envelope((await services.accounts.create_account(body.name)).to_admin())


@router.get("/accounts/{account_id}")
async def show_account(services: ServicesDep, account_id: str) -> Response:
    return envelope(await account_details(services.accounts, services.billing, account_id))


@router.post("/accounts/{account_id}/limits", openapi_extra=documented(Limits))
async def set_limits(
    services: ServicesDep, account_id: str, body: Annotated[Limits, Depends(json_body(Limits))]
) -> Response:
    changes = body.model_dump(include=body.model_fields_set)
    return envelope((await services.accounts.set_limits(account_id, changes)).to_admin())


@router.post("/accounts/{account_id}/keys", openapi_extra=documented(NewKeyBody))
async def create_key(
    services: ServicesDep,
    account_id: str,
    body: Annotated[NewKeyBody, Depends(json_body(NewKeyBody))],
) -> Response:
    made = await services.accounts.create_key(
        account_id=account_id, name=body.name, is_test=body.test, expires_at=body.expires_at
    )
    return envelope({**made.key.to_admin(), "secret": made.secret})


@router.post("/keys/{key_id}/revoke")
async def revoke_key(services: ServicesDep, key_id: str) -> Response:
    await services.accounts.revoke_key(key_id)
    return envelope({"id": key_id, "revoked": True})


@router.post("/accounts/{account_id}/credits", openapi_extra=documented(Grant))
async def add_credits(
    services: ServicesDep, account_id: str, body: Annotated[Grant, Depends(json_body(Grant))]
) -> Response:
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


@router.get("/workers")
async def workers(services: ServicesDep) -> Response:
    """The live worker processes of the cluster (a heartbeat within three of their
    intervals), by host and pid."""
    found = await services.store.live_workers()
    return envelope([worker.to_admin() for worker in found])


@router.get("/upstreams")
async def upstreams(services: ServicesDep) -> Response:
    """The routed upstreams with their circuit breakers (as the cluster shares them), and
    the routes: per model, the upstreams its live tasks are tried on, in order."""
    plan = route_plan(services.settings)
    found = await services.store.breakers()
    routes = {model: list(route) for model, route in plan.routes.items()}
    return envelope({"upstreams": upstream_views(plan, found), "routes": routes})


@router.get("/queue")
async def queue(services: ServicesDep) -> Response:
    """The unfinished tasks by state, when the oldest waiting one was created (and how long
    ago, by the store's clock), and the live workers with the tasks they have in flight."""
    depth = await services.store.queue_depth()
    found = await services.store.live_workers()
    oldest = depth.oldest_waiting_ms
    return envelope(
        {
            "byState": depth.by_state,
            "oldestWaitingAt": oldest,
            "oldestWaitingAgeMs": None if oldest is None else services.store.now_ms() - oldest,
            "workers": [worker.to_admin() for worker in found],
        }
    )


@router.get("/switches")
async def switches(services: ServicesDep) -> Response:
    return envelope((await services.switches.current()).to_admin())


@router.post("/maintenance", openapi_extra=documented(Maintenance))
async def maintenance(
    services: ServicesDep, body: Annotated[Maintenance, Depends(json_body(Maintenance))]
) -> Response:
    await services.switches.set_maintenance(body.on, body.message)
    return envelope((await services.switches.current()).to_admin())


@router.post("/models/{model}", openapi_extra=documented(ModelSwitch))
async def switch_model(
    services: ServicesDep, model: str, body: Annotated[ModelSwitch, Depends(json_body(ModelSwitch))]
) -> Response:
    await services.switches.set_model(model, enabled=body.enabled, account_id=body.account_id)
    return envelope((await services.switches.current()).to_admin())
