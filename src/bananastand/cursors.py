"""The opaque cursors of paged lists (tasks, the ledger): a row's ``seq``, wrapped so that
clients pass it back as they got it rather than counting on what it holds."""

from __future__ import annotations

import base64
import binascii

from bananastand.errors import ValidationError


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        seq = int(raw[1:]) if raw.startswith("s") and raw[1:].isdigit() else -1
        if not 0 < seq < 2**63:
            raise ValueError(raw)
        return seq
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationError("cursor: not a cursor this server handed out") from None
