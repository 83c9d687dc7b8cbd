"""The store's schema, for both databases, and its version.

One schema version covers every table (register and accounts). `ndop register load` creates
the schema in an empty store; every other command refuses a store whose schema is older or
newer than this ndop's, and `ndop store migrate` brings an older one up to date.

History:
1. versions, entries, artifacts; organisations with a quota per mode; usage per mode; audit.
2. one daily budget per organisation across both modes, a rate and daily limits on checks
   and filter downloads; usage per counter; a rotated token's predecessor with its grace
   period; audit rows hash-chained, with the head kept.

An optional object is not a schema version: it changes nothing that any ndop of the same
version reads or writes, only how fast some reads are. A store of the current version may
lack one and is served all the same, by older and newer ndop alike, so replicas sharing a
store can be upgraded one at a time; the server warns at start of one that is missing, and
`ndop store migrate` adds it while the servers keep serving. New stores have them from the
start. They are:
- audit_by_at, the audit log indexed by time (`at`), which the status page's activity summary
  and `ndop audit --since` select on: without it both read the whole log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ndop_server.database import Database, Transaction
from ndop_server.database.base import Dialect
from ndop_server.errors import StoreError

SCHEMA_VERSION: Final = 2

AUDIT_TIME_INDEX: Final = "audit_by_at"
"""The audit log's time index: optional (see above)."""
_AUDIT_TIME_COLUMNS: Final = ("at",)

_TABLES: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    version {integer} PRIMARY KEY,
    published_at TEXT NOT NULL,
    count {integer} NOT NULL,
    source TEXT NOT NULL,
    added {integer} NOT NULL,
    removed {integer} NOT NULL,
    key_id TEXT NOT NULL,
    filter_sha256 {blob} NOT NULL,
    filter_size {integer} NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    {entries_id_column}
    token {blob} NOT NULL,
    filter_key {blob} NOT NULL,
    added_in {integer} NOT NULL,
    removed_in {integer}
);
CREATE UNIQUE INDEX IF NOT EXISTS entries_live ON entries(token) WHERE removed_in IS NULL;
CREATE TABLE IF NOT EXISTS artifacts (
    version {integer} NOT NULL,
    kind TEXT NOT NULL,
    data {blob} NOT NULL,
    PRIMARY KEY (version, kind)
);
CREATE TABLE IF NOT EXISTS organisations (
    name TEXT PRIMARY KEY,
    token_sha256 {blob} NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked_at TEXT,
    daily_quota {integer} NOT NULL,
    rate_per_second {integer} NOT NULL,
    daily_checks {integer} NOT NULL,
    daily_filter_downloads {integer} NOT NULL,
    previous_token_sha256 {blob},
    previous_token_until TEXT
);
CREATE TABLE IF NOT EXISTS usage (
    organisation TEXT NOT NULL,
    mode TEXT NOT NULL,
    day TEXT NOT NULL,
    used {integer} NOT NULL,
    PRIMARY KEY (organisation, mode, day)
){without_rowid};
CREATE TABLE IF NOT EXISTS audit (
    {audit_id_column},
    at TEXT NOT NULL,
    organisation TEXT NOT NULL,
    request_id TEXT NOT NULL,
    mode TEXT NOT NULL,
    purpose TEXT NOT NULL,
    items_checked {integer} NOT NULL,
    items_opted_out {integer},
    register_version {integer} NOT NULL,
    outcome TEXT NOT NULL,
    chain {blob}
);
CREATE INDEX IF NOT EXISTS audit_by_request ON audit (request_id);
{audit_by_at};
CREATE TABLE IF NOT EXISTS audit_head (
    one {integer} PRIMARY KEY CHECK (one = 1),
    last_id {integer} NOT NULL,
    chain {blob} NOT NULL
);
"""

_SQLITE_APPEND_ONLY: Final = """
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_replace BEFORE INSERT ON audit
WHEN EXISTS (SELECT 1 FROM audit WHERE id = NEW.id)
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""

_POSTGRES_APPEND_ONLY: Final = (
    """CREATE OR REPLACE FUNCTION ndop_audit_append_only() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$ LANGUAGE plpgsql""",
    "DROP TRIGGER IF EXISTS audit_no_change ON audit",
    """CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit
FOR EACH ROW EXECUTE FUNCTION ndop_audit_append_only()""",
    "DROP TRIGGER IF EXISTS audit_no_truncate ON audit",
    """CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
FOR EACH STATEMENT EXECUTE FUNCTION ndop_audit_append_only()""",
)


def _statements(dialect: Dialect, *, optional: bool = True) -> list[str]:
    """The whole schema; without the optional objects unless `optional`."""
    sqlite = dialect.name == "sqlite"
    audit_by_at = (
        f"CREATE INDEX IF NOT EXISTS {AUDIT_TIME_INDEX} ON audit ({', '.join(_AUDIT_TIME_COLUMNS)})"
    )
    ddl = _TABLES.format(
        integer=dialect.integer,
        blob=dialect.blob,
        without_rowid=dialect.without_rowid,
        audit_by_at=audit_by_at if optional else "",
        entries_id_column="" if sqlite else "id BIGSERIAL PRIMARY KEY,",
        audit_id_column=(
            "id INTEGER PRIMARY KEY AUTOINCREMENT" if sqlite else "id BIGINT PRIMARY KEY"
        ),
    )
    statements = [s.strip() for s in ddl.split(";") if s.strip()]
    if sqlite:
        return [*statements, _SQLITE_APPEND_ONLY]
    return [*statements, *_POSTGRES_APPEND_ONLY]


def create(db: Database) -> None:
    """Create every table of an empty store, or check an existing store's version."""
    if db.has_table("meta"):
        require_current(db)
        return
    db.apply_ddl(_statements(db.dialect))
    with db.transaction(lock="schema") as tx:
        tx.run(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?) ON CONFLICT DO NOTHING",
            (str(SCHEMA_VERSION),),
        )


def _found_version(db: Database) -> int | None:
    """The schema version the store records (None if it records none); StoreError if `db`
    is not an ndop store at all."""
    if not db.has_table("meta"):
        raise StoreError(f"{db.location} is not an ndop register store")
    with db.transaction() as tx:
        row = tx.one("SELECT value FROM meta WHERE key = 'schema_version'")
    return None if row is None else int(row[0])


def require_current(db: Database) -> None:
    """StoreError unless the store's schema is the one this ndop speaks."""
    found = _found_version(db)
    if found is None or found < SCHEMA_VERSION:
        raise StoreError(
            f"the store at {db.location} has schema {found or 1}, older than this ndop's "
            f"({SCHEMA_VERSION}); run 'ndop store migrate --store {db.location}' first"
        )
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"the store at {db.location} has schema {found}, newer than this ndop's "
            f"({SCHEMA_VERSION}); upgrade ndop"
        )


def has_audit_time_index(db: Database) -> bool:
    """Whether the audit log has its (optional) time index, usable; one catalog query."""
    return db.has_index(AUDIT_TIME_INDEX)


@dataclass(frozen=True)
class Migration:
    before: int
    """The store's schema version before."""
    after: int
    """Its version now: this ndop's."""
    added_audit_time_index: bool
    """Whether the audit log's time index was missing (or unusable) and is built now."""


def migrate(db: Database) -> Migration:
    """Bring the store's schema up to this ndop's and add the optional objects it lacks.

    Running it again does nothing. The optional objects are built while servers keep using
    the store (see Database.build_index), after any version change has committed."""
    found = _found_version(db) or 1
    if found > SCHEMA_VERSION:
        raise StoreError(f"the store's schema {found} is newer than this ndop's; upgrade ndop")
    if found < SCHEMA_VERSION:
        with db.transaction(lock="schema") as tx:
            if found < 2:
                _to_version_2(tx)
            tx.run(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
        # A version-1 store that never served has no audit table yet: this makes it.
        db.apply_ddl(_statements(db.dialect, optional=False))
    added = db.build_index(AUDIT_TIME_INDEX, "audit", _AUDIT_TIME_COLUMNS)
    return Migration(found, SCHEMA_VERSION, added)


def _to_version_2(tx: Transaction) -> None:
    """One daily budget (the larger of the two per-mode ones), default rate and limits, and a
    chain column; usage counted per mode before today stays as history."""
    columns = {row[1] for row in tx.all("PRAGMA table_info(organisations)")}
    if "hashed_daily_quota" in columns:
        for name, value in (
            ("daily_quota", "max(hashed_daily_quota, private_daily_quota)"),
            ("rate_per_second", "1000000"),
            ("daily_checks", "1000"),
            ("daily_filter_downloads", "100"),
        ):
            tx.run(f"ALTER TABLE organisations ADD COLUMN {name} INTEGER NOT NULL DEFAULT 0")
            tx.run(f"UPDATE organisations SET {name} = {value}")
        tx.run("ALTER TABLE organisations DROP COLUMN hashed_daily_quota")
        tx.run("ALTER TABLE organisations DROP COLUMN private_daily_quota")
        tx.run("ALTER TABLE organisations ADD COLUMN previous_token_sha256 BLOB")
        tx.run("ALTER TABLE organisations ADD COLUMN previous_token_until TEXT")
    audit_columns = {row[1] for row in tx.all("PRAGMA table_info(audit)")}
    if audit_columns and "chain" not in audit_columns:
        tx.run("ALTER TABLE audit ADD COLUMN chain BLOB")
