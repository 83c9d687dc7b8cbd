"""The storage contract, run against both backends: a SQLite file and a real PostgreSQL
database started by the tests. The servicer, publisher and CLI never know which they have, so
whatever holds for one must hold for the other.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import psycopg
import pytest
import structlog

from ndop_client import Client, Status
from ndop_server import keys as keyfile
from ndop_server import store_admin
from ndop_server.accounts import _AUDIT_COLUMNS, Accounts, Limits, QuotaExhausted
from ndop_server.audit_chain import audit_key
from ndop_server.audit_record import AuditRecord
from ndop_server.audit_view import summarise
from ndop_server.database import Transaction, open_database
from ndop_server.database.postgres import _lock_key
from ndop_server.errors import ConfigurationError, StoreError
from ndop_server.keys import RegisterKeys
from ndop_server.register import FILTER_ARTIFACT, Publisher
from ndop_server.schema import SCHEMA_VERSION, Migration
from ndop_server.server import start_server
from ndop_server.store import Store
from ndop_server.synthetic import valid_numbers
from tests.conftest import GENEROUS, write_numbers
from tests.postgres_server import PostgresServer

NDOP = [sys.executable, "-m", "ndop_client"]


def _keys(tmp_path: Path) -> RegisterKeys:
    return keyfile.write_new(tmp_path / "keys.json")


def _publish(location: str, keys: RegisterKeys, path: Path, values: np.ndarray) -> int:
    with Store(location, create=True) as store:
        return (
            Publisher(store, keys, workers=1)
            .load_snapshot(write_numbers(path, values))
            .record.version
        )


def _record(organisation: str, outcome: str, items: int = 0) -> AuditRecord:
    return AuditRecord(
        at="2026-11-25T12:00:00.000+00:00",
        organisation=organisation,
        request_id=str(uuid.uuid4()),
        mode="hashed",
        purpose="research",
        items_checked=items,
        items_opted_out=None,
        register_version=1,
        outcome=outcome,
    )


# --- the register store ------------------------------------------------------------------


def test_versions_are_published_and_read_back(store_location: str, tmp_path: Path) -> None:
    keys = _keys(tmp_path)
    numbers = valid_numbers(400, "999", seed=21)
    assert _publish(store_location, keys, tmp_path / "a.dat", numbers[:300]) == 1
    with Store(store_location) as store:
        publisher = Publisher(store, keys, workers=1)
        second = publisher.apply_changes(
            write_numbers(tmp_path / "add.dat", numbers[300:350]),
            write_numbers(tmp_path / "remove.dat", numbers[:20]),
        ).record
        latest = store.latest()
        history = store.history()
        assert store.register_id() == keys.register_id
        assert len(store.artifact(2, FILTER_ARTIFACT)) == second.filter_size
    assert (second.version, second.count, second.added, second.removed) == (2, 330, 50, 20)
    assert latest == second
    assert [r.version for r in history] == [2, 1]


def test_only_the_three_newest_versions_keep_their_artifacts(
    store_location: str, tmp_path: Path
) -> None:
    keys = _keys(tmp_path)
    numbers = valid_numbers(100, "999", seed=22)
    _publish(store_location, keys, tmp_path / "a.dat", numbers[:50])
    with Store(store_location) as store:
        for i in range(4):
            Publisher(store, keys, workers=1).apply_changes(
                write_numbers(tmp_path / f"add{i}.dat", numbers[50 + i : 51 + i]), None
            )
        with pytest.raises(StoreError, match="no filter artifact"):
            store.artifact(2, FILTER_ARTIFACT)
        assert store.artifact(3, FILTER_ARTIFACT)


def test_a_version_published_meanwhile_makes_publication_refuse(
    store_location: str, tmp_path: Path
) -> None:
    keys = _keys(tmp_path)
    numbers = valid_numbers(100, "999", seed=23)
    _publish(store_location, keys, tmp_path / "a.dat", numbers[:50])
    with Store(store_location) as slow, Store(store_location) as fast:
        with slow.preparation() as preparation:
            base = preparation.base_version
        Publisher(fast, keys, workers=1).apply_changes(
            write_numbers(tmp_path / "add.dat", numbers[60:61]), None
        )
        refused = pytest.raises(StoreError, match="was published while this one was being prepared")
        with refused, slow.publication(base):
            pass
        assert slow.latest_number() == 2


def test_a_store_refuses_the_keys_of_another_register(store_location: str, tmp_path: Path) -> None:
    _publish(store_location, _keys(tmp_path), tmp_path / "a.dat", valid_numbers(5, "999"))
    other = keyfile.write_new(tmp_path / "other.json")
    with Store(store_location) as store, pytest.raises(StoreError, match="belongs to register"):
        Publisher(store, other, workers=1)


def test_a_missing_store_is_not_created_by_reading_it(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "typo.sqlite3")
    with pytest.raises(StoreError, match="does not exist"):
        Accounts(tmp_path / "typo.sqlite3")
    assert not (tmp_path / "typo.sqlite3").exists()


def test_a_store_of_a_newer_schema_is_refused(store_location: str, tmp_path: Path) -> None:
    _publish(store_location, _keys(tmp_path), tmp_path / "a.dat", valid_numbers(5, "999"))
    with Store(store_location) as store, store.db.transaction(lock="register") as tx:
        tx.run("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer than this ndop"):
        Store(store_location)


# --- schema versions -----------------------------------------------------------------------


def _schema_version(location: str) -> int:
    with open_database(location) as db, db.transaction() as tx:
        row = tx.one("SELECT value FROM meta WHERE key = 'schema_version'")
    assert row is not None
    return int(row[0])


def _audit_indexes(location: str) -> dict[str, str]:
    """The audit table's indexes, each with its definition."""
    with open_database(location) as db, db.transaction() as tx:
        if db.dialect.name == "postgresql":
            rows = tx.all("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'audit'")
        else:
            rows = tx.all(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit'"
            )
    return {name: definition or "" for name, definition in rows}


def _columns(location: str) -> dict[str, list[str]]:
    """Every table of the store and its columns, as the database lists them."""
    with open_database(location) as db, db.transaction() as tx:
        if db.dialect.name == "postgresql":
            rows = tx.all(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
            )
        else:
            rows = [
                (table, column[1])
                for (table,) in tx.all(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%'"
                )
                for column in tx.all(f"PRAGMA table_info({table})")
            ]
    found: dict[str, list[str]] = {}
    for table, column in rows:
        found.setdefault(table, []).append(column)
    return found


def test_store_copy_knows_every_column_of_every_table(store_location: str) -> None:
    """A column the copy does not name would be dropped by `ndop store copy` and by a backup
    taken from PostgreSQL (a rotated token's grace period once was)."""
    Store(store_location, create=True).close()
    Accounts(store_location).close()
    copied = {table: list(columns) for table, columns in store_admin.TABLES}
    found = _columns(store_location)
    if store_location.startswith("postgresql"):
        # PostgreSQL numbers entries with a serial key of its own; the copy lets the
        # destination number them again.
        found["entries"].remove("id")
    assert found == copied


def _every_row(location: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table but the schema version, in an order that does not depend on
    how the database returns them."""
    found = {}
    with open_database(location) as db, db.transaction() as tx:
        for table, _ in store_admin.TABLES:
            rows = [
                tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                for row in tx.all(f"SELECT * FROM {table}")
            ]
            if table == "meta":
                rows = [row for row in rows if row[0] != "schema_version"]
            found[table] = sorted(rows, key=repr)
    return found


def _without_time_index(location: str) -> None:
    """Turn a current store into one made before the audit log had its time index: an
    optional index, so the schema version stays as it is."""
    with open_database(location) as db, db.transaction(lock="schema") as tx:
        tx.run("DROP INDEX audit_by_at")


def _migrate(location: str) -> str:
    """What `ndop store migrate` says, having succeeded."""
    migrated = subprocess.run(
        [*NDOP, "store", "migrate", "--store", location],
        capture_output=True,
        text=True,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stderr
    return migrated.stdout.strip()


ADDED: Final = "the store's schema is current (2); added the audit log's time index"
NOTHING_TO_DO: Final = (
    "the store's schema is current (2) and the audit log has its time index; nothing to do"
)


def test_a_store_without_the_time_index_serves_and_migrate_adds_it_with_every_row(
    store_location: str, tmp_path: Path
) -> None:
    keys, token = _a_working_store(store_location, tmp_path)
    assert "(at)" in _audit_indexes(store_location)["audit_by_at"], "new stores have it"
    key = audit_key(keys.store_key)
    with Accounts(store_location, key) as accounts:
        accounts.add("second", Limits(daily_quota=77))
        accounts.record(_record("-", "auth-failed"))
        accounts.rotate_token("mover", timedelta(hours=1))
    _without_time_index(store_location)
    assert "audit_by_at" not in _audit_indexes(store_location)

    # Served as it is, since the index changes nothing any ndop of schema 2 reads or writes.
    with Store(store_location) as store:
        assert store.latest_number() == 2
    with Accounts(store_location, key) as accounts:
        assert not accounts.has_audit_time_index()
        assert accounts.authenticate(token) is not None
        accounts.record(_record("mover", "completed", 5))
        assert len(accounts.audit(since="2026-11-25")) == 4
        assert sum(count.lines for count in accounts.audit_counts("2026-11-25")) == 3
    before = _every_row(store_location)

    assert _migrate(store_location) == ADDED
    assert _every_row(store_location) == before
    assert "(at)" in _audit_indexes(store_location)["audit_by_at"]
    # Still schema 2: replicas of the ndop before this one (schema 2, which refuses any other
    # version) keep serving the store while the others are upgraded.
    assert _schema_version(store_location) == SCHEMA_VERSION == 2
    with Store(store_location) as store:
        assert store.latest_number() == 2
    with Accounts(store_location, key) as accounts:
        assert accounts.has_audit_time_index()
        assert accounts.authenticate(token) is not None, "the grace period outlives migration"
        assert accounts.verify_audit(key).intact
        accounts.record(_record("mover", "completed", 5))
        assert accounts.verify_audit(key).rows == 5
    after = _every_row(store_location)

    assert _migrate(store_location) == NOTHING_TO_DO
    assert store_admin.migrate(store_location) == Migration(2, 2, added_audit_time_index=False)
    assert _every_row(store_location) == after
    assert _schema_version(store_location) == 2


def test_migrate_rebuilds_a_time_index_a_failed_build_left_unusable(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """A CONCURRENTLY build that fails (cancelled, a deadlock, a lost connection) leaves its
    index behind, invalid; a build in progress is invalid too until it ends."""
    url = postgres.new_database()
    _a_working_store(url, tmp_path)
    _without_time_index(url)
    valid = "SELECT indisvalid FROM pg_index WHERE indexrelid = 'audit_by_at'::regclass"
    with psycopg.connect(url, autocommit=True) as other:
        with pytest.raises(psycopg.errors.UniqueViolation):  # the check's two rows
            other.execute("CREATE UNIQUE INDEX CONCURRENTLY audit_by_at ON audit (organisation)")
        assert other.execute(valid).fetchone() == (False,)
        with Accounts(url) as accounts:
            assert not accounts.has_audit_time_index()
        before = _every_row(url)

        building = _lock_key("index audit_by_at")
        other.execute("SELECT pg_advisory_lock(%s)", (building,))
        with pytest.raises(StoreError, match="another process is building the index audit_by"):
            store_admin.migrate(url)
        other.execute("SELECT pg_advisory_unlock(%s)", (building,))
        assert other.execute(valid).fetchone() == (False,), "left alone while being built"

        assert _migrate(url) == ADDED
        assert other.execute(valid).fetchone() == (True,)
    definition = _audit_indexes(url)["audit_by_at"]
    assert "(at)" in definition and "UNIQUE" not in definition, definition
    assert _every_row(url) == before
    assert _migrate(url) == NOTHING_TO_DO


def test_a_server_warns_at_start_of_a_store_without_the_time_index(
    store_location: str, tmp_path: Path
) -> None:
    keys, _ = _a_working_store(store_location, tmp_path)
    warned = []
    for indexed in (True, False):
        if not indexed:
            _without_time_index(store_location)
        with structlog.testing.capture_logs() as logs:
            running = start_server(
                store_location, keys, "127.0.0.1:0", tls=None, insecure=True, poll_seconds=5
            )
            running.stop(grace=1)
        assert [e for e in logs if e["event"] == "server.started"]
        warned.append([e for e in logs if e["event"] == "store.audit_time_index_missing"])
    assert warned[0] == []
    (warning,) = warned[1]
    assert warning["log_level"] == "warning"
    assert "no time index" in warning["detail"], warning
    assert "ndop store migrate --store STORE" in warning["advice"], warning


_SCHEMA_1: Final = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE versions (
    version INTEGER PRIMARY KEY, published_at TEXT NOT NULL, count INTEGER NOT NULL,
    source TEXT NOT NULL, added INTEGER NOT NULL, removed INTEGER NOT NULL,
    key_id TEXT NOT NULL, filter_sha256 BLOB NOT NULL, filter_size INTEGER NOT NULL
);
CREATE TABLE entries (
    token BLOB NOT NULL, filter_key BLOB NOT NULL, added_in INTEGER NOT NULL, removed_in INTEGER
);
CREATE UNIQUE INDEX entries_live ON entries(token) WHERE removed_in IS NULL;
CREATE TABLE artifacts (
    version INTEGER NOT NULL, kind TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (version, kind)
);
CREATE TABLE organisations (
    name TEXT PRIMARY KEY, token_sha256 BLOB NOT NULL UNIQUE, created_at TEXT NOT NULL,
    revoked_at TEXT, hashed_daily_quota INTEGER NOT NULL, private_daily_quota INTEGER NOT NULL
);
CREATE TABLE usage (
    organisation TEXT NOT NULL, mode TEXT NOT NULL, day TEXT NOT NULL, used INTEGER NOT NULL,
    PRIMARY KEY (organisation, mode, day)
) WITHOUT ROWID;
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, organisation TEXT NOT NULL,
    request_id TEXT NOT NULL, mode TEXT NOT NULL, purpose TEXT NOT NULL,
    items_checked INTEGER NOT NULL, items_opted_out INTEGER, register_version INTEGER NOT NULL,
    outcome TEXT NOT NULL
);
INSERT INTO meta VALUES ('schema_version', '1'), ('register_id', 'r1');
INSERT INTO organisations VALUES ('old-org', x'01', '2026-11-01T00:00:00.000+00:00', NULL, 10, 30);
INSERT INTO usage VALUES ('old-org', 'hashed', '2026-11-01', 4);
INSERT INTO audit (at, organisation, request_id, mode, purpose, items_checked, items_opted_out,
    register_version, outcome)
VALUES ('2026-11-01T09:00:00.000+00:00', 'old-org', 'r-1', 'hashed', 'research', 4, 1, 1,
    'completed'),
    ('2026-11-02T09:00:00.000+00:00', '-', '-', '-', '-', 0, NULL, 1, 'auth-failed');
"""
"""A store as the first ndop left it (SQLite only, before PostgreSQL): a quota per mode, audit
rows without a chain, no index but the live entries'."""


@pytest.mark.parametrize("served", [True, False], ids=["served", "never-served"])
def test_a_version_1_store_migrates_to_the_current_schema(tmp_path: Path, served: bool) -> None:
    location = str(tmp_path / "v1.sqlite3")
    with sqlite3.connect(location) as old:
        script = _SCHEMA_1
        if not served:  # the first ndop made the accounts tables when a server opened them
            script = script[: script.index("CREATE TABLE organisations")]
            script += "INSERT INTO meta VALUES ('schema_version', '1'), ('register_id', 'r1');"
        old.executescript(script)
    assert store_admin.migrate(location) == Migration(1, SCHEMA_VERSION, True)
    assert _schema_version(location) == SCHEMA_VERSION
    assert "(at)" in _audit_indexes(location)["audit_by_at"]
    with open_database(location) as db, db.transaction() as tx:
        audit = tx.all("SELECT id, at, organisation, items_checked, outcome, chain FROM audit")
        organisations = tx.all("SELECT name, daily_quota FROM organisations")
    if served:
        assert audit == [
            (1, "2026-11-01T09:00:00.000+00:00", "old-org", 4, "completed", None),
            (2, "2026-11-02T09:00:00.000+00:00", "-", 0, "auth-failed", None),
        ]
        assert organisations == [("old-org", 30)]
    else:
        assert audit == [] and organisations == []


# --- accounts ------------------------------------------------------------------------------


def test_organisations_tokens_limits_and_revocation(store_location: str, tmp_path: Path) -> None:
    keys = _keys(tmp_path)
    _publish(store_location, keys, tmp_path / "a.dat", valid_numbers(5, "999"))
    with Accounts(store_location, audit_key(keys.store_key)) as accounts:
        token = accounts.add("org-a", Limits(daily_quota=100))
        with pytest.raises(ConfigurationError, match="already exists"):
            accounts.add("org-a")
        found = accounts.authenticate(token)
        assert found is not None and found.daily_quota == 100
        assert accounts.authenticate(token + "x") is None
        accounts.set_limits("org-a", rate_per_second=5)
        assert accounts.get("org-a").limits.rate_per_second == 5  # type: ignore[union-attr]
        accounts.revoke("org-a")
        assert accounts.authenticate(token) is None


def test_charges_from_many_replicas_never_cross_the_budget(
    store_location: str, tmp_path: Path
) -> None:
    """30 concurrent checks, from three separate connections (three replicas' worth), on a
    budget that holds 10 of them: exactly 10 are charged, to the number."""
    keys = _keys(tmp_path)
    _publish(store_location, keys, tmp_path / "a.dat", valid_numbers(5, "999"))
    key = audit_key(keys.store_key)
    with Accounts(store_location, key) as accounts:
        accounts.add("busy", Limits(daily_quota=1_000, daily_checks=1_000))
    replicas = [Accounts(store_location, key) for _ in range(3)]
    try:

        def check(i: int) -> bool:
            try:
                replicas[i % 3].open_check(_record("busy", "started", 100), 100)
            except QuotaExhausted:
                return False
            return True

        with ThreadPoolExecutor(max_workers=30) as pool:
            outcomes = list(pool.map(check, range(30)))
        assert outcomes.count(True) == 10
        assert replicas[0].usage("busy").numbers == 1_000
        replicas[2].add("idle", Limits(daily_quota=1_000))
        # The status page and `org list` read every organisation's day in one query.
        assert replicas[1].usage_by_organisation() == {"busy": replicas[0].usage("busy")}
        assert replicas[1].usage("busy").checks == 10
        assert replicas[1].verify_audit(key).intact
    finally:
        for replica in replicas:
            replica.close()


def test_the_audit_log_is_append_only_and_chained(store_location: str, tmp_path: Path) -> None:
    keys = _keys(tmp_path)
    _publish(store_location, keys, tmp_path / "a.dat", valid_numbers(5, "999"))
    key = audit_key(keys.store_key)
    with Accounts(store_location, key) as accounts:
        accounts.add("audited", GENEROUS)
        for _ in range(4):
            accounts.record(_record("audited", "completed", 7))
        report = accounts.verify_audit(key)
        assert report.intact and report.rows == 4 and report.last_id == 4
        with Store(store_location) as store:
            for statement in ("UPDATE audit SET items_checked = 1", "DELETE FROM audit"):
                refused = pytest.raises(StoreError, match="append-only")
                with refused, store.db.transaction(lock="accounts") as tx:
                    tx.run(statement)
        assert accounts.verify_audit(key).intact
        with pytest.raises(StoreError, match="keys file"):
            Accounts(store_location).record(_record("audited", "completed"))


def test_tampering_past_the_triggers_is_found_in_either_backend(
    store_location: str, tmp_path: Path
) -> None:
    keys = _keys(tmp_path)
    _publish(store_location, keys, tmp_path / "a.dat", valid_numbers(5, "999"))
    key = audit_key(keys.store_key)
    with Accounts(store_location, key) as accounts:
        for _ in range(5):
            accounts.record(_record("-", "auth-failed"))
    drop = (
        "DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;"
        if not store_location.startswith("postgresql")
        else "DROP TRIGGER audit_no_change ON audit;"
    )
    edit = drop + " UPDATE audit SET items_checked = 9 WHERE id = 2; DELETE FROM audit WHERE id = 5"
    if store_location.startswith("postgresql"):
        with psycopg.connect(store_location, autocommit=True) as db:
            for statement in edit.split(";"):
                db.execute(statement)
    else:
        with sqlite3.connect(store_location) as db:
            db.executescript(edit)
    with Accounts(store_location) as accounts:
        report = accounts.verify_audit(key)
    assert "row 2 was altered after it was written" in report.problems
    assert "row 5 was removed from the end of the log" in report.problems


class _Explaining:
    """A read transaction that keeps each query's plan before running it."""

    def __init__(self, tx: Transaction, postgres: bool, plans: dict[str, list[str]]) -> None:
        self._tx, self._postgres, self.plans = tx, postgres, plans

    def all(self, sql: str, parameters: Any = ()) -> list[Any]:
        if self._postgres:
            ((document,),) = self._tx.all("EXPLAIN (FORMAT JSON) " + sql, parameters)
            self.plans[sql] = list(_postgres_scans(document[0]["Plan"]))
        else:
            rows = self._tx.all("EXPLAIN QUERY PLAN " + sql, parameters)
            self.plans[sql] = [row[3] for row in rows]
        return self._tx.all(sql, parameters)


def _postgres_scans(node: dict[str, Any]) -> Iterator[str]:
    """Each scan that chooses what is read, as 'type on table using index: condition' (a Bitmap
    Heap Scan reads what its Bitmap Index Scan found)."""
    if node["Node Type"] in ("Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Index Scan"):
        yield (
            f"{node['Node Type']} on {node.get('Relation Name', '')} "
            f"using {node.get('Index Name', '')}: {node.get('Index Cond', '')}"
        )
    for child in node.get("Plans", []):
        yield from _postgres_scans(child)


def test_a_period_of_the_audit_log_is_read_through_its_time_index(
    store_location: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ndop audit --since` and the status page's counts read the period's rows by
    audit_by_at, never the whole log, on a log of 400 days of which the period is the last
    week (statistics taken, as PostgreSQL's autovacuum would)."""
    _publish(store_location, _keys(tmp_path), tmp_path / "a.dat", valid_numbers(5, "999"))
    end = datetime(2026, 11, 26, tzinfo=UTC)
    rows = []
    for n in range(1, 20_001):
        at = (end - timedelta(days=400) * (1 - n / 20_000)).isoformat(timespec="milliseconds")
        check, step = divmod(n, 4)
        outcome, request = [
            ("auth-failed", "-"),
            ("started", f"r{check}"),
            ("answered", f"r{check}"),
            ("completed", f"r{check}"),
        ][step]
        rows.append((n, at, f"org-{check % 3}", request, "hashed", "research", 9, 1, 1, outcome))
    with Store(store_location) as store:
        with store.db.transaction(lock="accounts") as tx:
            tx.load("audit", ["id", *_AUDIT_COLUMNS.split(", ")], rows)
        if store.db.dialect.name == "postgresql":
            with store.db.transaction() as tx:
                tx.run("ANALYZE audit")
    since = (end - timedelta(days=7)).isoformat(timespec="milliseconds")
    with Accounts(store_location) as accounts:
        everything = accounts.audit()
        postgres = accounts._db.dialect.name == "postgresql"
        plans: dict[str, list[str]] = {}

        @contextmanager
        def explaining() -> Iterator[_Explaining]:
            with accounts._db.transaction() as tx:
                yield _Explaining(tx, postgres, plans)

        monkeypatch.setattr(accounts, "_read", explaining)
        assert accounts.audit(since=since) == [r for r in everything if r.at >= since]
        assert accounts.audit("org-1", since) == [
            r for r in everything if r.at >= since and r.organisation == "org-1"
        ]
        counts = accounts.audit_counts(since[:10])
    in_period = [r for r in everything if r.at >= since[:10]]
    assert sum(count.lines for count in counts) == len(summarise(in_period)) > 0
    assert sum(count.items_checked for count in counts) == sum(
        line.items_checked for line in summarise(in_period)
    )
    assert len(plans) == 3
    for sql, plan in plans.items():
        shown = "\n".join(plan)
        assert any("audit_by_at" in step for step in plan), f"{sql}\n{shown}"
        if postgres:
            # Every scan of the log is by a condition on an index: the period's by `at`,
            # and single rows by id. A Seq Scan, or an index walked whole, reads the log.
            assert all("audit" not in step or step.split(": ")[1] for step in plan), shown
        else:
            whole = ("SCAN audit", "SCAN opening", "SCAN closing")
            assert not [step for step in plan if step.startswith(whole)], shown


# --- moving stores -------------------------------------------------------------------------


def _a_working_store(location: str, tmp_path: Path) -> tuple[RegisterKeys, str]:
    keys = _keys(tmp_path)
    numbers = valid_numbers(300, "999", seed=31)
    _publish(location, keys, tmp_path / "snap.dat", numbers[:200])
    with Store(location) as store:
        Publisher(store, keys, workers=1).apply_changes(
            None, write_numbers(tmp_path / "rm.dat", numbers[:10])
        )
    with Accounts(location, audit_key(keys.store_key)) as accounts:
        token = accounts.add("mover", GENEROUS)
        accounts.open_check(_record("mover", "started", 5), 5)
        accounts.answer_batch(_record("mover", "answered", 5), 0)
    return keys, token


def test_a_copy_of_a_store_in_use_is_its_snapshot(
    store_location: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server writing audit rows while `ndop store copy` (or a backup from PostgreSQL)
    reads does not make the copy look short: it holds the snapshot it read."""
    keys, _ = _a_working_store(store_location, tmp_path)
    read_rows = store_admin._rows
    written: list[str] = []

    def rows_while_a_server_writes(tx: Transaction, table: str, columns: Any) -> Any:
        if table == "audit" and not written:
            with Accounts(store_location, audit_key(keys.store_key)) as accounts:
                accounts.record(_record("mover", "completed", 5))
            written.append(table)
        return read_rows(tx, table, columns)

    monkeypatch.setattr(store_admin, "_rows", rows_while_a_server_writes)
    copied = store_admin.copy(store_location, str(tmp_path / "copy.sqlite3"))
    assert written and copied.rows["audit"] == 2
    with Accounts(store_location) as accounts:
        assert len(accounts.audit()) == 3


def test_store_copy_moves_everything_between_backends(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    sqlite_store = str(tmp_path / "from.sqlite3")
    keys, token = _a_working_store(sqlite_store, tmp_path)
    url = postgres.new_database()
    moved = subprocess.run(
        [*NDOP, "store", "copy", sqlite_store, url], capture_output=True, text=True, check=False
    )
    assert moved.returncode == 0, moved.stderr
    back = tmp_path / "back.sqlite3"
    copied = store_admin.copy(url, str(back))
    assert copied.rows["versions"] == 2 and copied.rows["audit"] == 2
    backups = [tmp_path / "online.sqlite3", tmp_path / "from-postgresql.sqlite3"]
    store_admin.backup(sqlite_store, backups[0])
    store_admin.backup(url, backups[1])
    for made in (url, str(back), *map(str, backups)):
        assert _schema_version(made) == SCHEMA_VERSION
        assert "(at)" in _audit_indexes(made)["audit_by_at"]
    for location in (url, str(back)):
        with Store(location) as store:
            assert store.latest() == Store(sqlite_store).latest()
        with Accounts(location, audit_key(keys.store_key)) as accounts:
            assert accounts.authenticate(token) is not None
            assert accounts.usage("mover").numbers == 5
            assert accounts.verify_audit(audit_key(keys.store_key)).intact
            accounts.record(_record("mover", "completed", 5))  # the chain goes on
            assert accounts.verify_audit(audit_key(keys.store_key)).rows == 3
    again = subprocess.run(
        [*NDOP, "store", "copy", sqlite_store, url], capture_output=True, text=True, check=False
    )
    assert again.returncode == 2 and "already holds a store" in again.stderr


def test_a_server_answers_from_a_postgresql_store(postgres: PostgresServer, tmp_path: Path) -> None:
    url = postgres.new_database()
    keys = _keys(tmp_path)
    numbers = valid_numbers(400, "999", seed=41)
    _publish(url, keys, tmp_path / "snap.dat", numbers[:100])
    with Accounts(url, audit_key(keys.store_key)) as accounts:
        token = accounts.add("pg-org", GENEROUS)
    running = start_server(url, keys, "127.0.0.1:0", tls=None, insecure=True, poll_seconds=5)
    try:
        address = f"127.0.0.1:{running.port}"
        cohort = [f"{int(v):010d}" for v in numbers[90:110]]
        expected = [Status.OPTED_OUT] * 10 + [Status.CLEARED] * 10
        with Client(
            address, insecure=True, token=token, purpose="research", cache_dir=tmp_path / "cache"
        ) as client:
            for mode in ("hashed", "private"):
                assert client.check(cohort, mode=mode).statuses == expected
            with Store(url) as store:
                Publisher(store, keys, workers=1).apply_changes(
                    None, write_numbers(tmp_path / "rm.dat", numbers[90:95])
                )
            started = time.monotonic()
            while running.holder.current is None or running.holder.current.version != 2:
                assert time.monotonic() - started < 1.0, "NOTIFY did not reach the server"
                time.sleep(0.01)
            result = client.check(cohort, mode="hashed")
        assert result.register_version == 2
        assert result.statuses == [Status.CLEARED] * 5 + expected[5:]
    finally:
        running.stop(grace=1)
