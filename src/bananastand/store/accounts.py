"""Queries about accounts and API keys."""

from __future__ import annotations

from sqlalchemy import Connection, func, insert, select, update

from bananastand.records import Account, ApiKey
from bananastand.store.schema import accounts, api_keys


def create_account(connection: Connection, account_id: str, name: str, now_ms: int) -> Account:
    connection.execute(insert(accounts).values(id=account_id, name=name, created_at=now_ms))
    return Account(id=account_id, name=name, created_at=now_ms)


def get_account(connection: Connection, account_id: str) -> Account | None:
    row = connection.execute(select(accounts).where(accounts.c.id == account_id)).mappings().first()
    return Account.from_row(row) if row else None


def count_accounts(connection: Connection) -> int:
    return connection.execute(select(func.count()).select_from(accounts)).scalar_one()


def insert_key(
    connection: Connection, key: ApiKey, secret_hash: str, new_account_name: str | None
) -> bool:
    """Store a key, in a new account when ``new_account_name`` is given.

    False (and nothing written) when the key's existing account is unknown.
    """
    if new_account_name is not None:
        create_account(connection, key.account_id, new_account_name, key.created_at)
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


def list_keys(connection: Connection, account_id: str | None = None) -> list[ApiKey]:
    query = select(api_keys).order_by(api_keys.c.created_at)
    if account_id is not None:
        query = query.where(api_keys.c.account_id == account_id)
    return [ApiKey.from_row(row) for row in connection.execute(query).mappings()]


def revoke_key(connection: Connection, key_id: str, now_ms: int) -> bool:
    result = connection.execute(
        update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=now_ms)
    )
    return result.rowcount == 1
