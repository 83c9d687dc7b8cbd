"""Organisations, their tokens and limits, daily usage, and the chained audit log, in the store.

Tokens are random (256 bits) and stored only as SHA-256 hashes; a presented token is found by
its hash and compared in constant time. Each organisation has one daily budget of numbers
across both modes, a rate (numbers per second, enforced by the server), and daily limits on
checks and filter downloads. Every decision re-reads the organisation in the same transaction
that charges it, so a revocation or a new limit takes effect at the next batch of a check
already open. Usage and the audit row that explains it are written in one transaction: the
log can never show less than was charged. The audit log is append-only (triggers) and
hash-chained (audit_chain). Nothing here ever holds an identifier, digest or element.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Final, Literal

from ndop_server import audit_chain, schema
from ndop_server import audit_record as events
from ndop_server.audit_record import AuditRecord
from ndop_server.database import ACCOUNTS_LOCK, DuplicateKey, Transaction, open_database
from ndop_server.errors import ConfigurationError, StoreError

Mode = Literal["hashed", "private"]
MODES: Final[tuple[Mode, ...]] = ("hashed", "private")
TOKEN_PREFIX: Final = "ndop_"
Counter = Literal["numbers", "checks", "filters"]


@dataclass(frozen=True)
class Limits:
    """What one organisation may do per UTC day, and how fast."""

    daily_quota: int = 2_000_000
    """Numbers checked per day, both modes together."""
    rate_per_second: int = 1_000_000
    daily_checks: int = 1_000
    daily_filter_downloads: int = 100

    def check(self) -> None:
        for name, value in vars(self).items():
            if value < 0:
                raise ConfigurationError(f"{name.replace('_', ' ')} cannot be negative")


DEFAULT_LIMITS: Final = Limits()


@dataclass(frozen=True)
class Organisation:
    name: str
    created_at: str
    revoked_at: str | None
    limits: Limits

    @property
    def daily_quota(self) -> int:
        return self.limits.daily_quota


@dataclass(frozen=True)
class Usage:
    numbers: int
    checks: int
    filters: int

    @classmethod
    def of(cls, used: dict[str, int]) -> Usage:
        """From one day's `used` per counter (the usage table's `mode` column)."""
        return cls(used.get("numbers", 0), used.get("checks", 0), used.get("filters", 0))


@dataclass(frozen=True)
class AuditCount:
    """How many lines of the audit log, as `audit_view.summarise` reads it, one day (the
    line's, so a check's opening day), organisation, mode and outcome have, and how many
    numbers they checked. Counts and names only: never a request id."""

    day: str
    organisation: str
    mode: str
    outcome: str
    lines: int
    items_checked: int


class Refused(Exception):
    """A request the organisation may not make now; the message is safe to send and log."""


class Revoked(Refused):
    def __init__(self) -> None:
        super().__init__("the organisation's access has been revoked")


class QuotaExhausted(Refused):
    """A charge would cross a daily limit; nothing was charged."""

    def __init__(self, what: str, remaining: int, resets_at: datetime) -> None:
        self.remaining = remaining
        self.resets_at = resets_at
        super().__init__(
            f"the daily {what} would be exceeded: {remaining:,} left today, "
            f"resets at {resets_at.isoformat().replace('+00:00', 'Z')}"
        )


class DuplicateRequest(Refused):
    def __init__(self) -> None:
        super().__init__("this request_id was used before; make a new UUID for every check")


_LIMIT_NAMES: Final[dict[Counter, tuple[str, str]]] = {
    "numbers": ("daily_quota", "quota of numbers"),
    "checks": ("daily_checks", "number of checks"),
    "filters": ("daily_filter_downloads", "number of filter downloads"),
}


def _new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def today() -> date:
    return datetime.now(UTC).date()


def next_reset(day: date) -> datetime:
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=UTC)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


_LIMIT_COLUMNS: Final = "daily_quota, rate_per_second, daily_checks, daily_filter_downloads"
_ORG_COLUMNS: Final = f"name, created_at, revoked_at, {_LIMIT_COLUMNS}"
_NOT_CLOSING: Final = f"('{events.STARTED}', '{events.ANSWERED}', '{events.DUPLICATE_REQUEST}')"
_AUDIT_COUNTS: Final = f"""
WITH checks AS (
    SELECT
        MIN(CASE WHEN outcome = '{events.STARTED}' THEN id END) AS opened,
        MIN(CASE WHEN outcome NOT IN {_NOT_CLOSING} THEN id END) AS closed,
        SUM(CASE WHEN outcome = '{events.ANSWERED}' THEN items_checked ELSE 0 END) AS answered
    FROM audit
    WHERE at >= ? AND request_id <> '-'
    GROUP BY request_id || ''
    HAVING MIN(CASE WHEN outcome = '{events.STARTED}' THEN id END) IS NOT NULL
),
lines AS (
    SELECT
        substr(opening.at, 1, 10) AS day,
        opening.organisation,
        opening.mode,
        COALESCE(closing.outcome, 'interrupted') AS outcome,
        COALESCE(closing.items_checked, checks.answered) AS items_checked
    FROM checks
    JOIN audit AS opening ON opening.id = checks.opened AND opening.at >= ?
    LEFT JOIN audit AS closing ON closing.id = checks.closed AND closing.at >= ?
    UNION ALL
    SELECT substr(at, 1, 10), organisation, mode, outcome, items_checked
    FROM audit
    WHERE at >= ?
        AND outcome NOT IN ('{events.STARTED}', '{events.ANSWERED}')
        AND id NOT IN (SELECT closed FROM checks WHERE closed IS NOT NULL)
)
SELECT day, organisation, mode, outcome, COUNT(*), SUM(items_checked)
FROM lines
GROUP BY day, organisation, mode, outcome
ORDER BY day, organisation, mode, outcome
"""
"""`AuditCount`s of the rows since a time, as `summarise` reads them. A check is the rows of
one request id from its `started` row, which always has an id and is the first row with it
(`open_check` refuses an id already in the log): it counts once, on its opening day, with
its first closing row's outcome and total, or as `interrupted` with the numbers of its
`answered` rows. Every other row but an `answered` one is a line of its own: a refusal, a
filter download, a reused id, a second closing row, or the closing row of a check opened
before the period.

Every `at >= ?` is there for the audit_by_at index, each parameter the period's start. A check's
opening and closing rows are rows of the period by construction, so the conditions on them
change no result; they let PostgreSQL read the period's rows instead of merge-joining the whole
table by id. Grouping by `request_id || ''` groups the same rows as `request_id`; it keeps
SQLite from walking the whole table in audit_by_request order to spare itself a sort."""
_AUDIT_COLUMNS: Final = (
    "at, organisation, request_id, mode, purpose, items_checked, items_opted_out, "
    "register_version, outcome"
)


def _organisation(row: tuple[Any, ...]) -> Organisation:
    name, created, revoked, *limits = row
    return Organisation(name, created, revoked, Limits(*limits))


class Accounts:
    """Organisations, usage and audit on the store file. Safe to share between threads.

    `audit_key` (from the keys file) chains the audit rows this process writes; without it the
    log can be read but not written.
    """

    def __init__(self, location: Path | str, audit_key: bytes | None = None) -> None:
        # Accounts commit once per batch: durable against the process being killed, without
        # an fsync per batch (see SqliteDatabase).
        self._db = open_database(location, durable=False)
        try:
            schema.require_current(self._db)
        except BaseException:
            self._db.close()
            raise
        self._audit_key = audit_key
        self.head: tuple[int, bytes] | None = None
        """The last audit row this process wrote: its id and chain value."""

    def close(self) -> None:
        self._db.close()

    def has_audit_time_index(self) -> bool:
        """Whether the audit log has its time index (optional: without it the status page and
        `ndop audit --since` read the whole log); one catalog query."""
        return schema.has_audit_time_index(self._db)

    def __enter__(self) -> Accounts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self) -> AbstractContextManager[Transaction]:
        return self._db.transaction(lock=ACCOUNTS_LOCK)

    def _read(self) -> AbstractContextManager[Transaction]:
        return self._db.transaction()

    # --- organisations ----------------------------------------------------------------------

    def add(self, name: str, limits: Limits = DEFAULT_LIMITS) -> str:
        """Create an organisation; returns its token, which is not stored and not shown again."""
        if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ConfigurationError(
                "an organisation name uses letters, digits, '-', '_' and '.' only"
            )
        limits.check()
        token = _new_token()
        try:
            with self._write() as db:
                db.run(
                    f"INSERT INTO organisations ({_ORG_COLUMNS}, token_sha256) "
                    "VALUES (?, ?, NULL, ?, ?, ?, ?, ?)",
                    (
                        name,
                        now(),
                        limits.daily_quota,
                        limits.rate_per_second,
                        limits.daily_checks,
                        limits.daily_filter_downloads,
                        _token_hash(token),
                    ),
                )
        except DuplicateKey:
            raise ConfigurationError(f"organisation {name!r} already exists") from None
        return token

    def get(self, name: str) -> Organisation | None:
        with self._read() as db:
            row = db.one(f"SELECT {_ORG_COLUMNS} FROM organisations WHERE name = ?", (name,))
        return None if row is None else _organisation(row)

    def organisations(self) -> list[Organisation]:
        with self._read() as db:
            rows = db.all(f"SELECT {_ORG_COLUMNS} FROM organisations ORDER BY name")
        return [_organisation(row) for row in rows]

    def revoke(self, name: str) -> None:
        with self._write() as db:
            changed = db.run(
                "UPDATE organisations SET revoked_at = ?, previous_token_sha256 = NULL "
                "WHERE name = ? AND revoked_at IS NULL",
                (now(), name),
            )
            if changed == 0:
                raise ConfigurationError(f"no active organisation named {name!r}")

    def set_limits(self, name: str, **changes: int) -> Organisation:
        """Change some of an organisation's limits (daily_quota=..., rate_per_second=...)."""
        current = self.get(name)
        if current is None:
            raise ConfigurationError(f"no organisation named {name!r}")
        limits = replace(current.limits, **changes)
        limits.check()
        with self._write() as db:
            db.run(
                "UPDATE organisations SET daily_quota = ?, rate_per_second = ?, "
                "daily_checks = ?, daily_filter_downloads = ? WHERE name = ?",
                (
                    limits.daily_quota,
                    limits.rate_per_second,
                    limits.daily_checks,
                    limits.daily_filter_downloads,
                    name,
                ),
            )
        return replace(current, limits=limits)

    def authenticate(self, token: str) -> Organisation | None:
        """The active organisation holding `token` (or its predecessor, within the grace
        period of a rotation), or None."""
        presented = _token_hash(token)
        with self._read() as db:
            row = db.one(
                f"SELECT {_ORG_COLUMNS}, token_sha256 FROM organisations WHERE token_sha256 = ?",
                (presented,),
            )
            if row is None:
                row = db.one(
                    f"SELECT {_ORG_COLUMNS}, previous_token_sha256 FROM organisations "
                    "WHERE previous_token_sha256 = ? AND previous_token_until > ?",
                    (presented, now()),
                )
        if row is None or not hmac.compare_digest(bytes(row[-1]), presented):
            return None
        organisation = _organisation(row[:-1])
        return None if organisation.revoked_at else organisation

    def rotate_token(self, name: str, grace: timedelta = timedelta(0)) -> str:
        """A new token for `name`; the old one keeps working for `grace`, then is refused."""
        token = _new_token()
        until = (datetime.now(UTC) + grace).isoformat(timespec="milliseconds")
        with self._write() as db:
            changed = db.run(
                "UPDATE organisations SET previous_token_sha256 = CASE WHEN ? THEN token_sha256 "
                "ELSE NULL END, previous_token_until = ?, token_sha256 = ? "
                "WHERE name = ? AND revoked_at IS NULL",
                (grace > timedelta(0), until, _token_hash(token), name),
            )
            if changed == 0:
                raise ConfigurationError(f"no active organisation named {name!r}")
        return token

    def reinstate(self, name: str) -> str:
        """Make a revoked organisation active again, with a new token (the old stays dead)."""
        token = _new_token()
        with self._write() as db:
            changed = db.run(
                "UPDATE organisations SET revoked_at = NULL, token_sha256 = ?, "
                "previous_token_sha256 = NULL, previous_token_until = NULL "
                "WHERE name = ? AND revoked_at IS NOT NULL",
                (_token_hash(token), name),
            )
            if changed == 0:
                raise ConfigurationError(f"no revoked organisation named {name!r}")
        return token

    # --- usage ------------------------------------------------------------------------------

    def usage(self, name: str, day: date | None = None) -> Usage:
        day_text = (day or today()).isoformat()
        with self._read() as db:
            rows: dict[str, int] = dict(
                db.all(
                    "SELECT mode, used FROM usage WHERE organisation = ? AND day = ?",
                    (name, day_text),
                )
            )
        return Usage.of(rows)

    def usage_by_organisation(self, day: date | None = None) -> dict[str, Usage]:
        """Every organisation's use of one day (today by default), in one query; an
        organisation that used nothing that day is absent."""
        day_text = (day or today()).isoformat()
        found: dict[str, dict[str, int]] = {}
        with self._read() as db:
            for name, mode, used in db.all(
                "SELECT organisation, mode, used FROM usage WHERE day = ?", (day_text,)
            ):
                found.setdefault(name, {})[mode] = used
        return {name: Usage.of(used) for name, used in found.items()}

    def remaining(self, name: str) -> int:
        organisation = self.get(name)
        if organisation is None:
            return 0
        return max(organisation.daily_quota - self.usage(name).numbers, 0)

    # --- decisions, each with the audit row that records it --------------------------------

    def open_check(self, entry: AuditRecord, reserve: int) -> None:
        """Count a check, reserve its declared numbers and write its `started` row; refuse
        whole (Revoked, QuotaExhausted, DuplicateRequest) and write nothing otherwise."""
        with self._write() as db:
            limits = _active(db, entry.organisation)
            if db.one("SELECT 1 FROM audit WHERE request_id = ? LIMIT 1", (entry.request_id,)):
                raise DuplicateRequest()
            _charge(db, entry.organisation, limits, "checks", 1)
            _charge(db, entry.organisation, limits, "numbers", reserve)
            self._append(db, entry)

    def answer_batch(self, entry: AuditRecord, charge: int) -> Limits:
        """Charge `charge` more numbers (0 when reserved) and record the batch as answered;
        the organisation's limits as they stand now."""
        with self._write() as db:
            limits = _active(db, entry.organisation)
            _charge(db, entry.organisation, limits, "numbers", charge)
            self._append(db, entry)
        return limits

    def close_check(self, entry: AuditRecord, refund: int, reserved_on: date) -> None:
        """Write the closing row, giving back numbers reserved but never sent to the day they
        were reserved on (never to a later day's budget)."""
        with self._write() as db:
            if refund:
                db.run(
                    "UPDATE usage SET used = CASE WHEN used > ? THEN used - ? ELSE 0 END "
                    "WHERE organisation = ? AND mode = 'numbers' AND day = ?",
                    (refund, refund, entry.organisation, reserved_on.isoformat()),
                )
            self._append(db, entry)

    def filter_download(self, entry: AuditRecord) -> None:
        with self._write() as db:
            limits = _active(db, entry.organisation)
            _charge(db, entry.organisation, limits, "filters", 1)
            self._append(db, entry)

    def record(self, entry: AuditRecord) -> None:
        with self._write() as db:
            self._append(db, entry)

    def _append(self, db: Transaction, entry: AuditRecord) -> None:
        """Append one chained row. The head table remembers the last id written, so a row
        removed from the end is not silently reused by the next."""
        if self._audit_key is None:
            raise StoreError("audit rows can only be written with the register's keys file")
        last = db.one("SELECT id, chain FROM audit ORDER BY id DESC LIMIT 1")
        head = db.one("SELECT last_id, chain FROM audit_head WHERE one = 1")
        previous = bytes(last[1]) if last and last[1] is not None else audit_chain.GENESIS
        row_id = max(last[0] if last else 0, head[0] if head else 0) + 1
        chain = audit_chain.link(self._audit_key, previous, row_id, entry)
        db.run(
            f"INSERT INTO audit (id, {_AUDIT_COLUMNS}, chain) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row_id,
                entry.at,
                entry.organisation,
                entry.request_id,
                entry.mode,
                entry.purpose,
                entry.items_checked,
                entry.items_opted_out,
                entry.register_version,
                entry.outcome,
                chain,
            ),
        )
        db.run(
            "INSERT INTO audit_head (one, last_id, chain) VALUES (1, ?, ?) "
            "ON CONFLICT (one) DO UPDATE SET last_id = excluded.last_id, chain = excluded.chain",
            (row_id, chain),
        )
        self.head = (row_id, chain)

    # --- reading the audit log ------------------------------------------------------------

    def audit(self, organisation: str | None = None, since: str | None = None) -> list[AuditRecord]:
        clauses, parameters = [], []
        if organisation:
            clauses.append("organisation = ?")
            parameters.append(organisation)
        if since:
            clauses.append("at >= ?")
            parameters.append(since)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        # The same order either way; by `+id`, SQLite reads a period's rows by audit_by_at and
        # sorts them, instead of walking the whole table in id order to spare itself the sort.
        order = "+id" if since else "id"
        query = f"SELECT {_AUDIT_COLUMNS} FROM audit {where} ORDER BY {order}"
        with self._read() as db:
            rows = db.all(query, parameters)
        return [AuditRecord(*row) for row in rows]

    def audit_counts(self, since: str) -> list[AuditCount]:
        """What `summarise(self.audit(since=since))` would count per day, organisation, mode
        and outcome, counted by the database without reading the rows out."""
        with self._read() as db:
            rows = db.all(_AUDIT_COUNTS, (since,) * _AUDIT_COUNTS.count("?"))
        return [
            AuditCount(day, organisation, mode, outcome, int(lines), int(items))
            for day, organisation, mode, outcome, lines, items in rows
        ]

    def verify_audit(self, key: bytes) -> audit_chain.ChainReport:
        with self._read() as db:
            rows = db.all(f"SELECT id, {_AUDIT_COLUMNS}, chain FROM audit ORDER BY id")
            head = db.one("SELECT last_id, chain FROM audit_head WHERE one = 1")
        return audit_chain.verify(
            key,
            (
                (row[0], AuditRecord(*row[1:-1]), None if row[-1] is None else bytes(row[-1]))
                for row in rows
            ),
            head=None if head is None else (int(head[0]), bytes(head[1])),
        )


def _active(db: Transaction, name: str) -> Limits:
    row = db.one(f"SELECT revoked_at, {_LIMIT_COLUMNS} FROM organisations WHERE name = ?", (name,))
    if row is None or row[0] is not None:
        raise Revoked()
    return Limits(*row[1:])


def _charge(db: Transaction, name: str, limits: Limits, counter: Counter, amount: int) -> None:
    """Add `amount` to today's `counter`, or raise QuotaExhausted and add nothing; `limits`
    are the organisation's as `_active` read them in the same transaction."""
    if amount <= 0:
        return
    field_name, what = _LIMIT_NAMES[counter]
    limit: int = getattr(limits, field_name)
    day = today()
    row = db.one(
        "SELECT used FROM usage WHERE organisation = ? AND mode = ? AND day = ?",
        (name, counter, day.isoformat()),
    )
    used = row[0] if row else 0
    if used + amount > limit:
        raise QuotaExhausted(what, max(limit - used, 0), next_reset(day))
    db.run(
        "INSERT INTO usage (organisation, mode, day, used) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (organisation, mode, day) DO UPDATE SET used = usage.used + excluded.used",
        (name, counter, day.isoformat(), amount),
    )
