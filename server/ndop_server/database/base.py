"""What the register store and the accounts need from a database, whichever it is.

SQL is written once, with `?` placeholders and the few type names a dialect supplies; a
Database runs it. Transactions are the unit: `transaction(lock=NAME)` serialises every writer
that names the same lock, across processes and hosts (SQLite's write lock; a PostgreSQL
advisory lock), which is what keeps quotas exact and publication single-file.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Final

from ndop_server.errors import StoreError

Row = tuple[Any, ...]

ACCOUNTS_LOCK: Final = "accounts"
REGISTER_LOCK: Final = "register"
VERSIONS_CHANNEL: Final = "ndop_versions"


class StoreUnavailable(StoreError):
    """The database cannot be reached now; the operation may succeed later."""


class DuplicateKey(StoreError):
    """A row with the same key exists already."""


@dataclass(frozen=True)
class Dialect:
    name: str
    blob: str
    integer: str
    entries_id: str
    """Column that names an entry row: SQLite's implicit rowid, PostgreSQL's id."""
    without_rowid: str


class Transaction(ABC):
    """One open transaction; valid inside `Database.transaction()` only."""

    @abstractmethod
    def all(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]: ...

    @abstractmethod
    def rows(self, sql: str, parameters: Sequence[Any] = ()) -> Iterator[Row]:
        """Rows one at a time, for results too large to hold twice."""

    @abstractmethod
    def run(self, sql: str, parameters: Sequence[Any] = ()) -> int:
        """Execute; the number of rows it changed."""

    @abstractmethod
    def run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    @abstractmethod
    def load(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Insert many rows as fast as the database allows."""

    @abstractmethod
    def notify(self, channel: str, payload: str) -> None:
        """Tell listeners once this transaction commits (where the database can)."""

    def one(self, sql: str, parameters: Sequence[Any] = ()) -> Row | None:
        found = self.all(sql, parameters)
        return found[0] if found else None


class Database(ABC):
    dialect: Dialect
    location: str
    """Where the store is, fit for logs and messages: no password."""

    @abstractmethod
    def transaction(
        self, *, lock: str | None = None, snapshot: bool = False
    ) -> AbstractContextManager[Transaction]:
        """A transaction; with `lock`, one writer at a time among all who name that lock;
        with `snapshot`, every read sees the database as it was when it began."""

    @abstractmethod
    def has_table(self, name: str) -> bool: ...

    @abstractmethod
    def apply_ddl(self, statements: Sequence[str]) -> None:
        """Run schema statements (tables, indexes, triggers) all or nothing."""

    @abstractmethod
    def has_index(self, name: str) -> bool:
        """Whether the index `name` exists and can be used (in one catalog query). A PostgreSQL
        index whose CONCURRENTLY build failed, or is still running, does not count."""

    @abstractmethod
    def build_index(self, name: str, table: str, columns: Sequence[str]) -> bool:
        """Add the index `name` on `table` (`columns`) unless it is there already; True if
        this call built it. Others keep using the table meanwhile: PostgreSQL builds it
        CONCURRENTLY, outside any transaction, so writers go on (an unusable index left by a
        build that failed is dropped and built again; StoreError if another process is
        building it now); SQLite builds it in one write transaction, which writers wait for
        as they wait for any other writer."""

    @abstractmethod
    def wait_for_notification(self, channel: str, timeout: float) -> bool:
        """Block up to `timeout` seconds for a notification on `channel`; True if one came.
        Where the database cannot notify, it waits the whole timeout and says False."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
