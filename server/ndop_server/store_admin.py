"""Moving and keeping stores: copy one store into another (SQLite to PostgreSQL and back),
back one up online, and migrate a schema.

A copy reads the source in one snapshot, so a store that servers are writing to is copied as
it was at one moment; it writes the destination in one transaction, so a copy that fails
leaves nothing half-written. Every row is copied as it is: versions, entries, artifacts,
organisations, usage, and the audit log with its chain (which still verifies, since the chain
covers row ids and contents, not where they are kept).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ndop_server import schema
from ndop_server.database import REGISTER_LOCK, Database, Transaction, open_database
from ndop_server.database.sqlite import SqliteDatabase
from ndop_server.errors import ConfigurationError, StoreError
from ndop_server.locations import StoreLocation

# (table, columns), in an order that respects what refers to what.
TABLES: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("meta", ("key", "value")),
    (
        "versions",
        (
            "version",
            "published_at",
            "count",
            "source",
            "added",
            "removed",
            "key_id",
            "filter_sha256",
            "filter_size",
        ),
    ),
    ("entries", ("token", "filter_key", "added_in", "removed_in")),
    ("artifacts", ("version", "kind", "data")),
    (
        "organisations",
        (
            "name",
            "token_sha256",
            "created_at",
            "revoked_at",
            "daily_quota",
            "rate_per_second",
            "daily_checks",
            "daily_filter_downloads",
            "previous_token_sha256",
            "previous_token_until",
        ),
    ),
    ("usage", ("organisation", "mode", "day", "used")),
    (
        "audit",
        (
            "id",
            "at",
            "organisation",
            "request_id",
            "mode",
            "purpose",
            "items_checked",
            "items_opted_out",
            "register_version",
            "outcome",
            "chain",
        ),
    ),
    ("audit_head", ("one", "last_id", "chain")),
)


@dataclass(frozen=True)
class Copied:
    rows: dict[str, int]


def _rows(tx: Transaction, table: str, columns: tuple[str, ...]) -> Iterator[tuple[Any, ...]]:
    order = "version, kind" if table == "artifacts" else "1"
    for row in tx.rows(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}"):
        yield tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)


def _counts(db: Database) -> dict[str, int]:
    with db.transaction(snapshot=True) as tx:
        return _counted(tx)


def _counted(tx: Transaction) -> dict[str, int]:
    counts = {}
    for table, _ in TABLES:
        row = tx.one(f"SELECT COUNT(*) FROM {table}")
        counts[table] = int(row[0]) if row else 0
    return counts


def copy(source: StoreLocation, destination: StoreLocation) -> Copied:
    """Copy every row of `source` into `destination`, which must be new or empty."""
    if str(source) == str(destination):
        raise ConfigurationError("the source and the destination are the same store")
    with open_database(source) as src:
        schema.require_current(src)
        with open_database(destination, create=True) as dest:
            if dest.has_table("meta"):
                with dest.transaction() as tx:
                    if tx.one("SELECT 1 FROM meta LIMIT 1") is not None:
                        raise ConfigurationError(
                            f"the destination {dest.location} already holds a store; copy only "
                            "into a new or empty one"
                        )
            schema.create(dest)
            with (
                src.transaction(snapshot=True) as read,
                dest.transaction(lock=REGISTER_LOCK) as write,
            ):
                write.run("DELETE FROM meta")
                for table, columns in TABLES:
                    write.load(table, columns, _rows(read, table, columns))
                # In the snapshot copied from: servers may go on writing to the source.
                expected = _counted(read)
                if dest.dialect.name == "postgresql":
                    write.run(
                        "SELECT setval(pg_get_serial_sequence('entries', 'id'), "
                        "COALESCE(MAX(id), 0) + 1, false) FROM entries"
                    )
            copied = _counts(dest)
    if any(copied[table] < expected[table] for table in copied):
        raise StoreError("the copy is missing rows; the destination should be discarded")
    return Copied(copied)


def backup(store: StoreLocation, destination: Path) -> Copied:
    """A consistent copy of a running store in a new SQLite file (owner-only). From SQLite it
    uses SQLite's online backup, which sees every committed write, the WAL's included."""
    if destination.exists():
        raise ConfigurationError(f"{destination} exists already; back up into a new file")
    with open_database(store) as source:
        schema.require_current(source)
        if isinstance(source, SqliteDatabase):
            target = SqliteDatabase(destination, create=True)
            try:
                source.connection.backup(target.connection)
                return Copied(_counts(target))
            finally:
                target.close()
    return copy(store, destination)


def migrate(store: StoreLocation) -> schema.Migration:
    """Bring the store's schema up to date and add the optional indexes it lacks; servers of
    this ndop and of the previous one (of the same schema) may keep serving meanwhile."""
    with open_database(store) as db:
        return schema.migrate(db)
