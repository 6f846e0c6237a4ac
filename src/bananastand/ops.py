"""Operator switches: maintenance mode and disabled models (for everyone or one account).

They live in the database so that a switch flipped with the CLI, or by the admin API of
any process, reaches every running server. Each process reads the whole (small) table at
most once per ``poll_seconds``, never once per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bananastand.errors import FeatureDisabledError, MaintenanceError
from bananastand.storable import check_text
from bananastand.store.ports import SwitchStore

log = logging.getLogger(__name__)

MAINTENANCE = "maintenance"
DEFAULT_MAINTENANCE_MSG = "the service is under maintenance; please try again later"
_MODEL_OFF = "model-off:"


def _model_switch(model: str, account_id: str | None) -> str:
    return f"{_MODEL_OFF}{model}" + (f"@{account_id}" if account_id else "")


@dataclass(frozen=True, slots=True)
class SwitchState:
    #: The maintenance message; ``None``: not in maintenance.
    maintenance: str | None = None
    #: (model, account id or None for everyone) pairs that are switched off.
    disabled: frozenset[tuple[str, str | None]] = field(default_factory=frozenset)

    @classmethod
    def from_rows(cls, rows: dict[str, str]) -> SwitchState:
        disabled: set[tuple[str, str | None]] = set()
        for name in rows:
            if name.startswith(_MODEL_OFF):
                model, _, account_id = name[len(_MODEL_OFF) :].partition("@")
                disabled.add((model, account_id or None))
        return cls(maintenance=rows.get(MAINTENANCE), disabled=frozenset(disabled))

    def allows(self, model: str, account_id: str) -> bool:
        """Whether ``model`` is on for the account: off neither for everyone nor for it."""
        return (model, None) not in self.disabled and (model, account_id) not in self.disabled

    def to_admin(self) -> dict[str, object]:
        return {
            "maintenance": self.maintenance is not None,
            "maintenanceMessage": self.maintenance,
            "disabledModels": [
                {"model": model, "accountId": account_id}
                for model, account_id in sorted(
                    self.disabled, key=lambda pair: (pair[0], pair[1] or "")
                )
            ],
        }


class Switches:
    def __init__(
        self,
        store: SwitchStore,
        *,
        poll_seconds: float = 1.0,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._poll_seconds = poll_seconds
        # Tells every process (``Topic.CONFIG``): theirs reread at once (``forget``).
        self._on_change = on_change
        self._state = SwitchState()
        self._fresh_until = 0.0
        self._lock = asyncio.Lock()

    async def current(self) -> SwitchState:
        """The switches as of at most ``poll_seconds`` ago (one reader refreshes them)."""
        if time.monotonic() < self._fresh_until:
            return self._state
        async with self._lock:
            if time.monotonic() >= self._fresh_until:
                rows = await self._store.all_switches()
                self._state = SwitchState.from_rows(rows)
                self._fresh_until = time.monotonic() + self._poll_seconds
        return self._state

    async def check_maintenance(self) -> None:
        """MaintenanceError (455) while maintenance is on: no new tasks; reads still work."""
        message = (await self.current()).maintenance
        if message is not None:
            raise MaintenanceError(message or DEFAULT_MAINTENANCE_MSG)

    async def check_model(self, model: str, account_id: str) -> None:
        """FeatureDisabledError (505) when the model is off for everyone or this account."""
        if not (await self.current()).allows(model, account_id):
            raise FeatureDisabledError(f"model {model} is disabled on this server for now")

    async def set_maintenance(self, on: bool, message: str = "") -> None:
        check_text("message", message)
        if on:
            await self._store.put_switch(MAINTENANCE, message)
        else:
            await self._store.remove_switch(MAINTENANCE)
        log.warning("maintenance switched", extra={"on": on, "maintenance_message": message})
        self.forget()
        self._on_change()

    def forget(self) -> None:
        """The switches changed somewhere: reread them at the next check."""
        self._fresh_until = 0.0

    async def set_model(self, model: str, *, enabled: bool, account_id: str | None = None) -> None:
        check_text("model", model)
        check_text("account", account_id or "")
        name = _model_switch(model, account_id)
        if enabled:
            await self._store.remove_switch(name)
        else:
            await self._store.put_switch(name, "")
        log.warning(
            "model switched",
            extra={"model": model, "enabled": enabled, "account_id": account_id},
        )
        self.forget()
        self._on_change()
