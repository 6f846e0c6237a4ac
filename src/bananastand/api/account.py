"""The account endpoints of the hosted API: the credit balance."""

from __future__ import annotations

from fastapi import APIRouter, Response

from bananastand.api.deps import CurrentKey, ServicesDep
from bananastand.api.envelope import envelope

router = APIRouter(prefix="/api/v1/chat", tags=["account"])


@router.get("/credit", summary="The account's credit balance", operation_id="getCredit")
async def credit(services: ServicesDep, key: CurrentKey) -> Response:
    """``data`` is the balance of the key's account, a plain number."""
    return envelope(await services.billing.balance(key.account_id))
