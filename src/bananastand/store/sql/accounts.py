"""Queries about accounts and API keys."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Connection, func, insert, select, update

from bananastand.records import Account, ApiKey
from bananastand.store.ports import LIMIT_NAMES
from bananastand.store.sql import ledger
from bananastand.store.tables import accounts, api_keys

#: Columns of ``accounts`` an operator may set, named as the limits are.
LIMIT_COLUMNS = LIMIT_NAMES


def create_account(
    connection: Connection, account_id: str, name: str, now_ms: int, starting_credits: int = 0
) -> Account:
    """A new account; its starting credits are a ledger grant like any other."""
    connection.execute(insert(accounts).values(id=account_id, name=name, created_at=now_ms))
    if starting_credits:
        ledger.grant(connection, account_id, starting_credits, now_ms, "starting credits")
    return Account(id=account_id, name=name, created_at=now_ms, credits=starting_credits)


def list_accounts(connection: Connection) -> list[Account]:
    query = select(accounts).order_by(accounts.c.created_at)
    return [Account.from_row(row) for row in connection.execute(query).mappings()]


def set_limits(connection: Connection, account_id: str, values: Mapping[str, object]) -> bool:
    """Set some of LIMIT_COLUMNS; False when the account is unknown."""
    unknown = set(values) - set(LIMIT_COLUMNS)
    if unknown:
        raise ValueError(f"not a limit: {sorted(unknown)}")
    if not values:
        return get_account(connection, account_id) is not None
    result = connection.execute(
        update(accounts).where(accounts.c.id == account_id).values(**values)
    )
    return result.rowcount == 1


def get_account(connection: Connection, account_id: str) -> Account | None:
    row = connection.execute(select(accounts).where(accounts.c.id == account_id)).mappings().first()
    return Account.from_row(row) if row else None


def count_accounts(connection: Connection) -> int:
    return connection.execute(select(func.count()).select_from(accounts)).scalar_one()


def insert_key(
    connection: Connection,
    key: ApiKey,
    secret_hash: str,
    new_account_name: str | None,
    starting_credits: int = 0,
) -> bool:
    """Store a key, in a new account when ``new_account_name`` is given.

    False (and nothing written) when the key's existing account is unknown.
    """
    if new_account_name is not None:
        create_account(
            connection, key.account_id, new_account_name, key.created_at, starting_credits
        )
    elif get_account(connection, key.account_id) is None:
        return False
    connection.execute(
        insert(api_keys).values(
            id=key.id,
            account_id=key.account_id,
            name=key.name,
            display_prefix=key.display_prefix,
            secret_hash=secret_hash,
            is_test=key.is_test,
            created_at=key.created_at,
            revoked_at=key.revoked_at,
            expires_at=key.expires_at,
        )
    )
    return True


def find_key_by_hash(connection: Connection, secret_hash: str) -> ApiKey | None:
    row = (
        connection.execute(select(api_keys).where(api_keys.c.secret_hash == secret_hash))
        .mappings()
        .first()
    )
    return ApiKey.from_row(row) if row else None


def get_key(connection: Connection, key_id: str) -> ApiKey | None:
    row = connection.execute(select(api_keys).where(api_keys.c.id == key_id)).mappings().first()
    return ApiKey.from_row(row) if row else None


def list_keys(connection: Connection, account_id: str | None = None) -> list[ApiKey]:
    query = select(api_keys).order_by(api_keys.c.created_at)
    if account_id is not None:
        query = query.where(api_keys.c.account_id == account_id)
    return [ApiKey.from_row(row) for row in connection.execute(query).mappings()]


def mark_key_used(connection: Connection, key_id: str, at_ms: int) -> None:
    """Never moves the time back: another process may have recorded a later use."""
    connection.execute(
        update(api_keys)
        .where(
            api_keys.c.id == key_id,
            (api_keys.c.last_used_at.is_(None)) | (api_keys.c.last_used_at < at_ms),
        )
        .values(last_used_at=at_ms)
    )


def revoke_key(connection: Connection, key_id: str, now_ms: int) -> bool:
    result = connection.execute(
        update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=now_ms)
    )
    return result.rowcount == 1
