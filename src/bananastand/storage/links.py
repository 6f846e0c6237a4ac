"""Signed, expiring links to stored files: ``{public_url}/files/{expires}/{signature}/{key}``.

The signature is an HMAC-SHA256 over ``expires/key`` with a secret every process of a
deployment shares: from ``BANANASTAND_SIGNING_SECRET``, or made once and kept in the data
folder. A link thus needs no database lookup, survives restarts, works on every API
process, and cannot be forged, extended, or pointed at another file. Whoever holds a link
may download the file until it expires, whatever ``Authorization`` header comes along.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from bananastand.ids import random_token

#: Length of the signature in a link: 32 base64url characters, 192 bits.
_SIGNATURE_CHARS = 32
_SECRET_FILE = "signing-secret"  # noqa: S105 (a file name)
#: The signed part of a link's path, whatever public URL it was made for.
_SIGNED_PATH = re.compile(rf"/files/(\d{{1,12}})/([A-Za-z0-9_-]{{{_SIGNATURE_CHARS}}})/(.+)$")


class LinkSigner:
    def __init__(
        self, secret: bytes, public_url: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the link signing secret must be at least 16 bytes")
        self._secret = secret
        self._base = public_url.rstrip("/") + "/files/"
        self._clock = clock

    def url(self, key: str, expires_at: int) -> str:
        """A link to ``key`` valid until ``expires_at`` (epoch seconds)."""
        return f"{self._base}{expires_at}/{self._sign(expires_at, key)}/{quote(key, safe='/')}"

    def url_for(self, key: str, lifetime_s: int) -> str:
        return self.url(key, int(self._clock()) + lifetime_s)

    def signed_expiry(self, expires: str, signature: str, key: str) -> int | None:
        """The link's expiry (epoch seconds) when we signed exactly this link, else None:
        forged, tampered (another key, another expiry) or signed with another secret."""
        if not (expires.isdigit() and len(expires) <= 12):
            return None
        expires_at = int(expires)
        if not hmac.compare_digest(signature, self._sign(expires_at, key)):
            return None
        return expires_at

    def seconds_left(self, expires_at: int) -> int:
        """Seconds until ``expires_at``; zero or less once the link has expired."""
        return expires_at - int(self._clock())

    def is_ours(self, url: str) -> bool:
        """Whether ``url`` points under our file links (authentic or not), or is one we
        signed for another public URL (before a move to another port or domain)."""
        return url.startswith(self._base) or self.parse(url, allow_expired=True) is not None

    def parse(self, url: str, *, allow_expired: bool = False) -> str | None:
        """The storage key of one of our own, authentic links, else None.

        The host is not looked at: links handed out before the server moved still name
        their file, and only the signature proves a link is ours. ``allow_expired``
        accepts a link past its expiry (to hand out a fresh one).
        """
        try:
            found = _SIGNED_PATH.search(urlsplit(url).path)
        except ValueError:  # not a URL at all (an unbalanced "[" in the host, ...)
            return None
        if found is None:
            return None
        expires, signature, quoted_key = found.groups()
        key = unquote(quoted_key)
        expires_at = self.signed_expiry(expires, signature, key)
        if expires_at is None or (not allow_expired and self.seconds_left(expires_at) <= 0):
            return None
        return key

    def _sign(self, expires_at: int, key: str) -> str:
        digest = hmac.new(self._secret, f"{expires_at}/{key}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode()[:_SIGNATURE_CHARS]


def load_secret(configured: str, data_dir: Path) -> bytes:
    """The configured secret, else the one kept in ``data_dir`` (made there on first use).

    Made aside and hard-linked into place, which fails if the file exists: processes
    starting at the same moment all end up reading the one that won.
    """
    if configured:
        return configured.encode()
    path = data_dir / _SECRET_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        aside = data_dir / f".{_SECRET_FILE}-{random_token(8)}"
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(random_token(48))
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
        finally:
            aside.unlink(missing_ok=True)
    return path.read_text().strip().encode()
