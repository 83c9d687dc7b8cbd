"""Register versions: snapshots and change sets, history, store binding, what the store file
holds (never an NHS number nor a hashed-mode digest) and crash safety of a load."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Final

import numpy as np
import pytest

from ndop_client import Client, Status
from ndop_client.cli.main import main as ndop_main
from ndop_core.crypto import oprf
from ndop_core.hashing import DIGEST_SIZE, Hasher
from ndop_core.nhs_number import canonical_bytes
from ndop_server.errors import ConfigurationError, StoreError
from ndop_server.keys import RegisterKeys
from ndop_server.register import INDEX_ARTIFACT, Publisher
from ndop_server.register_view import RegisterView, load_view
from ndop_server.server import start_server
from ndop_server.store import Store
from ndop_server.synthetic import hyphenated, spaced, valid_numbers
from ndop_server.tokens import TOKEN_SIZE, Tokenizer, index_keys
from tests.conftest import Register, write_numbers

REPO = Path(__file__).resolve().parent.parent


def _ndop(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ndop_client.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def _members(register: Register, view: RegisterView, values: np.ndarray) -> np.ndarray:
    """Which of `values` the view holds, looked up the way the server looks up digests."""
    digests = Hasher(register.keys.salt).digest_packed(canonical_bytes(values))
    tokens = Tokenizer(register.keys.store_key).tokens(digests, DIGEST_SIZE)
    members = view.members(index_keys(tokens))
    assert len(members) == len(values)
    return np.asarray(members, dtype=bool)


def _view(register: Register, version: int | None = None) -> RegisterView:
    with Store(register.store_path) as store:
        records = {r.version: r for r in store.history(100)}
        record = records[version if version is not None else max(records)]
        return load_view(store, record)


def _info_json(capsys: pytest.CaptureFixture[str], store_path: Path) -> dict[str, object]:
    capsys.readouterr()
    assert ndop_main(["register", "info", "--store", str(store_path), "--json"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert isinstance(parsed, dict)
    return parsed


# --- versions and history ----------------------------------------------------------------


def test_snapshot_then_changes_counts_and_history(
    register: Register, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    opted, other = register.opted_out, register.not_opted_out
    add = write_numbers(tmp_path / "add.dat", np.concatenate([other[:150], opted[:20]]))
    remove = write_numbers(
        tmp_path / "remove.dat", np.concatenate([opted[100:300], other[500:510]])
    )

    applied = _ndop(
        "register",
        "apply",
        "--add",
        add,
        "--remove",
        remove,
        "--store",
        register.store_path,
        "--keys",
        register.keys_path,
        "--workers",
        "1",
        "--log-format",
        "json",
    )
    assert applied.returncode == 0, applied.stderr
    assert "published register version 2: 950 opted out (+150 -200, 30 unchanged)" in applied.stdout

    with Store(register.store_path) as store:
        publisher = Publisher(store, register.keys, workers=1)
        v3 = publisher.apply_changes(None, write_numbers(tmp_path / "r3.dat", opted[:10]))
        v4 = publisher.apply_changes(write_numbers(tmp_path / "a4.dat", opted[100:150]), None)
    assert (v3.record.version, v3.record.count, v3.record.added, v3.record.removed) == (
        3,
        940,
        0,
        10,
    )
    assert (v4.record.version, v4.record.count, v4.record.added, v4.record.removed) == (
        4,
        990,
        50,
        0,
    )

    info = _info_json(capsys, register.store_path)
    assert info["register_id"] == register.keys.register_id
    versions = info["versions"]
    assert isinstance(versions, list)
    summary = [(v["version"], v["count"], v["added"], v["removed"], v["source"]) for v in versions]
    assert summary == [
        (4, 990, 50, 0, "changes"),
        (3, 940, 0, 10, "changes"),
        (2, 950, 150, 200, "changes"),
        (1, 1000, 1000, 0, "snapshot"),
    ]
    stamps = [v["published_at"] for v in reversed(versions)]
    assert stamps == sorted(stamps)

    assert ndop_main(["register", "info", "--store", str(register.store_path)]) == 0
    text = capsys.readouterr().out
    assert register.keys.register_id in text
    assert all(f"{n:,}" in text for n in (990, 940, 950))

    final = _view(register)
    expected = np.ones(len(opted), dtype=bool)
    expected[:10] = False  # removed in v3
    expected[150:300] = False  # removed in v2, 100..149 re-added in v4
    assert _members(register, final, opted).tolist() == expected.tolist()
    expected_other = np.zeros(len(other), dtype=bool)
    expected_other[:150] = True
    assert _members(register, final, other).tolist() == expected_other.tolist()
    # An older version still answers with its own membership.
    v2 = _view(register, 2)
    assert _members(register, v2, opted[100:300]).sum() == 0
    assert _members(register, v2, opted[:100]).all()


def test_snapshot_reload_with_partial_overlap(register: Register, tmp_path: Path) -> None:
    opted, other = register.opted_out, register.not_opted_out
    rows = [f"{v:010d}," for v in opted[500:].tolist()]
    rows += [f"{spaced(v)}," for v in other[:300].tolist()]
    rows += [f"{v:010d}," for v in opted[600:610].tolist()]  # duplicates
    rows += ["9990000000,", "12345,", ""]  # the first two are invalid, the last blank
    snapshot = tmp_path / "second.dat"
    snapshot.write_text("\n".join(rows) + "\n")

    with Store(register.store_path) as store:
        published = Publisher(store, register.keys, workers=1).load_snapshot(snapshot)
    record = published.record
    assert (record.version, record.count, record.added, record.removed) == (2, 800, 300, 500)
    assert record.source == "snapshot"
    assert published.unchanged == 500
    assert published.duplicates == 10
    assert [row.line for row in published.invalid] == [len(rows) - 2, len(rows) - 1]

    latest = _view(register)
    assert _members(register, latest, opted[:500]).sum() == 0
    assert _members(register, latest, opted[500:]).all()
    assert _members(register, latest, other[:300]).all()
    assert _members(register, latest, other[300:]).sum() == 0
    first = _view(register, 1)
    assert _members(register, first, opted).all()
    assert _members(register, first, other).sum() == 0

    # The same snapshot again changes nothing: no version is published, version 2 stays.
    with Store(register.store_path) as store:
        again = Publisher(store, register.keys, workers=1).load_snapshot(snapshot)
        assert store.latest() == record
    assert not again.published
    assert again.record == record
    assert again.unchanged == 800


def test_number_in_both_add_and_remove_is_refused(register: Register, tmp_path: Path) -> None:
    opted, other = register.opted_out, register.not_opted_out
    add = tmp_path / "add.txt"
    add.write_text(f"{other[0]:010d}\n{hyphenated(int(opted[5]))}\n")
    remove = write_numbers(tmp_path / "remove.dat", opted[:10])
    with Store(register.store_path) as store:
        with pytest.raises(ConfigurationError):
            Publisher(store, register.keys, workers=1).apply_changes(add, remove)
        with pytest.raises(ConfigurationError):
            Publisher(store, register.keys, workers=1).apply_changes(None, None)
        latest = store.latest()
    assert latest is not None and (latest.version, latest.count) == (1, 1000)

    refused = _ndop(
        "register",
        "apply",
        "--add",
        add,
        "--remove",
        remove,
        "--store",
        register.store_path,
        "--keys",
        register.keys_path,
        "--workers",
        "1",
    )
    assert refused.returncode == 2
    assert "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert f"{int(opted[5]):010d}" not in refused.stderr
    assert hyphenated(int(opted[5])) not in refused.stderr


def test_store_refuses_keys_of_another_register(register: Register, tmp_path: Path) -> None:
    other_keys = RegisterKeys.generate()
    snapshot = write_numbers(tmp_path / "s.dat", register.not_opted_out[:10])
    with Store(register.store_path) as store, pytest.raises(StoreError):
        Publisher(store, other_keys, workers=1).load_snapshot(snapshot)
    with pytest.raises(ConfigurationError):
        start_server(register.store_path, other_keys, "127.0.0.1:0", tls=None, insecure=True)
    with Store(register.store_path) as store:
        assert store.register_id() == register.keys.register_id
        latest = store.latest()
    assert latest is not None and latest.version == 1


# --- what the store holds ----------------------------------------------------------------


def _store_files(store_path: Path) -> dict[str, bytes]:
    files = {}
    for suffix in ("", "-wal", "-shm", "-journal"):
        path = Path(f"{store_path}{suffix}")
        if path.exists():
            files[path.name] = path.read_bytes()
    return files


_DIGIT_RUNS: Final = (
    re.compile(rb"(?=(\d{10}))"),  # canonical
    re.compile(rb"(?=(\d{3}[ -]\d{3}[ -]\d{4}))"),  # spaced or hyphenated
    re.compile(rb"(?=((?:\d\x00){10}))"),  # UTF-16-LE
)


def _written_numbers(data: bytes) -> set[int]:
    """Every NHS-number-shaped text in `data`, in any of the forms people write them."""
    found: set[int] = set()
    for pattern in _DIGIT_RUNS:
        for match in pattern.finditer(data):
            digits = bytes(c for c in match.group(1) if 0x30 <= c <= 0x39)
            found.add(int(digits))
    return found


def _eight_byte_windows(data: bytes) -> np.ndarray:
    """Every 8-byte window of `data` (at every offset) as a little-endian 64-bit integer."""
    parts = [
        np.frombuffer(data, dtype="<u8", count=(len(data) - k) // 8, offset=k)
        for k in range(min(8, len(data)))
    ]
    return np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype="<u8")


def _binary_forms(values: np.ndarray, digests: bytes) -> np.ndarray:
    """The numbers as 64-bit integers (either byte order) and every 8-byte part of each digest,
    as little-endian 64-bit integers."""
    little = values.astype("<u8")
    big = np.frombuffer(values.astype(">u8").tobytes(), dtype="<u8")
    return np.concatenate([little, big, np.frombuffer(digests, dtype="<u8")])


def test_store_file_holds_no_number_nor_digest(
    register: Register, address: str, tmp_path: Path
) -> None:
    opted, other = register.opted_out, register.not_opted_out
    checked = np.concatenate([opted[:300], other[1000:1300]])
    # Checks leave audit and usage rows in the same file: they must not identify anyone.
    with Client(address, insecure=True, purpose="research") as client:
        result = client.check([f"{v:010d}" for v in checked.tolist()], mode="hashed")
    assert result.opted_out_count == 300
    reader = Store(register.store_path)  # keeps the WAL file in place while the change commits
    try:
        with Store(register.store_path) as store:
            Publisher(store, register.keys, workers=1).apply_changes(
                write_numbers(tmp_path / "a.dat", other[:200]),
                write_numbers(tmp_path / "r.dat", opted[:100]),
            )
        files = _store_files(register.store_path)
    finally:
        reader.close()
    assert files.get("register.sqlite3-wal"), "the test must see the WAL file too"

    seen = np.unique(np.concatenate([opted, other[:200], checked]))
    digests = Hasher(register.keys.salt).digest_packed(canonical_bytes(seen))
    forbidden = _binary_forms(seen, digests)
    assert len(forbidden) == 2 * len(seen) + 4 * len(seen)
    for name, data in files.items():
        written = _written_numbers(data) & set(seen.tolist())
        assert not written, f"{name} holds {len(written)} NHS numbers as text"
        hits = np.isin(forbidden, _eight_byte_windows(data)).sum()
        assert hits == 0, f"{name} holds {hits} numbers or digest parts in binary"


def test_store_copy_without_keys_cannot_be_matched(register: Register, tmp_path: Path) -> None:
    copy = tmp_path / "copy.sqlite3"
    with sqlite3.connect(register.store_path) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    with sqlite3.connect(copy) as db:
        rows = db.execute(
            "SELECT token, filter_key FROM entries WHERE removed_in IS NULL"
        ).fetchall()
        index_blob = db.execute(
            "SELECT data FROM artifacts WHERE kind = ? ORDER BY version DESC", (INDEX_ARTIFACT,)
        ).fetchone()[0]
    tokens = {bytes(r[0]) for r in rows}
    filter_keys = {bytes(r[1]) for r in rows}
    assert len(tokens) == len(register.opted_out)

    # What anyone can compute from the public salt: the hashed-mode digests.
    digests = Hasher(register.keys.salt).digest_packed(canonical_bytes(register.opted_out))
    parts = {digests[i : i + TOKEN_SIZE] for i in range(0, len(digests), TOKEN_SIZE)}
    assert not tokens & parts, "store tokens must not be (parts of) digests"
    index = set(np.frombuffer(index_blob, dtype="<u8").tolist())
    assert not index & set(index_keys(digests[: len(digests)]).tolist())
    digest_prefixes = set(np.frombuffer(digests, dtype="<u8")[::4].tolist())
    assert not index & digest_prefixes, "the index must not be searchable with bare digests"

    # A guessed store key matches nothing; only the real one does.
    guessed = Tokenizer(os.urandom(32)).tokens(digests, 32)
    assert not tokens & {guessed[i : i + TOKEN_SIZE] for i in range(0, len(guessed), TOKEN_SIZE)}
    real = Tokenizer(register.keys.store_key).tokens(digests, 32)
    assert tokens == {real[i : i + TOKEN_SIZE] for i in range(0, len(real), TOKEN_SIZE)}

    # Filter keys are OPRF outputs: a guessed OPRF key gives none of them.
    sample = [f"{v:010d}".encode() for v in register.opted_out[:50].tolist()]
    wrong = {out[:32] for out in oprf.evaluate_input_batch(oprf.generate_secret_key(), sample)}
    right = {out[:32] for out in oprf.evaluate_input_batch(register.keys.oprf_key, sample)}
    assert not filter_keys & wrong
    assert right <= filter_keys


# --- crash safety ------------------------------------------------------------------------


def _stderr_events(process: subprocess.Popen[str]) -> queue.Queue[dict[str, object] | None]:
    events: queue.Queue[dict[str, object] | None] = queue.Queue()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            try:
                parsed = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(parsed, dict):
                events.put(parsed)
        events.put(None)

    threading.Thread(target=read, daemon=True).start()
    return events


# Runs `ndop` with Publication.finish wrapped: every write of the new version is done, then
# the process is killed before the transaction commits.
_KILL_BEFORE_COMMIT = """
import os, signal, sys
from ndop_server import store
original = store.Publication.finish
def finish(self, *args, **kwargs):
    original(self, *args, **kwargs)
    sys.stderr.write('{"event": "test.killing_before_commit"}\\n')
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
store.Publication.finish = finish
from ndop_client.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("crash", ["while evaluating", "before commit"])
def test_killed_load_leaves_previous_version(
    register: Register,
    token: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    crash: str,
) -> None:
    if crash == "while evaluating":
        size, program, wanted = 80_000, ["-m", "ndop_client.cli.main"], "evaluating"
    else:
        size, program, wanted = 8_000, ["-c", _KILL_BEFORE_COMMIT], "test.killing_before_commit"
    snapshot = write_numbers(tmp_path / "big.dat", valid_numbers(size, "999", seed=404))
    arguments = ["register", "load", str(snapshot), "--store", str(register.store_path)]
    arguments += ["--keys", str(register.keys_path), "--workers", "1", "--log-format", "json"]
    process = subprocess.Popen(
        [sys.executable, *program, *arguments],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,
    )
    seen: list[dict[str, object]] = []
    try:
        events = _stderr_events(process)
        while True:
            event = events.get(timeout=120)
            if event is None:
                pytest.fail(f"the load ended before {wanted!r}: {seen}")
            seen.append(event)
            if event.get("stage", event.get("event")) == wanted:
                break
    finally:
        # The whole session: the CLI and the worker processes it spawned.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert not any(e.get("event") == "register.published" for e in seen)

    with Store(register.store_path) as store:
        latest = store.latest()
        assert latest is not None
        assert (latest.version, latest.count) == (1, len(register.opted_out))
        assert [r.version for r in store.history()] == [1]
        assert store.latest_number() == 1
    info = _info_json(capsys, register.store_path)
    versions = info["versions"]
    assert isinstance(versions, list) and [v["version"] for v in versions] == [1]

    running = start_server(
        register.store_path, register.keys, "127.0.0.1:0", tls=None, insecure=True, poll_seconds=0.1
    )
    try:
        with Client(f"127.0.0.1:{running.port}", insecure=True, purpose="research") as client:
            served = client.info()
            assert (served.version, served.count) == (1, len(register.opted_out))
            numbers = [f"{v:010d}" for v in register.opted_out[:20].tolist()]
            numbers += [f"{v:010d}" for v in register.not_opted_out[:20].tolist()]
            result = client.check(numbers, mode="hashed")
        assert result.statuses == [Status.OPTED_OUT] * 20 + [Status.CLEARED] * 20
        assert result.register_version == 1
    finally:
        running.stop(grace=1)

    small = write_numbers(tmp_path / "small.dat", register.opted_out[:500])
    with Store(register.store_path) as store:
        published = Publisher(store, register.keys, workers=1).load_snapshot(small)
    assert (published.record.version, published.record.count) == (2, 500)
    assert (published.record.added, published.record.removed) == (0, 500)
    assert _members(register, _view(register), register.opted_out[:500]).all()
    assert _members(register, _view(register), register.opted_out[500:]).sum() == 0
