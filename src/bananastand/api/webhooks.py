"""Callbacks on the API: the account's signing secret, the attempt log, resending."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from bananastand.api.deps import CurrentKey, ServicesDep
from bananastand.api.envelope import envelope
from bananastand.api.jobs import parse_json, read_body
from bananastand.errors import ValidationError
from bananastand.ids import now_ms
from bananastand.records import WebhookSecret

router = APIRouter(tags=["callbacks"])


def _secret_data(found: WebhookSecret, window_ms: int) -> dict[str, object]:
    signing = found.signing_secrets(now_ms(), window_ms)
    return {
        "secret": found.secret,
        "createTime": found.created_at,
        "rotateTime": found.rotated_at,
        # Still signs callbacks, beside the new one, until previousSecretExpireTime.
        "previousSecret": signing[1] if len(signing) > 1 else None,
        "previousSecretExpireTime": (
            found.rotated_at + window_ms
            if len(signing) > 1 and found.rotated_at is not None
            else None
        ),
    }


@router.get("/api/v1/account/webhook-secret", summary="The secret callbacks are signed with")
async def get_webhook_secret(services: ServicesDep, key: CurrentKey) -> Response:
    found = await services.webhooks.secret(key.account_id)
    return envelope(_secret_data(found, services.webhooks.rotation_window_ms))


@router.post(
    "/api/v1/account/webhook-secret/rotate",
    summary="Make a new callback secret; the old one also signs during the rotation window",
)
async def rotate_webhook_secret(services: ServicesDep, key: CurrentKey) -> Response:
    found = await services.webhooks.secret(key.account_id, rotate=True)
    return envelope(_secret_data(found, services.webhooks.rotation_window_ms))


@router.get("/api/v1/jobs/callbacks", summary="A task's callback and every delivery attempt")
async def list_callbacks(
    services: ServicesDep, key: CurrentKey, taskId: str | None = None
) -> Response:
    if not taskId:
        raise ValidationError("taskId: required")
    found = await services.webhooks.callback(key.account_id, taskId)
    return envelope(found.to_wire())


@router.post(
    "/api/v1/jobs/callbacks/resend",
    summary="Send a task's callback again (same webhook-id)",
)
async def resend_callback(request: Request, services: ServicesDep, key: CurrentKey) -> Response:
    body = parse_json(await read_body(request, services.settings.max_body_bytes))
    task_id = body.get("taskId") if isinstance(body, dict) else None
    if not isinstance(task_id, str) or not task_id:
        raise ValidationError("taskId: required")
    found = await services.webhooks.resend(key.account_id, task_id)
    return envelope(found.to_wire())
