"""The register store on SQLite: versions, entries and the artifacts each version publishes.

Entries carry the version that added them and the version that removed them, so the members
of any version are `added_in <= v AND (removed_in IS NULL OR removed_in > v)`. A load or change
set is written in one transaction that ends by inserting the new `versions` row: a crash
before the commit leaves the previous version whole, and readers (servers, in WAL mode) see
either the old version or the new one, never a mixture. The slow work (OPRF evaluations,
building the filter) is prepared beforehand under a read snapshot, so the write lock is held
only for the writes and servers can keep recording usage meanwhile.

Nothing here is an NHS number: entries hold tokens (keyed with the store key) and filter keys
(keyed with the OPRF key); both keys live in the separate keys file.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ndop_server.errors import StoreError

SCHEMA_VERSION: Final = "1"
ARTIFACTS_KEPT: Final = 3

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    version INTEGER PRIMARY KEY,
    published_at TEXT NOT NULL,
    count INTEGER NOT NULL,
    source TEXT NOT NULL,
    added INTEGER NOT NULL,
    removed INTEGER NOT NULL,
    key_id TEXT NOT NULL,
    filter_sha256 BLOB NOT NULL,
    filter_size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    token BLOB NOT NULL,
    filter_key BLOB NOT NULL,
    added_in INTEGER NOT NULL,
    removed_in INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS entries_live ON entries(token) WHERE removed_in IS NULL;
CREATE TABLE IF NOT EXISTS artifacts (
    version INTEGER NOT NULL,
    kind TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (version, kind)
);
"""


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


def _create_private(path: Path) -> None:
    """An empty store file readable by its owner only, unless the file exists already.

    SQLite would create it 0644; it gives the -wal and -shm files the database file's mode,
    so those are private too.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreError(f"cannot create register store {path}: {exc.strerror}") from exc
    os.close(fd)


class Store:
    """One SQLite register store. Use as a context manager; not shared between threads."""

    def __init__(self, path: Path, *, create: bool = False) -> None:
        if not create and not path.exists():
            raise StoreError(f"register store {path} does not exist; run 'ndop register load'")
        if create:
            _create_private(path)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA temp_store=MEMORY")
            self._db.execute("PRAGMA busy_timeout=30000")
            if create:
                self._db.executescript(_SCHEMA)
            self._check_schema()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open register store {path}: {exc}") from exc
        self.path = path

    def _check_schema(self) -> None:
        if not self._has_table("meta"):
            raise StoreError("this file is not an ndop register store")
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
            )
        elif row[0] != SCHEMA_VERSION:
            raise StoreError(f"register store schema {row[0]} is not supported by this version")

    def _has_table(self, name: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        return row is not None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- binding to a keys file -------------------------------------------------------------

    def register_id(self) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'register_id'").fetchone()
        return None if row is None else str(row[0])

    def bind(self, register_id: str) -> None:
        """Tie the store to one register's keys; refuse keys of another register."""
        current = self.register_id()
        if current is None:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('register_id', ?)", (register_id,)
            )
        elif current != register_id:
            raise StoreError(
                f"the store belongs to register {current} but the keys file is for {register_id}"
            )

    # --- reading ----------------------------------------------------------------------------

    def latest(self) -> VersionRecord | None:
        row = self._db.execute(
            f"SELECT {_VERSION_COLUMNS} FROM versions ORDER BY version DESC LIMIT 1"
        ).fetchone()
        return None if row is None else VersionRecord(*row)

    def latest_number(self) -> int:
        row = self._db.execute("SELECT MAX(version) FROM versions").fetchone()
        return int(row[0] or 0)

    def history(self, limit: int = 20) -> list[VersionRecord]:
        rows = self._db.execute(
            f"SELECT {_VERSION_COLUMNS} FROM versions ORDER BY version DESC LIMIT ?", (limit,)
        ).fetchall()
        return [VersionRecord(*row) for row in rows]

    def artifact(self, version: int, kind: str) -> bytes:
        row = self._db.execute(
            "SELECT data FROM artifacts WHERE version = ? AND kind = ?", (version, kind)
        ).fetchone()
        if row is None:
            raise StoreError(f"register version {version} has no {kind} artifact in the store")
        return bytes(row[0])

    # --- writing ----------------------------------------------------------------------------

    @contextmanager
    def preparation(self) -> Iterator[Preparation]:
        """A read snapshot for working out a new version; takes no write lock."""
        self._db.execute("BEGIN")
        try:
            yield Preparation(self._db, self.latest_number())
        finally:
            self._db.execute("COMMIT")
            self._db.execute("DROP TABLE IF EXISTS temp.incoming")

    @contextmanager
    def publication(self, base_version: int) -> Iterator[Publication]:
        """A short write transaction that publishes exactly one new version, or nothing.

        Refuses to publish if another version was published since `base_version`.
        """
        self._db.execute("BEGIN IMMEDIATE")
        try:
            latest = self.latest_number()
            if latest != base_version:
                raise StoreError(
                    f"version {latest} was published while this one was being prepared "
                    f"from version {base_version}; run the command again"
                )
            yield Publication(self._db, latest + 1)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise


class Preparation:
    """Reads the current version's members and compares an input file against them."""

    def __init__(self, db: sqlite3.Connection, base_version: int) -> None:
        self._db = db
        self.base_version = base_version

    def stage(self, tokens: Sequence[bytes]) -> None:
        """Hold an input file's tokens (by position) in a temporary table."""
        self._db.execute("DROP TABLE IF EXISTS temp.incoming")
        self._db.execute(
            "CREATE TEMP TABLE incoming (token BLOB PRIMARY KEY, position INTEGER NOT NULL) "
            "WITHOUT ROWID"
        )
        # In key order: B-tree inserts of sorted keys run about twice as fast as random ones.
        self._db.executemany(
            "INSERT OR IGNORE INTO incoming VALUES (?, ?)",
            sorted(zip(tokens, range(len(tokens)), strict=True)),
        )

    def staged_not_live(self) -> list[int]:
        """Positions of staged tokens that are not members of the current version."""
        rows = self._db.execute(
            "SELECT position FROM incoming i WHERE NOT EXISTS "
            "(SELECT 1 FROM entries e WHERE e.token = i.token AND e.removed_in IS NULL) "
            "ORDER BY position"
        )
        return [row[0] for row in rows]

    def live_staged(self) -> set[int]:
        """Row ids of current members whose token is staged."""
        rows = self._db.execute(
            "SELECT e.rowid FROM entries e JOIN incoming i ON e.token = i.token "
            "WHERE e.removed_in IS NULL"
        )
        return {row[0] for row in rows}

    def live_not_staged(self) -> set[int]:
        """Row ids of current members whose token is not staged."""
        rows = self._db.execute(
            "SELECT rowid FROM entries WHERE removed_in IS NULL "
            "AND token NOT IN (SELECT token FROM incoming)"
        )
        return {row[0] for row in rows}

    def live_entries(self) -> Iterator[tuple[int, bytes, bytes]]:
        """(row id, token, filter key) of every current member."""
        yield from self._db.execute(
            "SELECT rowid, token, filter_key FROM entries WHERE removed_in IS NULL"
        )


class Publication:
    """The write side of one new register version, valid inside Store.publication()."""

    def __init__(self, db: sqlite3.Connection, version: int) -> None:
        self._db = db
        self.version = version

    def remove(self, rowids: Iterable[int]) -> None:
        self._db.executemany(
            "UPDATE entries SET removed_in = ? WHERE rowid = ? AND removed_in IS NULL",
            ((self.version, rowid) for rowid in rowids),
        )

    def add(self, entries: Iterable[tuple[bytes, bytes]]) -> None:
        """Add (token, filter_key) entries as members from this version on."""
        self._db.executemany(
            "INSERT INTO entries (token, filter_key, added_in) VALUES (?, ?, ?)",
            ((token, key, self.version) for token, key in entries),
        )

    def finish(self, record: VersionRecord, artifacts: dict[str, bytes]) -> None:
        """Store the artifacts and the version row; the commit that follows publishes them."""
        self._db.executemany(
            "INSERT INTO artifacts (version, kind, data) VALUES (?, ?, ?)",
            ((record.version, kind, data) for kind, data in artifacts.items()),
        )
        self._db.execute(
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
        self._db.execute(
            "DELETE FROM artifacts WHERE version <= ?", (record.version - ARTIFACTS_KEPT,)
        )
