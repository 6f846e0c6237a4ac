"""Accounts and their API keys: creation, revocation, and authenticating a request.

A key is shown once, when it is made; only its SHA-256 is stored (keys carry ~190 bits of
randomness, so a slow hash would add latency to every request and no safety).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from bananastand.errors import AuthenticationError, NotFoundError, ValidationError
from bananastand.ids import new_account_id, new_key_id, random_token
from bananastand.ratelimit import parse_rate
from bananastand.records import Account, ApiKey
from bananastand.storable import (
    INT32_MAX,
    INT64_MAX,
    LATEST_MS,
    NAME_CHARS,
    check_text,
    check_whole,
)
from bananastand.store.ports import LIMIT_NAMES, AccountStore, StoreUnavailable

log = logging.getLogger(__name__)

LIVE_PREFIX = "bs_live_"
TEST_PREFIX = "bs_test_"
_SECRET_LENGTH = 32
_KEY_PATTERN = re.compile(r"bs_(live|test)_[A-Za-z0-9]{32}")
#: Unknown keys are remembered briefly, so a key made a moment ago works almost at once.
_NEGATIVE_TTL = 1.0
_CACHE_SIZE = 10_000
#: A key's use is recorded at most this often per process: "last used" to within about a
#: minute, never a write per request.
_USE_RECORD_SECONDS = 60.0


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class NewKey:
    key: ApiKey
    #: The secret itself: shown to the caller once, never stored.
    secret: str


class Accounts:
    """Domain operations on accounts and keys; shared by the CLI, the API and the admin."""

    def __init__(
        self,
        store: AccountStore,
        *,
        key_cache_seconds: float = 5.0,
        starting_credits: int = 0,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._cache_ttl = key_cache_seconds
        self._starting_credits = starting_credits
        # Tells every process that keys or limits changed (``Topic.CONFIG``), so that
        # theirs drop what they cached (``forget_cached``).
        self._on_change = on_change
        # secret hash -> (key or None, monotonic expiry). Revocations reach every process
        # at once by a wake-up, or within ``key_cache_seconds`` without one.
        self._cache: OrderedDict[str, tuple[ApiKey | None, float]] = OrderedDict()
        # account id -> (account, monotonic expiry): its limits, read once per TTL, not
        # once per request. Limit changes reach every process within the same time.
        self._accounts: OrderedDict[str, tuple[Account, float]] = OrderedDict()
        # key id -> monotonic time this process last recorded the key's use.
        self._recorded_use: OrderedDict[str, float] = OrderedDict()

    async def create_account(self, name: str = "") -> Account:
        check_text("name", name, max_chars=NAME_CHARS)
        return await self._store.create_account(new_account_id(), name, self._starting_credits)

    async def get_account(self, account_id: str) -> Account:
        found = await self._store.get_account(account_id)
        if found is None:
            raise NotFoundError(f"account {account_id} not found")
        return found

    async def list_accounts(self) -> list[Account]:
        return await self._store.list_accounts()

    async def cached_account(self, account_id: str) -> Account:
        """The account as of at most ``key_cache_seconds`` ago (for its limits)."""
        cached = self._accounts.get(account_id)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        account = await self.get_account(account_id)
        self._accounts[account_id] = (account, now + self._cache_ttl)
        self._accounts.move_to_end(account_id)
        while len(self._accounts) > _CACHE_SIZE:
            self._accounts.popitem(last=False)
        return account

    async def set_limits(self, account_id: str, changes: dict[str, str | int | None]) -> Account:
        """Change some of the account's limits; ``None`` restores the server default.

        Rates read like ``20/second`` or ``unlimited``; ``max_waiting`` 0 means no cap.
        """
        for name, value in changes.items():
            if value is None:
                continue
            if name in ("create_rate", "read_rate"):
                try:
                    parse_rate(str(value))
                except ValueError as exc:
                    raise ValidationError(f"{name}: {exc}") from None
            elif name in ("max_waiting", "monthly_cap"):
                check_whole(name, value, maximum=INT32_MAX if name == "max_waiting" else INT64_MAX)
            else:
                raise ValidationError(f"{name}: not a limit; expected {LIMIT_NAMES}")
        found = await self._store.set_limits(account_id, changes)
        if not found:
            raise NotFoundError(f"account {account_id} not found")
        self._accounts.pop(account_id, None)
        self._on_change()
        return await self.get_account(account_id)

    def forget_cached(self) -> None:
        """Keys or limits changed somewhere: look them up again."""
        self._cache.clear()
        self._accounts.clear()

    async def account_of_key(self, key: str) -> str:
        """The account id of a key given by its id (``key_...``) or its secret."""
        if _KEY_PATTERN.fullmatch(key):
            found = await self._store.find_key_by_hash(hash_secret(key))
        else:
            found = await self._store.get_key(key)
        if found is None:
            raise NotFoundError("no such key")
        return found.account_id

    async def count_accounts(self) -> int:
        return await self._store.count_accounts()

    async def create_key(
        self,
        *,
        account_id: str | None = None,
        name: str = "",
        is_test: bool = False,
        expires_at: int | None = None,
    ) -> NewKey:
        """Make a key; without ``account_id``, in a new account of its own.

        ``expires_at`` (epoch ms): the key stops working then.
        """
        check_text("name", name, max_chars=NAME_CHARS)
        if expires_at is not None and expires_at <= self._store.now_ms():
            raise ValidationError("expires: must be in the future")
        if expires_at is not None and expires_at > LATEST_MS:
            raise ValidationError("expires: must be before the year 10000")
        secret = (TEST_PREFIX if is_test else LIVE_PREFIX) + random_token(_SECRET_LENGTH)
        created = self._store.now_ms()
        account_for_key = account_id or new_account_id()
        key = ApiKey(
            id=new_key_id(),
            account_id=account_for_key,
            name=name,
            display_prefix=secret[: len(LIVE_PREFIX) + 4],
            is_test=is_test,
            created_at=created,
            revoked_at=None,
            expires_at=expires_at,
        )

        inserted = await self._store.insert_key(
            key,
            hash_secret(secret),
            new_account_name=name if account_id is None else None,
            starting_credits=self._starting_credits,
        )
        if not inserted:
            raise NotFoundError(f"account {account_id} does not exist")
        self._on_change()  # a process may have cached the secret as unknown
        return NewKey(key=key, secret=secret)

    async def list_keys(self, account_id: str | None = None) -> list[ApiKey]:
        return await self._store.list_keys(account_id)

    async def revoke_key(self, key_id: str, account_id: str | None = None) -> None:
        """Revoke a key; of ``account_id`` only, where given (a key of another account is
        not found, exactly as an unknown one: an API key learns nothing of other accounts)."""
        if account_id is not None:
            found = await self._store.get_key(key_id)
            if found is None or found.account_id != account_id:
                raise NotFoundError(f"no active key {key_id}")
        if not await self._store.revoke_key(key_id):
            raise NotFoundError(f"no active key {key_id}")
        self._on_change()

    async def authenticate(self, authorization: str | None) -> ApiKey:
        """The key of an ``Authorization: Bearer`` header, or AuthenticationError (401)."""
        if not authorization:
            raise AuthenticationError("missing API key: send Authorization: Bearer <key>")
        scheme, _, secret = authorization.strip().partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not _KEY_PATTERN.fullmatch(secret):
            raise AuthenticationError("malformed API key: send Authorization: Bearer <key>")
        key = await self._lookup(hash_secret(secret))
        if key is None or not key.usable_at(self._store.now_ms()):
            raise AuthenticationError("unknown, revoked or expired API key")
        await self._record_use(key.id)
        return key

    async def _record_use(self, key_id: str) -> None:
        """Write the key's "last used" when this process has not in the last minute. The
        request is answered whatever happens to that write: it is bookkeeping."""
        now = time.monotonic()
        last = self._recorded_use.get(key_id)
        if last is not None and now - last < _USE_RECORD_SECONDS:
            return
        self._recorded_use[key_id] = now
        self._recorded_use.move_to_end(key_id)
        while len(self._recorded_use) > _CACHE_SIZE:
            self._recorded_use.popitem(last=False)
        try:
            await self._store.mark_key_used(key_id)
        except StoreUnavailable:
            log.warning("could not record the use of key %s", key_id)

    async def _lookup(self, secret_hash: str) -> ApiKey | None:
        cached = self._cache.get(secret_hash)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        key = await self._store.find_key_by_hash(secret_hash)
        self._cache[secret_hash] = (key, now + (self._cache_ttl if key else _NEGATIVE_TTL))
        self._cache.move_to_end(secret_hash)
        while len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return key
