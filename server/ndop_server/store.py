"""The register store: versions, entries and the artifacts each version publishes, in SQLite
or PostgreSQL (see ndop_server.database).

Entries carry the version that added them and the version that removed them, so the members
of any version are `added_in <= v AND (removed_in IS NULL OR removed_in > v)`. A load or change
set is written in one transaction that ends by inserting the new `versions` row: a crash
before the commit leaves the previous version whole, and readers see
either the old version or the new one, never a mixture. The slow work (OPRF evaluations,
building the filter) is prepared beforehand under a read snapshot, so the write lock is held
only for the writes and servers can keep recording usage meanwhile.

Nothing here is an NHS number: entries hold tokens (keyed with the store key) and filter keys
(keyed with the OPRF key); both keys live in the separate keys file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ndop_server import schema
from ndop_server.database import (
    REGISTER_LOCK,
    VERSIONS_CHANNEL,
    Database,
    Transaction,
    open_database,
)
from ndop_server.database.base import Dialect
from ndop_server.errors import StoreError

INDEX_ARTIFACT: Final = "index"
FILTER_ARTIFACT: Final = "filter"
COUNTS_ARTIFACT: Final = "filter-counts"
"""How many entries set each bit of the version's filter (see filter_counts)."""
DELTA_ARTIFACT: Final = "filter-delta"
"""The version's filter as a delta from the previous version's (ndop-filter-delta-v1)."""
ARTIFACTS_KEPT: Final = 3
DELTAS_KEPT: Final = 60
KEPT: Final = {COUNTS_ARTIFACT: 1, DELTA_ARTIFACT: DELTAS_KEPT}
"""Versions whose artifacts of a kind are kept; ARTIFACTS_KEPT for the kinds not named. Deltas
are small and let a client holding an older filter catch up; counts only serve the next
version."""
_PUBLICATION_CACHE_KIB: Final = 262144


@dataclass(frozen=True)
class VersionRecord:
    version: int
    published_at: str
    count: int
    source: str
    added: int
    removed: int
    key_id: str
    filter_sha256: bytes
    filter_size: int


_VERSION_COLUMNS: Final = (
    "version, published_at, count, source, added, removed, key_id, filter_sha256, filter_size"
)


def _record(row: Sequence[object]) -> VersionRecord:
    version, published_at, count, source, added, removed, key_id, sha256, size = row
    return VersionRecord(
        int(version),  # type: ignore[call-overload]
        str(published_at),
        int(count),  # type: ignore[call-overload]
        str(source),
        int(added),  # type: ignore[call-overload]
        int(removed),  # type: ignore[call-overload]
        str(key_id),
        bytes(sha256),  # type: ignore[call-overload]
        int(size),  # type: ignore[call-overload]
    )


class Store:
    """One register store. Use as a context manager; not shared between threads.

    `location` is a SQLite path or a `postgresql://` URL; `create` makes the schema in an
    empty store (only `ndop register load` does).
    """

    def __init__(self, location: Path | str, *, create: bool = False) -> None:
        self.db: Database = open_database(location, create=create)
        try:
            if create:
                schema.create(self.db)
            else:
                schema.require_current(self.db)
        except BaseException:
            self.db.close()
            raise
        self.location = self.db.location

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- binding to a keys file -------------------------------------------------------------

    def register_id(self) -> str | None:
        with self.db.transaction() as tx:
            row = tx.one("SELECT value FROM meta WHERE key = 'register_id'")
        return None if row is None else str(row[0])

    def bind(self, register_id: str) -> None:
        """Tie the store to one register's keys; refuse keys of another register."""
        with self.db.transaction(lock=REGISTER_LOCK) as tx:
            row = tx.one("SELECT value FROM meta WHERE key = 'register_id'")
            if row is None:
                tx.run("INSERT INTO meta (key, value) VALUES ('register_id', ?)", (register_id,))
            elif row[0] != register_id:
                raise StoreError(
                    f"the store belongs to register {row[0]} but the keys file is for {register_id}"
                )

    # --- reading ----------------------------------------------------------------------------

    def latest(self, key_id: str | None = None) -> VersionRecord | None:
        """The newest version (made with the OPRF key `key_id`, when given)."""
        with self.db.transaction() as tx:
            return _latest(tx, key_id)

    def latest_number(self) -> int:
        with self.db.transaction() as tx:
            return _latest_number(tx)

    def history(self, limit: int = 20) -> list[VersionRecord]:
        with self.db.transaction() as tx:
            rows = tx.all(
                f"SELECT {_VERSION_COLUMNS} FROM versions ORDER BY version DESC LIMIT ?", (limit,)
            )
        return [_record(row) for row in rows]

    def record(self, version: int) -> VersionRecord | None:
        with self.db.transaction() as tx:
            row = tx.one(f"SELECT {_VERSION_COLUMNS} FROM versions WHERE version = ?", (version,))
        return None if row is None else _record(row)

    def records(self, first: int, last: int) -> list[VersionRecord]:
        """The versions from `first` to `last` included, oldest first."""
        with self.db.transaction() as tx:
            rows = tx.all(
                f"SELECT {_VERSION_COLUMNS} FROM versions WHERE version BETWEEN ? AND ? "
                "ORDER BY version",
                (first, last),
            )
        return [_record(row) for row in rows]

    def artifact(self, version: int, kind: str) -> bytes:
        with self.db.transaction() as tx:
            found = _artifact(tx, version, kind)
        if found is None:
            raise StoreError(f"register version {version} has no {kind} artifact in the store")
        return found

    def artifacts(self, kind: str, first: int, last: int) -> dict[int, bytes]:
        """The artifacts of one kind that versions `first` to `last` still have."""
        with self.db.transaction() as tx:
            rows = tx.all(
                "SELECT version, data FROM artifacts WHERE kind = ? AND version BETWEEN ? AND ?",
                (kind, first, last),
            )
        return {int(version): bytes(data) for version, data in rows}

    def wait_for_publication(self, timeout: float) -> bool:
        """Block until a version is published (where the database tells) or `timeout`."""
        return self.db.wait_for_notification(VERSIONS_CHANNEL, timeout)

    # --- writing ----------------------------------------------------------------------------

    @contextmanager
    def preparation(self) -> Iterator[Preparation]:
        """A read snapshot for working out a new version; takes no write lock."""
        with self.db.transaction(snapshot=True) as tx:
            yield Preparation(tx, _latest(tx), self.db.dialect)

    @contextmanager
    def publication(self, base_version: int) -> Iterator[Publication]:
        """A short write transaction that publishes exactly one new version, or nothing.

        Refuses to publish if another version was published since `base_version`.
        """
        with self.db.transaction(lock=REGISTER_LOCK) as tx:
            latest = _latest_number(tx)
            if latest != base_version:
                raise StoreError(
                    f"version {latest} was published while this one was being prepared "
                    f"from version {base_version}; run the command again"
                )
            if self.db.dialect.name == "sqlite":
                # A bigger page cache for this connection: a load writes millions of entries.
                tx.run(f"PRAGMA cache_size = -{_PUBLICATION_CACHE_KIB}")
            yield Publication(tx, latest + 1, self.db.dialect)


def _latest(tx: Transaction, key_id: str | None = None) -> VersionRecord | None:
    where, parameters = ("WHERE key_id = ?", (key_id,)) if key_id else ("", ())
    row = tx.one(
        f"SELECT {_VERSION_COLUMNS} FROM versions {where} ORDER BY version DESC LIMIT 1",
        parameters,
    )
    return None if row is None else _record(row)


def _latest_number(tx: Transaction) -> int:
    row = tx.one("SELECT MAX(version) FROM versions")
    return int(row[0] or 0) if row else 0


def _artifact(tx: Transaction, version: int, kind: str) -> bytes | None:
    row = tx.one("SELECT data FROM artifacts WHERE version = ? AND kind = ?", (version, kind))
    return None if row is None else bytes(row[0])


class Preparation:
    """Reads the current version's members and compares an input file against them."""

    def __init__(self, tx: Transaction, base: VersionRecord | None, dialect: Dialect) -> None:
        self._tx = tx
        self._dialect = dialect
        self._id = dialect.entries_id
        self.base = base
        self.base_version = 0 if base is None else base.version

    def artifact(self, kind: str) -> bytes | None:
        """An artifact of the base version, if the store still has it."""
        return None if self.base is None else _artifact(self._tx, self.base.version, kind)

    def stage(self, tokens: Sequence[bytes]) -> None:
        """Hold an input file's tokens (by position) in a temporary table."""
        self._tx.run("DROP TABLE IF EXISTS incoming")
        self._tx.run(
            f"CREATE TEMP TABLE incoming (token {self._dialect.blob} PRIMARY KEY, "
            f"position {self._dialect.integer} NOT NULL)"
        )
        # In key order: B-tree inserts of sorted keys run about twice as fast as random ones.
        self._tx.load(
            "incoming",
            ("token", "position"),
            sorted(zip(tokens, range(len(tokens)), strict=True)),
        )

    def staged_not_live(self) -> list[int]:
        """Positions of staged tokens that are not members of the current version."""
        rows = self._tx.all(
            "SELECT position FROM incoming i WHERE NOT EXISTS "
            "(SELECT 1 FROM entries e WHERE e.token = i.token AND e.removed_in IS NULL) "
            "ORDER BY position"
        )
        return [row[0] for row in rows]

    def live_staged(self) -> list[tuple[int, bytes, bytes]]:
        """(id, token, filter key) of current members whose token is staged."""
        rows = self._tx.all(
            f"SELECT e.{self._id}, e.token, e.filter_key FROM entries e "
            "JOIN incoming i ON e.token = i.token WHERE e.removed_in IS NULL"
        )
        return [(row[0], bytes(row[1]), bytes(row[2])) for row in rows]

    def live_not_staged(self) -> list[tuple[int, bytes, bytes]]:
        """(id, token, filter key) of current members whose token is not staged."""
        rows = self._tx.rows(
            f"SELECT {self._id}, token, filter_key FROM entries WHERE removed_in IS NULL "
            "AND token NOT IN (SELECT token FROM incoming)"
        )
        return [(row[0], bytes(row[1]), bytes(row[2])) for row in rows]

    def live_entries(self) -> Iterator[tuple[int, bytes, bytes]]:
        """(id, token, filter key) of every current member."""
        for row in self._tx.rows(
            f"SELECT {self._id}, token, filter_key FROM entries WHERE removed_in IS NULL"
        ):
            yield row[0], bytes(row[1]), bytes(row[2])


class Publication:
    """The write side of one new register version, valid inside Store.publication()."""

    def __init__(self, tx: Transaction, version: int, dialect: Dialect) -> None:
        self._tx = tx
        self._dialect = dialect
        self._id = dialect.entries_id
        self.version = version

    def remove(self, ids: Iterable[int]) -> None:
        self._tx.run_many(
            f"UPDATE entries SET removed_in = ? WHERE {self._id} = ? AND removed_in IS NULL",
            [(self.version, entry) for entry in ids],
        )

    def add(self, rows: bytes, token_size: int, key_size: int) -> None:
        """Add members from this version on: `rows` is their (token, filter key) pairs, each
        token followed by its key, in the order to insert them (token order is fastest)."""
        width = token_size + key_size
        count = len(rows) // width
        if not count:
            return
        if self._dialect.name == "sqlite":
            # Cut from one blob by SQLite itself: no Python object per row, a third of the CPU.
            self._tx.run(
                "INSERT INTO entries (token, filter_key, added_in) "
                "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?1) "
                "SELECT substr(?2, i * ?3 + 1, ?4), substr(?2, i * ?3 + ?4 + 1, ?5), ?6 FROM n",
                (count, rows, width, token_size, key_size, self.version),
            )
            return
        self._tx.load(
            "entries",
            ("token", "filter_key", "added_in"),
            (
                (rows[i : i + token_size], rows[i + token_size : i + width], self.version)
                for i in range(0, len(rows), width)
            ),
        )

    def finish(self, record: VersionRecord, artifacts: dict[str, bytes]) -> None:
        """Store the artifacts and the version row; the commit that follows publishes them
        and tells every listening server."""
        self._tx.run_many(
            "INSERT INTO artifacts (version, kind, data) VALUES (?, ?, ?)",
            [(record.version, kind, data) for kind, data in artifacts.items()],
        )
        self._tx.run(
            f"INSERT INTO versions ({_VERSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.version,
                record.published_at,
                record.count,
                record.source,
                record.added,
                record.removed,
                record.key_id,
                record.filter_sha256,
                record.filter_size,
            ),
        )
        for kind, kept in KEPT.items():
            self._tx.run(
                "DELETE FROM artifacts WHERE kind = ? AND version <= ?",
                (kind, record.version - kept),
            )
        named = ", ".join("?" for _ in KEPT)
        self._tx.run(
            f"DELETE FROM artifacts WHERE kind NOT IN ({named}) AND version <= ?",
            (*KEPT, record.version - ARTIFACTS_KEPT),
        )
        self._tx.notify(VERSIONS_CHANNEL, str(record.version))
