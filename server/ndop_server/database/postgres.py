"""A PostgreSQL store shared by several server replicas (psycopg 3).

Named locks are transaction-scoped advisory locks, so two publishers on two hosts refuse each
other as two on one host do, and quota charges from every replica are serialised. Publication
sends a NOTIFY that listening replicas receive within milliseconds of the commit. A lost
connection is reopened at the next transaction; meanwhile operations raise StoreUnavailable.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql as pgsql

from ndop_server.database.base import (
    Database,
    Dialect,
    DuplicateKey,
    Row,
    StoreUnavailable,
    Transaction,
)
from ndop_server.errors import StoreError

DIALECT: Final = Dialect(
    name="postgresql", blob="BYTEA", integer="BIGINT", entries_id="id", without_rowid=""
)
CONNECT_TIMEOUT_SECONDS: Final = 5
_INDEX_VALID: Final = "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(?)"
"""One row for an index that exists, saying whether it can be used; none for a missing one."""


def printable(url: str) -> str:
    """The URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _lock_key(name: str) -> int:
    return int.from_bytes(
        hashlib.sha256(b"ndop lock " + name.encode()).digest()[:8], "big", signed=True
    )


def _placeholders(statement: str) -> str:
    return statement.replace("%", "%%").replace("?", "%s")


class _PostgresTransaction(Transaction):
    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def all(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        with self._connection.cursor() as cursor:
            cursor.execute(_placeholders(sql), parameters)
            return cursor.fetchall() if cursor.description else []

    def rows(self, sql: str, parameters: Sequence[Any] = ()) -> Iterator[Row]:
        with self._connection.cursor(name=f"rows_{threading.get_ident()}") as cursor:
            cursor.itersize = 50_000
            cursor.execute(_placeholders(sql), parameters)
            yield from cursor

    def run(self, sql: str, parameters: Sequence[Any] = ()) -> int:
        with self._connection.cursor() as cursor:
            cursor.execute(_placeholders(sql), parameters)
            return cursor.rowcount

    def run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._connection.cursor() as cursor:
            cursor.executemany(_placeholders(sql), list(rows))

    def load(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        statement = pgsql.SQL("COPY {} ({}) FROM STDIN").format(
            pgsql.Identifier(table), pgsql.SQL(", ").join(map(pgsql.Identifier, columns))
        )
        with self._connection.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)

    def notify(self, channel: str, payload: str) -> None:
        self.run("SELECT pg_notify(?, ?)", (channel, payload))


class PostgresDatabase(Database):
    dialect = DIALECT

    def __init__(self, url: str) -> None:
        self._url = url
        self.location = printable(url)
        self._lock = threading.RLock()
        self._connection: psycopg.Connection[Any] | None = None
        self._listener: psycopg.Connection[Any] | None = None
        self._connect()

    def _open(self) -> psycopg.Connection[Any]:
        """A new connection, in autocommit mode."""
        return psycopg.connect(self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS)

    def _connect(self) -> psycopg.Connection[Any]:
        if self._connection is not None and not self._connection.closed:
            return self._connection
        try:
            self._connection = self._open()
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(
                f"cannot reach the register store at {self.location}: {_first_line(exc)}"
            ) from None
        except psycopg.Error as exc:
            raise StoreError(f"cannot open the register store at {self.location}: {exc}") from None
        return self._connection

    @contextmanager
    def transaction(
        self, *, lock: str | None = None, snapshot: bool = False
    ) -> Iterator[Transaction]:
        with self._lock:
            connection = self._connect()
            try:
                with connection.transaction():
                    if snapshot:
                        connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    if lock:
                        connection.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(lock),))
                    yield _PostgresTransaction(connection)
            except psycopg.errors.UniqueViolation as exc:
                raise DuplicateKey(_first_line(exc)) from None
            except psycopg.OperationalError as exc:
                connection.close()
                raise StoreUnavailable(
                    f"lost the register store at {self.location}: {_first_line(exc)}"
                ) from None
            except psycopg.Error as exc:
                raise StoreError(
                    f"the register store refused an operation: {_first_line(exc)}"
                ) from None

    def has_table(self, name: str) -> bool:
        with self.transaction() as tx:
            return tx.one("SELECT to_regclass(?) IS NOT NULL", (name,)) == (True,)

    def apply_ddl(self, statements: Sequence[str]) -> None:
        with self.transaction(lock="schema") as tx:
            for statement in statements:
                tx.run(statement)

    def has_index(self, name: str) -> bool:
        with self.transaction() as tx:
            return tx.one(_INDEX_VALID, (name,)) == (True,)

    def build_index(self, name: str, table: str, columns: Sequence[str]) -> bool:
        create = pgsql.SQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} ({})").format(
            pgsql.Identifier(name),
            pgsql.Identifier(table),
            pgsql.SQL(", ").join(map(pgsql.Identifier, columns)),
        )
        drop = pgsql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(pgsql.Identifier(name))
        building = _lock_key(f"index {name}")
        with self._lock:
            connection = self._connect()
            # CONCURRENTLY refuses to run in a transaction block: the connection is in
            # autocommit, and each statement here runs on its own. A session lock (not a
            # transaction's) tells a build in progress, whose index is not valid yet either,
            # from one that failed; it is taken without waiting, since a build waits for
            # every transaction that began before it, a waiting one included.
            try:
                acquired = connection.execute(
                    "SELECT pg_try_advisory_lock(%s)", (building,)
                ).fetchone()
                if acquired != (True,):
                    raise StoreError(
                        f"another process is building the index {name} in the register store "
                        f"at {self.location}; let it finish"
                    )
                try:
                    valid = connection.execute(_placeholders(_INDEX_VALID), (name,)).fetchone()
                    if valid == (True,):
                        return False
                    if valid is not None:  # left unusable by a build that failed: start again
                        connection.execute(drop)
                    connection.execute(create)
                    return True
                finally:
                    with suppress(psycopg.Error):
                        connection.execute("SELECT pg_advisory_unlock(%s)", (building,))
            except psycopg.OperationalError as exc:
                connection.close()
                raise StoreUnavailable(
                    f"lost the register store at {self.location} while building the index "
                    f"{name}: {_first_line(exc)}"
                ) from None
            except psycopg.Error as exc:
                raise StoreError(
                    f"the register store could not build the index {name}: {_first_line(exc)}"
                ) from None

    def wait_for_notification(self, channel: str, timeout: float) -> bool:
        try:
            if self._listener is None or self._listener.closed:
                self._listener = self._open()
                self._listener.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(channel)))
            return any(True for _ in self._listener.notifies(timeout=timeout, stop_after=1))
        except psycopg.Error:
            if self._listener is not None:
                self._listener.close()
            raise StoreUnavailable(f"lost the register store at {self.location}") from None

    def close(self) -> None:
        with self._lock:
            for connection in (self._connection, self._listener):
                if connection is not None:
                    connection.close()


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
