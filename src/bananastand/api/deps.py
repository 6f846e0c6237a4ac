"""What route handlers receive: the services of the app and the caller's key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from bananastand.accounts import Accounts
from bananastand.providers.registry import ProviderRegistry
from bananastand.records import ApiKey
from bananastand.settings import Settings
from bananastand.storage.base import Storage
from bananastand.store.database import Database
from bananastand.tasks import Tasks
from bananastand.webhooks import Webhooks


@dataclass(slots=True)
class Services:
    settings: Settings
    db: Database
    accounts: Accounts
    tasks: Tasks
    storage: Storage
    providers: ProviderRegistry
    webhooks: Webhooks


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_current_key(request: Request) -> ApiKey:
    return await get_services(request).accounts.authenticate(request.headers.get("authorization"))


ServicesDep = Annotated[Services, Depends(get_services)]
CurrentKey = Annotated[ApiKey, Depends(get_current_key)]
