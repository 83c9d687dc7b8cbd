"""Where a store lives: a SQLite file (the embedded default) or a PostgreSQL database shared
by several server replicas. Everything above this package speaks to `Database` only."""

from __future__ import annotations

from pathlib import Path

from ndop_server.database.base import (
    ACCOUNTS_LOCK,
    REGISTER_LOCK,
    VERSIONS_CHANNEL,
    Database,
    DuplicateKey,
    StoreUnavailable,
    Transaction,
)

__all__ = [
    "ACCOUNTS_LOCK",
    "REGISTER_LOCK",
    "VERSIONS_CHANNEL",
    "Database",
    "DuplicateKey",
    "StoreUnavailable",
    "Transaction",
    "is_postgres",
    "open_database",
]


def is_postgres(location: str | Path) -> bool:
    return str(location).startswith(("postgresql://", "postgres://"))


def open_database(location: str | Path, *, create: bool = False, durable: bool = True) -> Database:
    """The database at `location`: a `postgresql://` URL, or a SQLite file path (created,
    private to its owner, only when `create`)."""
    if is_postgres(location):
        from ndop_server.database.postgres import PostgresDatabase

        return PostgresDatabase(str(location))
    from ndop_server.database.sqlite import SqliteDatabase

    return SqliteDatabase(Path(location), create=create, durable=durable)
