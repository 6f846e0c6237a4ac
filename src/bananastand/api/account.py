"""The account endpoints: the credit balance of the hosted API, and what the account page
shows (the ledger, usage per day, the account's keys).

An API key may list and revoke its account's keys but never create one: a leaked key must
not be able to mint keys that outlive its own revocation. Creating keys is the operator's
(``POST /admin/accounts/{id}/keys``).
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from bananastand.api.deps import CurrentKey, ServicesDep
from bananastand.api.envelope import envelope
from bananastand.records import ApiKey

router = APIRouter(tags=["account"])

#: The days ``GET /api/v1/account/usage`` covers unless asked.
DEFAULT_USAGE_DAYS = 30


@router.get("/api/v1/chat/credit", summary="The account's credit balance", operation_id="getCredit")
async def credit(services: ServicesDep, key: CurrentKey) -> Response:
    """``data`` is the balance of the key's account, a plain number."""
    return envelope(await services.billing.balance(key.account_id))


@router.get("/api/v1/account/ledger", summary="The account's grants, charges and refunds")
async def ledger(services: ServicesDep, key: CurrentKey, cursor: str | None = None) -> Response:
    """Newest first, a page at a time: pass ``nextCursor`` back as ``cursor`` for the next
    (``null``: that was the last). A charge or refund names its task (``taskId``)."""
    page = await services.billing.ledger_page(key.account_id, cursor)
    return envelope(
        {
            "entries": [entry.to_wire() for entry in page.entries],
            "nextCursor": page.next_cursor,
        }
    )


@router.get("/api/v1/account/usage", summary="Tasks created and credits spent per UTC day")
async def usage(services: ServicesDep, key: CurrentKey, days: int = DEFAULT_USAGE_DAYS) -> Response:
    """One entry per UTC day of the last ``days`` (1 to 366), today included, oldest first;
    ``credits`` are what was charged less what was refunded."""
    found = await services.billing.usage(key.account_id, days)
    return envelope(
        [{"day": day.day_ms, "tasks": day.tasks, "credits": day.credits} for day in found]
    )


def _key_data(key: ApiKey, caller: ApiKey) -> dict[str, object]:
    listed = key.to_admin()
    del listed["accountId"]
    return {**listed, "current": key.id == caller.id}


@router.get("/api/v1/account/keys", summary="The account's API keys (never their secrets)")
async def list_keys(services: ServicesDep, key: CurrentKey) -> Response:
    """Each key's id, name, prefix, kind (test or live), creation, revocation, expiry and
    last use (to within a minute); ``current`` marks the key that asked."""
    found = await services.accounts.list_keys(key.account_id)
    return envelope([_key_data(each, key) for each in found])


@router.post("/api/v1/account/keys/{key_id}/revoke", summary="Revoke one of the account's keys")
async def revoke_key(services: ServicesDep, key: CurrentKey, key_id: str) -> Response:
    """At once and for good; a key of another account is 404, as an unknown one."""
    await services.accounts.revoke_key(key_id, account_id=key.account_id)
    return envelope({"id": key_id, "revoked": True})
