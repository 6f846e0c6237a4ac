"""Accounts and their API keys: creation, revocation, and authenticating a request.

A key is shown once, when it is made; only its SHA-256 is stored (keys carry ~190 bits of
randomness, so a slow hash would add latency to every request and no safety).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial

from bananastand.errors import AuthenticationError, NotFoundError
from bananastand.ids import new_account_id, new_key_id, now_ms, random_token
from bananastand.records import Account, ApiKey
from bananastand.store import accounts as queries
from bananastand.store.database import Database

LIVE_PREFIX = "bs_live_"
TEST_PREFIX = "bs_test_"
_SECRET_LENGTH = 32
_KEY_PATTERN = re.compile(r"bs_(live|test)_[A-Za-z0-9]{32}")
#: Unknown keys are remembered briefly, so a key made a moment ago works almost at once.
_NEGATIVE_TTL = 1.0
_CACHE_SIZE = 10_000


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class NewKey:
    key: ApiKey
    #: The secret itself: shown to the caller once, never stored.
    secret: str


class Accounts:
    """Domain operations on accounts and keys; shared by the CLI, the API and the admin."""

    def __init__(self, db: Database, *, key_cache_seconds: float = 5.0) -> None:
        self._db = db
        self._cache_ttl = key_cache_seconds
        # secret hash -> (key or None, monotonic expiry). Revocations reach every process
        # within ``key_cache_seconds``.
        self._cache: OrderedDict[str, tuple[ApiKey | None, float]] = OrderedDict()

    async def create_account(self, name: str = "") -> Account:
        return await self._db.write(
            partial(queries.create_account, account_id=new_account_id(), name=name, now_ms=now_ms())
        )

    async def count_accounts(self) -> int:
        return await self._db.read(queries.count_accounts)

    async def create_key(
        self, *, account_id: str | None = None, name: str = "", is_test: bool = False
    ) -> NewKey:
        """Make a key; without ``account_id``, in a new account of its own."""
        secret = (TEST_PREFIX if is_test else LIVE_PREFIX) + random_token(_SECRET_LENGTH)
        created = now_ms()
        account_for_key = account_id or new_account_id()
        key = ApiKey(
            id=new_key_id(),
            account_id=account_for_key,
            name=name,
            display_prefix=secret[: len(LIVE_PREFIX) + 4],
            is_test=is_test,
            created_at=created,
            revoked_at=None,
            expires_at=None,
        )

        inserted = await self._db.write(
            partial(
                queries.insert_key,
                key=key,
                secret_hash=hash_secret(secret),
                new_account_name=name if account_id is None else None,
            )
        )
        if not inserted:
            raise NotFoundError(f"account {account_id} does not exist")
        return NewKey(key=key, secret=secret)

    async def list_keys(self, account_id: str | None = None) -> list[ApiKey]:
        return await self._db.read(partial(queries.list_keys, account_id=account_id))

    async def revoke_key(self, key_id: str) -> None:
        if not await self._db.write(partial(queries.revoke_key, key_id=key_id, now_ms=now_ms())):
            raise NotFoundError(f"no active key {key_id}")

    async def authenticate(self, authorization: str | None) -> ApiKey:
        """The key of an ``Authorization: Bearer`` header, or AuthenticationError (401)."""
        if not authorization:
            raise AuthenticationError("missing API key: send Authorization: Bearer <key>")
        scheme, _, secret = authorization.strip().partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not _KEY_PATTERN.fullmatch(secret):
            raise AuthenticationError("malformed API key: send Authorization: Bearer <key>")
        key = await self._lookup(hash_secret(secret))
        if key is None or not key.usable_at(now_ms()):
            raise AuthenticationError("invalid, revoked or expired API key")
        return key

    async def _lookup(self, secret_hash: str) -> ApiKey | None:
        cached = self._cache.get(secret_hash)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        key = await self._db.read(partial(queries.find_key_by_hash, secret_hash=secret_hash))
        self._cache[secret_hash] = (key, now + (self._cache_ttl if key else _NEGATIVE_TTL))
        self._cache.move_to_end(secret_hash)
        while len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return key
