"""Change sets, on both backends: every version derived from its predecessor is byte for byte
what a whole build of its members makes (pybloom-live for the filter), its delta turns the
predecessor's filter into it, a change set that changes nothing publishes nothing, and the
store keeps each kind of artifact for as long as it is meant to."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pybloom_live import BloomFilter as ReferenceBloomFilter

from ndop_core import filter as published
from ndop_core import filter_delta
from ndop_server import filter_builder, version_build
from ndop_server import keys as keyfile
from ndop_server import store as store_module
from ndop_server.filter_counts import BitCounts
from ndop_server.keys import RegisterKeys
from ndop_server.register import Published, Publisher
from ndop_server.store import (
    COUNTS_ARTIFACT,
    DELTA_ARTIFACT,
    FILTER_ARTIFACT,
    INDEX_ARTIFACT,
    Store,
)
from ndop_server.synthetic import valid_numbers
from tests.conftest import write_numbers

ROOT = Path(__file__).resolve().parents[1]


def _members(store: Store) -> tuple[bytes, bytes]:
    """Concatenated tokens and filter keys of the current members, from the entries table."""
    with store.preparation() as preparation:
        entries = list(preparation.live_entries())
    return b"".join(e[1] for e in entries), b"".join(e[2] for e in entries)


def _reference_filter(capacity: int, keys: bytes) -> bytes:
    bloom = ReferenceBloomFilter(capacity=capacity, error_rate=published.FALSE_POSITIVE_RATE)
    for key in filter_builder.hex_keys(keys):
        bloom.add(key.decode("ascii"), skip_check=True)
    buffer = io.BytesIO()
    bloom.tofile(buffer)
    return buffer.getvalue()


def _require_whole_build(store: Store, version: int, previous_filter: bytes | None) -> bytes:
    """The artifacts of `version` are those of a whole build of its members; returns its filter."""
    record = store.record(version)
    assert record is not None and store.latest() == record
    data = store.artifact(version, FILTER_ARTIFACT)
    params = published.FilterParameters.from_header(data)
    tokens, keys = _members(store)
    assert params.count == record.count == len(keys) // published.KEY_BYTES
    assert data == _reference_filter(params.capacity, keys)
    assert hashlib.sha256(data).digest() == record.filter_sha256
    assert store.artifact(version, INDEX_ARTIFACT) == version_build.index_whole(tokens)
    counts, _ = BitCounts.from_slice_values(params, filter_builder.slice_values(params, keys))
    assert store.artifact(version, COUNTS_ARTIFACT) == counts.encode()
    delta = store.artifacts(DELTA_ARTIFACT, version, version).get(version)
    if delta is not None:
        assert previous_filter is not None
        assert filter_delta.apply(previous_filter, delta) == data
    return data


def _capacity(store: Store, version: int) -> int:
    return published.FilterParameters.from_header(store.artifact(version, FILTER_ARTIFACT)).capacity


def test_derived_versions_are_whole_builds(store_location: str, tmp_path: Path) -> None:
    keys = keyfile.write_new(tmp_path / "keys.json")
    numbers = valid_numbers(1400, "999", seed=31)
    first, later = numbers[:1000], numbers[1000:]
    with Store(store_location, create=True) as store:
        publisher = Publisher(store, keys, workers=2)
        publisher.load_snapshot(write_numbers(tmp_path / "v1.dat", first))
        filters = [_require_whole_build(store, 1, None)]
        assert _capacity(store, 1) == 1064

        def apply(name: str, add: np.ndarray, remove: np.ndarray) -> Published:
            published_now = publisher.apply_changes(
                write_numbers(tmp_path / f"{name}-add.dat", add) if len(add) else None,
                write_numbers(tmp_path / f"{name}-remove.dat", remove) if len(remove) else None,
            )
            assert published_now.published
            version = published_now.record.version
            filters.append(_require_whole_build(store, version, filters[-1]))
            return published_now

        def has_delta(version: int) -> bool:
            return version in store.artifacts(DELTA_ARTIFACT, version, version)

        # Balanced, then a net gain within the capacity band: derived, with a delta.
        apply("v2", later[:50], first[:50])
        apply("v3", later[50:80], first[50:60])
        assert _capacity(store, 3) == 1064 and has_delta(2) and has_delta(3)
        # Shrinking past the band: a new capacity, bits move, the filter is built whole.
        shrunk = apply("v4", np.empty(0, dtype=np.int64), first[60:160])
        assert shrunk.record.count == 920 and _capacity(store, 4) == 920 + 64
        assert not has_delta(4)
        # A snapshot reload within the new band is derived too.
        reloaded = publisher.load_snapshot(
            write_numbers(tmp_path / "v5.dat", np.concatenate([first[170:1000], later[:100]]))
        )
        assert reloaded.record.count == 930 and _capacity(store, 5) == 984 and has_delta(5)
        filters.append(_require_whole_build(store, 5, filters[-1]))
        # Counts that no longer match the entries: the next version is built whole, and right.
        with store.db.transaction() as tx:
            tx.run(
                "UPDATE artifacts SET data = ? WHERE version = ? AND kind = ?",
                (b"ndopcnt1" + bytes(16), 5, COUNTS_ARTIFACT),
            )
        apply("v6", later[100:110], first[170:180])
        assert has_delta(6)
        # No counts at all (a store from before they were kept): built whole, still a delta.
        with store.db.transaction() as tx:
            tx.run("DELETE FROM artifacts WHERE kind = ?", (COUNTS_ARTIFACT,))
        apply("v7", later[110:115], first[180:185])
        assert has_delta(7)


def test_nothing_changed_publishes_nothing(store_location: str, tmp_path: Path) -> None:
    keys_path = tmp_path / "keys.json"
    keys = keyfile.write_new(keys_path)
    numbers = valid_numbers(300, "999", seed=32)
    snapshot = write_numbers(tmp_path / "s.dat", numbers[:200])
    with Store(store_location, create=True) as store:
        publisher = Publisher(store, keys, workers=1)
        publisher.load_snapshot(snapshot)
        record = store.latest()
        # Adding members already in and withdrawing numbers never in: nothing changes.
        again = publisher.apply_changes(
            write_numbers(tmp_path / "a.dat", numbers[:20]),
            write_numbers(tmp_path / "r.dat", numbers[250:260]),
        )
        assert not again.published and again.record == record and again.unchanged == 30
        reloaded = publisher.load_snapshot(snapshot)
        assert not reloaded.published and reloaded.unchanged == 200
        assert [r.version for r in store.history()] == [1]
    command = [sys.executable, "-m", "ndop_client.cli.main", "register", "apply"]
    command += ["--add", str(tmp_path / "a.dat"), "--store", store_location]
    command += ["--keys", str(keys_path), "--workers", "1"]
    ran = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == [
        "nothing changed (20 unchanged): no version published, register version 1 stays "
        "current with 200 opted out"
    ]
    with Store(store_location) as store:
        assert store.latest_number() == 1


def test_the_store_keeps_each_kind_as_long_as_it_should(
    store_location: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(store_module.KEPT, DELTA_ARTIFACT, 4)
    keys = keyfile.write_new(tmp_path / "keys.json")
    numbers = valid_numbers(160, "999", seed=33)
    with Store(store_location, create=True) as store:
        publisher = Publisher(store, keys, workers=1)
        publisher.load_snapshot(write_numbers(tmp_path / "s.dat", numbers[:100]))
        for i in range(7):
            publisher.apply_changes(
                write_numbers(tmp_path / f"a{i}.dat", numbers[100 + i : 101 + i]),
                write_numbers(tmp_path / f"r{i}.dat", numbers[i : i + 1]),
            )
        with store.db.transaction() as tx:
            rows = tx.all("SELECT kind, version FROM artifacts ORDER BY kind, version")
    held: dict[str, list[int]] = {}
    for kind, version in rows:
        held.setdefault(kind, []).append(int(version))
    assert held == {
        INDEX_ARTIFACT: [6, 7, 8],
        FILTER_ARTIFACT: [6, 7, 8],
        COUNTS_ARTIFACT: [8],
        DELTA_ARTIFACT: [5, 6, 7, 8],
    }


def test_a_first_empty_snapshot_is_still_a_version(tmp_path: Path) -> None:
    """No version and an empty one differ (a server serves only once one exists)."""
    keys: RegisterKeys = keyfile.write_new(tmp_path / "keys.json")
    empty = tmp_path / "empty.dat"
    empty.write_text("")
    with Store(tmp_path / "r.sqlite3", create=True) as store:
        publisher = Publisher(store, keys, workers=1)
        first = publisher.load_snapshot(empty)
        assert first.published and (first.record.version, first.record.count) == (1, 0)
        assert not publisher.load_snapshot(empty).published
        data = store.artifact(1, FILTER_ARTIFACT)
    assert data == _reference_filter(64, b"")
