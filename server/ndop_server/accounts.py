"""Organisations, their tokens and daily quotas, and the append-only audit log, in the store.

Tokens are random (256 bits) and stored only as SHA-256 hashes; a presented token is found by
its hash and compared in constant time. Usage is counted per organisation, mode and UTC day;
a charge that would cross the quota is refused whole. The audit log is append-only: triggers
refuse UPDATE, DELETE and INSERT OR REPLACE over an existing row. Nothing here ever holds
an identifier, digest or element.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Final, Literal

from ndop_server.errors import ConfigurationError, StoreError

Mode = Literal["hashed", "private"]
MODES: Final[tuple[Mode, ...]] = ("hashed", "private")
TOKEN_PREFIX: Final = "ndop_"
DEFAULT_DAILY_QUOTA: Final = 2_000_000

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS organisations (
    name TEXT PRIMARY KEY,
    token_sha256 BLOB NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked_at TEXT,
    hashed_daily_quota INTEGER NOT NULL,
    private_daily_quota INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS usage (
    organisation TEXT NOT NULL,
    mode TEXT NOT NULL,
    day TEXT NOT NULL,
    used INTEGER NOT NULL,
    PRIMARY KEY (organisation, mode, day)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    organisation TEXT NOT NULL,
    request_id TEXT NOT NULL,
    mode TEXT NOT NULL,
    purpose TEXT NOT NULL,
    items_checked INTEGER NOT NULL,
    items_opted_out INTEGER,
    register_version INTEGER NOT NULL,
    outcome TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_replace BEFORE INSERT ON audit
WHEN EXISTS (SELECT 1 FROM audit WHERE id = NEW.id)
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


@dataclass(frozen=True)
class Organisation:
    name: str
    created_at: str
    revoked_at: str | None
    hashed_daily_quota: int
    private_daily_quota: int

    def quota(self, mode: Mode) -> int:
        return self.hashed_daily_quota if mode == "hashed" else self.private_daily_quota


@dataclass(frozen=True)
class AuditRecord:
    at: str
    organisation: str
    request_id: str
    mode: str
    purpose: str
    items_checked: int
    items_opted_out: int | None
    register_version: int
    outcome: str


class QuotaExhausted(Exception):
    """A charge would cross the organisation's daily quota; nothing was charged."""

    def __init__(self, mode: Mode, remaining: int, resets_at: datetime) -> None:
        self.mode = mode
        self.remaining = remaining
        self.resets_at = resets_at
        super().__init__(
            f"the daily {mode}-mode quota would be exceeded: {remaining:,} numbers left today, "
            f"resets at {resets_at.isoformat().replace('+00:00', 'Z')}"
        )


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def today() -> date:
    return datetime.now(UTC).date()


def next_reset(day: date) -> datetime:
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=UTC)


_ORG_COLUMNS: Final = "name, created_at, revoked_at, hashed_daily_quota, private_daily_quota"
_AUDIT_COLUMNS: Final = (
    "at, organisation, request_id, mode, purpose, items_checked, items_opted_out, "
    "register_version, outcome"
)


class Accounts:
    """Organisations, usage and audit on the store file. Safe to share between threads."""

    def __init__(self, store_path: Path) -> None:
        if not store_path.exists():
            raise StoreError(
                f"register store {store_path} does not exist; run 'ndop register load'"
            )
        self._db = sqlite3.connect(store_path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Accounts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # --- organisations ----------------------------------------------------------------------

    def add(self, name: str, hashed_quota: int, private_quota: int) -> str:
        """Create an organisation; returns its token, which is not stored and not shown again."""
        if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ConfigurationError(
                "an organisation name uses letters, digits, '-', '_' and '.' only"
            )
        _check_quota(hashed_quota)
        _check_quota(private_quota)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        try:
            with self._write() as db:
                db.execute(
                    f"INSERT INTO organisations ({_ORG_COLUMNS}, token_sha256) "
                    "VALUES (?, ?, NULL, ?, ?, ?)",
                    (name, _now(), hashed_quota, private_quota, _token_hash(token)),
                )
        except sqlite3.IntegrityError as exc:
            raise ConfigurationError(f"organisation {name!r} already exists") from exc
        return token

    def get(self, name: str) -> Organisation | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_ORG_COLUMNS} FROM organisations WHERE name = ?", (name,)
            ).fetchone()
        return None if row is None else Organisation(*row)

    def organisations(self) -> list[Organisation]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_ORG_COLUMNS} FROM organisations ORDER BY name"
            ).fetchall()
        return [Organisation(*row) for row in rows]

    def revoke(self, name: str) -> None:
        with self._write() as db:
            cursor = db.execute(
                "UPDATE organisations SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (_now(), name),
            )
            if cursor.rowcount == 0:
                raise ConfigurationError(f"no active organisation named {name!r}")

    def set_quota(self, name: str, mode: Mode | None, daily: int) -> None:
        _check_quota(daily)
        columns = [f"{m}_daily_quota" for m in MODES if mode in (None, m)]
        with self._write() as db:
            cursor = db.execute(
                f"UPDATE organisations SET {', '.join(f'{c} = ?' for c in columns)} WHERE name = ?",
                (*([daily] * len(columns)), name),
            )
            if cursor.rowcount == 0:
                raise ConfigurationError(f"no organisation named {name!r}")

    def authenticate(self, token: str) -> Organisation | None:
        """The active organisation holding `token`, or None."""
        presented = _token_hash(token)
        with self._lock:
            row = self._db.execute(
                f"SELECT {_ORG_COLUMNS}, token_sha256 FROM organisations WHERE token_sha256 = ?",
                (presented,),
            ).fetchone()
        if row is None or not hmac.compare_digest(bytes(row[5]), presented):
            return None
        organisation = Organisation(*row[:5])
        return None if organisation.revoked_at else organisation

    # --- quotas -----------------------------------------------------------------------------

    def remaining(self, organisation: Organisation, mode: Mode) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT used FROM usage WHERE organisation = ? AND mode = ? AND day = ?",
                (organisation.name, mode, today().isoformat()),
            ).fetchone()
        return max(organisation.quota(mode) - (row[0] if row else 0), 0)

    def charge(self, organisation: Organisation, mode: Mode, items: int) -> None:
        """Count `items` against today's quota, or raise QuotaExhausted and count nothing."""
        day = today()
        with self._write() as db:
            row = db.execute(
                "SELECT used FROM usage WHERE organisation = ? AND mode = ? AND day = ?",
                (organisation.name, mode, day.isoformat()),
            ).fetchone()
            used = row[0] if row else 0
            limit = organisation.quota(mode)
            if used + items > limit:
                raise QuotaExhausted(mode, max(limit - used, 0), next_reset(day))
            db.execute(
                "INSERT INTO usage (organisation, mode, day, used) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (organisation, mode, day) DO UPDATE SET used = used + excluded.used",
                (organisation.name, mode, day.isoformat(), items),
            )

    # --- audit ------------------------------------------------------------------------------

    def record(self, entry: AuditRecord) -> None:
        with self._write() as db:
            db.execute(
                f"INSERT INTO audit ({_AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.at,
                    entry.organisation,
                    entry.request_id,
                    entry.mode,
                    entry.purpose,
                    entry.items_checked,
                    entry.items_opted_out,
                    entry.register_version,
                    entry.outcome,
                ),
            )

    def audit(self, organisation: str | None = None, since: str | None = None) -> list[AuditRecord]:
        clauses, parameters = [], []
        if organisation:
            clauses.append("organisation = ?")
            parameters.append(organisation)
        if since:
            clauses.append("at >= ?")
            parameters.append(since)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_AUDIT_COLUMNS} FROM audit {where} ORDER BY id", parameters
            ).fetchall()
        return [AuditRecord(*row) for row in rows]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _check_quota(daily: int) -> None:
    if daily < 0:
        raise ConfigurationError("a daily quota cannot be negative")
