"""Checking that a callback came from bananastand, on the receiving side.

Standard library only, so a receiver can import it without the server's dependencies.
A callback carries two signatures:

* Standard Webhooks (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``): an
  HMAC-SHA256 over ``id.timestamp.body`` keyed with the secret's decoded bytes. It covers
  the body, so it is the one checked whenever its headers are present. During a secret
  rotation the header holds one ``v1,<sig>`` per valid secret, space-separated.
* The hosted API's (``X-Webhook-Timestamp``, ``X-Webhook-Signature``): an HMAC-SHA256 over
  ``taskId.timestamp`` keyed with the whole secret string. It does not cover the body;
  it is checked only when the Standard Webhooks headers are absent.

The signing functions live here too, so the server and its receivers share one definition.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from bananastand.errors import BananastandError

__all__ = [
    "CallbackVerificationError",
    "sign_hosted",
    "sign_standard",
    "verify_callback",
]

SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)


class CallbackVerificationError(BananastandError):
    """The callback's signature or timestamp does not check out: do not trust its body."""


def _secret_bytes(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise CallbackVerificationError("the webhook secret is not whsec_<base64>") from None


def sign_standard(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks ``v1,<base64>`` signature of one message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def sign_hosted(secret: str, task_id: str, timestamp: int) -> str:
    """The hosted API's ``X-Webhook-Signature``: keyed with the secret string as is."""
    digest = hmac.new(secret.encode(), f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def _check_timestamp(raw: str | None, tolerance_s: float) -> int:
    if raw is None or not raw.strip().isdigit():
        raise CallbackVerificationError("missing or malformed timestamp header")
    timestamp = int(raw.strip())
    if abs(time.time() - timestamp) > tolerance_s:
        raise CallbackVerificationError("timestamp outside the tolerance window (replayed?)")
    return timestamp


def verify_callback(
    body: bytes | str,
    headers: Mapping[str, str],
    secret: str,
    *,
    tolerance_s: float = 300,
) -> dict[str, Any]:
    """Check a callback's signature and timestamp; returns its parsed JSON body.

    ``body`` must be the raw bytes received (re-encoded JSON would not match). Raises
    `CallbackVerificationError` when nothing checks out.
    """
    raw = body.encode() if isinstance(body, str) else bytes(body)
    lowered = {name.lower(): value for name, value in headers.items()}
    if "webhook-signature" in lowered:
        msg_id = lowered.get("webhook-id")
        if not msg_id:
            raise CallbackVerificationError("missing webhook-id header")
        timestamp = _check_timestamp(lowered.get("webhook-timestamp"), tolerance_s)
        expected = sign_standard(secret, msg_id, timestamp, raw)
        given = lowered["webhook-signature"].split()
        if not any(hmac.compare_digest(expected, candidate) for candidate in given):
            raise CallbackVerificationError("no webhook-signature matches this secret")
        return _parse(raw)
    if "x-webhook-signature" in lowered:
        timestamp = _check_timestamp(lowered.get("x-webhook-timestamp"), tolerance_s)
        payload = _parse(raw)
        data = payload.get("data")
        task_id = data.get("taskId") if isinstance(data, dict) else None
        if not isinstance(task_id, str):
            raise CallbackVerificationError("the body names no data.taskId")
        expected = sign_hosted(secret, task_id, timestamp)
        if not hmac.compare_digest(expected, lowered["x-webhook-signature"].strip()):
            raise CallbackVerificationError("X-Webhook-Signature does not match this secret")
        return payload
    raise CallbackVerificationError("no signature headers")


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(raw)
    except ValueError:
        raise CallbackVerificationError("the body is not JSON") from None
    if not isinstance(payload, dict):
        raise CallbackVerificationError("the body is not a JSON object")
    return payload
