"""What a callback carries: the body, both schemes' signed headers, and new secrets."""

from __future__ import annotations

import base64
import secrets

import orjson

from bananastand.client.webhooks import sign_hosted, sign_standard
from bananastand.codes import Code
from bananastand.contract import TaskState
from bananastand.records import Task
from bananastand.results import RecordMaker


def new_secret() -> str:
    """``whsec_`` + base64 of 32 random bytes: the Standard Webhooks form."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def callback_body(task: Task, records: RecordMaker) -> bytes:
    """The recordInfo envelope of the ended task: code 200 on success, 501 on failure.

    Made for each attempt: a retry after the server moved carries links that work now."""
    if task.state is TaskState.SUCCESS:
        code, msg = Code.OK, "success"
    else:
        code, msg = Code.GENERATION_FAILED, task.fail_msg or "generation failed"
    return orjson.dumps({"code": code, "msg": msg, "message": msg, "data": records.record(task)})


def signed_headers(
    *, msg_id: str, task_id: str, body: bytes, signing: tuple[str, ...], timestamp: int
) -> dict[str, str]:
    """Both schemes' headers. ``signing`` is the current secret, then the previous one
    during a rotation window: Standard Webhooks carries one signature per secret, the
    hosted API's header only the current one."""
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(
            sign_standard(secret, msg_id, timestamp, body) for secret in signing
        ),
        "X-Webhook-Timestamp": str(timestamp),
        "X-Webhook-Signature": sign_hosted(signing[0], task_id, timestamp),
    }
