"""Credits: what a task costs, grants by the operator, balances and the ledger audit.

Charging and refunding happen inside the task transactions (the store's ``create_task``
and the ways a task ends); this module decides the price and serves the operator's side.
With ``BANANASTAND_BILLING=off`` nothing is ever charged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bananastand.contract import Lane, Resolution
from bananastand.cursors import decode_cursor, encode_cursor
from bananastand.errors import (
    ConfigurationError,
    InsufficientCreditsError,
    NotFoundError,
    ValidationError,
)
from bananastand.records import ApiKey, LedgerEntry
from bananastand.settings import Settings
from bananastand.storable import INT64_MAX, check_text
from bananastand.store.ports import (
    DAY_MS,
    BalanceOverflow,
    DayUsage,
    Discrepancy,
    Ledger,
    NotEnoughCredits,
)

if TYPE_CHECKING:
    from bananastand.accounts import Accounts


#: Ledger rows per page of ``GET /api/v1/account/ledger``.
LEDGER_PAGE = 50
#: How far back usage per day reaches: a year, leap day included.
MAX_USAGE_DAYS = 366


@dataclass(frozen=True, slots=True)
class LedgerPage:
    entries: list[LedgerEntry]
    next_cursor: str | None


class Billing:
    def __init__(self, store: Ledger, settings: Settings) -> None:
        self._store = store
        self.enabled = settings.billing
        self._prices = settings.prices
        self._batch_prices = settings.batch_prices
        if self.enabled:
            missing = [
                f"{model} {resolution.value}"
                for model, spec in settings.models.items()
                for resolution in spec.resolutions
                if resolution not in settings.prices.get(model, {})
            ]
            if missing:
                raise ConfigurationError(
                    "prices: no price for " + ", ".join(missing) + " (or set BILLING=off)"
                )

    def price(self, key: ApiKey, model: str, resolution: Resolution, lane: Lane = Lane.NOW) -> int:
        """What a task costs this key: test keys and billing off cost nothing."""
        if not self.enabled or key.is_test:
            return 0
        return self.list_price(model, resolution, lane)

    def list_price(self, model: str, resolution: Resolution, lane: Lane = Lane.NOW) -> int:
        """A live key's price; the batch lane's is its own setting, else half, rounded up."""
        if lane is Lane.BATCH:
            configured = self._batch_prices.get(model, {}).get(resolution)
            if configured is not None:
                return configured
            return -(-self._prices[model][resolution] // 2)
        return self._prices[model][resolution]

    async def balance(self, account_id: str) -> int:
        found = await self._store.balance(account_id)
        if found is None:
            raise NotFoundError(f"account {account_id} not found")
        return found

    async def grant(self, account_id: str, amount: int, note: str = "") -> int:
        """Add credits (negative: take them away); returns the new balance."""
        if amount == 0:
            raise ValidationError("amount: must not be 0")
        if abs(amount) > INT64_MAX:  # what no balance can hold, nor a query carry
            raise ValidationError(f"amount: must be at most {INT64_MAX} either way")
        check_text("note", note)
        granted = await self._store.grant(account_id, amount, note)
        match granted:
            case None:
                raise NotFoundError(f"account {account_id} not found")
            case NotEnoughCredits(balance=balance, cost=cost):
                raise InsufficientCreditsError(
                    f"account {account_id} has {balance} credits; cannot take away {cost}"
                )
            case BalanceOverflow(limit=limit):
                raise ValidationError(f"amount: the balance would be more than {limit}")
        return granted

    async def history(self, account_id: str, limit: int = 50) -> list[LedgerEntry]:
        return await self._store.entries(account_id, limit)

    async def ledger_page(
        self, account_id: str, cursor: str | None, limit: int = LEDGER_PAGE
    ) -> LedgerPage:
        """A page of the account's grants, charges and refunds, newest first."""
        before = decode_cursor(cursor) if cursor else None
        found = await self._store.entries(account_id, limit + 1, before)
        page, more = found[:limit], len(found) > limit
        return LedgerPage(page, encode_cursor(page[-1].seq) if more else None)

    async def usage(self, account_id: str, days: int) -> list[DayUsage]:
        """Each of the last ``days`` UTC days, today included, oldest first; a day
        without use is there with zeros, so that a chart of them has no gaps."""
        if not 1 <= days <= MAX_USAGE_DAYS:
            raise ValidationError(f"days: must be from 1 to {MAX_USAGE_DAYS}")
        today = self._store.now_ms() // DAY_MS * DAY_MS
        first = today - (days - 1) * DAY_MS
        used = {day.day_ms: day for day in await self._store.usage_by_day(account_id, first)}
        return [
            used.get(day, DayUsage(day_ms=day, tasks=0, credits=0))
            for day in range(first, today + 1, DAY_MS)
        ]

    async def audit(self) -> list[Discrepancy]:
        """Empty when every balance is its ledger sum and every task's creditsConsumed is
        what its charge and refund rows say."""
        return await self._store.audit()


def month_start_ms(at_ms: int) -> int:
    """Start of the calendar month (UTC) containing ``at_ms``: where monthly caps count from."""
    at = datetime.fromtimestamp(at_ms / 1000, tz=UTC)
    start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return int(start.timestamp() * 1000)


async def account_details(accounts: Accounts, billing: Billing, account_id: str) -> dict[str, Any]:
    """The account, its keys and its newest ledger rows: what the admin API's
    ``GET /admin/accounts/{id}`` and ``bananastand accounts show`` answer."""
    account = await accounts.get_account(account_id)
    keys = await accounts.list_keys(account_id)
    history = await billing.history(account_id)
    return {
        **account.to_admin(),
        "keys": [key.to_admin() for key in keys],
        "ledger": [entry.to_wire() for entry in history],
    }
