"""The embedded default: one SQLite file in WAL mode, private to its owner."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from ndop_server.database.base import (
    Database,
    Dialect,
    DuplicateKey,
    Row,
    StoreUnavailable,
    Transaction,
)
from ndop_server.errors import StoreError

WAL_KEPT_BYTES: Final = 64 * 1024 * 1024
DIALECT: Final = Dialect(
    name="sqlite",
    blob="BLOB",
    integer="INTEGER",
    entries_id="rowid",
    without_rowid=" WITHOUT ROWID",
)
_IN_CATALOG: Final = "SELECT 1 FROM sqlite_master WHERE type = ? AND name = ?"


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


def _store_error(error: sqlite3.Error, path: Path) -> StoreError:
    name = getattr(error, "sqlite_errorname", "")
    if name == "SQLITE_FULL" or name.startswith("SQLITE_IOERR"):
        return StoreError(
            f"cannot write the register store {path}: the disk is full or cannot be written; "
            "nothing was changed"
        )
    return StoreError(f"the register store refused an operation: {error}")


class _SqliteTransaction(Transaction):
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def all(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        return self._db.execute(sql, parameters).fetchall()

    def rows(self, sql: str, parameters: Sequence[Any] = ()) -> Iterator[Row]:
        yield from self._db.execute(sql, parameters)

    def run(self, sql: str, parameters: Sequence[Any] = ()) -> int:
        return self._db.execute(sql, parameters).rowcount

    def run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._db.executemany(sql, rows)

    def load(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        marks = ", ".join("?" for _ in columns)
        self._db.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)

    def notify(self, channel: str, payload: str) -> None:
        """SQLite cannot notify; readers poll."""


class SqliteDatabase(Database):
    """One connection, shared between threads under a lock.

    `durable` chooses synchronous=FULL (register publication) over NORMAL (accounts: WAL with
    NORMAL survives the process being killed; only a power cut can lose the last commits).
    """

    dialect = DIALECT

    def __init__(self, path: Path, *, create: bool = False, durable: bool = True) -> None:
        if not create and not path.exists():
            raise StoreError(f"register store {path} does not exist; run 'ndop register load'")
        if create:
            _create_private(path)
        self.location = str(path)
        self.path = path
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.execute("PRAGMA journal_mode=WAL")
            # A load writes hundreds of megabytes through the WAL; once checkpointed, give the
            # space back instead of keeping the file at its high-water mark.
            self._db.execute(f"PRAGMA journal_size_limit={WAL_KEPT_BYTES}")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.execute("PRAGMA temp_store=MEMORY")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open register store {path}: {exc}") from exc
        self._lock = threading.RLock()

    @property
    def connection(self) -> sqlite3.Connection:
        """The raw connection, for SQLite's online backup."""
        return self._db

    @contextmanager
    def transaction(
        self, *, lock: str | None = None, snapshot: bool = False
    ) -> Iterator[Transaction]:
        # One write lock per file: every named lock is the same lock here.
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE" if lock else "BEGIN")
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"the register store is busy or unreadable: {exc}") from exc
            try:
                yield _SqliteTransaction(self._db)
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                self._db.execute("ROLLBACK")
                raise DuplicateKey(str(exc)) from exc
            except sqlite3.Error as exc:
                self._rollback()
                raise _store_error(exc, self.path) from exc
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def has_table(self, name: str) -> bool:
        return self._in_catalog("table", name)

    def _in_catalog(self, kind: str, name: str) -> bool:
        with self._lock:
            row = self._db.execute(_IN_CATALOG, (kind, name)).fetchone()
        return row is not None

    def apply_ddl(self, statements: Sequence[str]) -> None:
        body = ";\n".join(s.strip().rstrip(";") for s in statements)
        with self._lock:
            self._db.executescript(f"BEGIN IMMEDIATE;\n{body};\nCOMMIT;")

    def has_index(self, name: str) -> bool:
        return self._in_catalog("index", name)

    def build_index(self, name: str, table: str, columns: Sequence[str]) -> bool:
        with self.transaction(lock="schema") as tx:
            if tx.one(_IN_CATALOG, ("index", name)):
                return False
            tx.run(f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({', '.join(columns)})")
        return True

    def wait_for_notification(self, channel: str, timeout: float) -> bool:
        time.sleep(timeout)
        return False

    def close(self) -> None:
        with self._lock:
            self._db.close()
