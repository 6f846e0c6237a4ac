"""What route handlers receive: the services of the app and the caller's key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from bananastand.accounts import Accounts
from bananastand.billing import Billing
from bananastand.catalog import Catalog
from bananastand.files import Files
from bananastand.metrics.exposition import Scrape
from bananastand.ops import Switches
from bananastand.providers.relay_hooks import UpstreamHooks
from bananastand.ratelimit import RateLimiter
from bananastand.records import ApiKey
from bananastand.results import RecordMaker
from bananastand.settings import Settings
from bananastand.storage.base import Storage
from bananastand.store.ports import Store
from bananastand.tasks import Tasks
from bananastand.webhooks.account import Webhooks


@dataclass(slots=True)
class Services:
    settings: Settings
    store: Store
    accounts: Accounts
    tasks: Tasks
    #: Makes the wire record of a task, its result links made from the public URL of now.
    records: RecordMaker
    storage: Storage
    files: Files
    billing: Billing
    switches: Switches
    #: The models a key may use (``GET /api/v1/models``).
    catalog: Catalog
    limiter: RateLimiter
    webhooks: Webhooks
    #: What ``/metrics`` answers.
    scrape: Scrape
    #: Callbacks from the jobs-api upstreams tasks are relayed to.
    upstream_hooks: UpstreamHooks


async def get_services(request: Request) -> Services:
    """Async on purpose: FastAPI runs a plain ``def`` dependency in a worker thread."""
    return services_of(request)


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


#: Where the quota of the request's key waits for ``RequestContextMiddleware``.
QUOTA_STATE = "bananastand_quota"


async def _limited_key(request: Request, kind: str) -> ApiKey:
    """The caller's key, after counting this call against its rate limit of ``kind``.

    The account's limits come from a short in-memory cache: no database query per request.
    """
    services = services_of(request)
    key = await services.accounts.authenticate(request.headers.get("authorization"))
    account = await services.accounts.cached_account(key.account_id)
    if kind == "create":
        rate = account.create_rate or services.settings.create_rate
    else:
        rate = account.read_rate or services.settings.read_rate
    quota = await services.limiter.hit(rate, kind, key.id)
    if quota is not None:
        request.scope.setdefault("state", {})[QUOTA_STATE] = quota
        if not quota.allowed:
            raise services.limiter.refusal(quota)
    return key


async def get_current_key(request: Request) -> ApiKey:
    """The caller's key, counted as a read (every API call but createTask)."""
    return await _limited_key(request, "read")


async def get_creating_key(request: Request) -> ApiKey:
    """The caller's key, counted against its create rate. createTask calls it itself
    rather than as a dependency: FastAPI's dependency solving cost it 20-35 us a request."""
    return await _limited_key(request, "create")


ServicesDep = Annotated[Services, Depends(get_services)]
CurrentKey = Annotated[ApiKey, Depends(get_current_key)]
