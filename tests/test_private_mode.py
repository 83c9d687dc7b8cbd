"""Private mode end to end over the real server: the same answers as hashed mode, no false
negatives, one filter download per register version, and a changed OPRF key noticed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import pytest

import ndop_client.replicas as replicas_module
from ndop_client import Client, IntegrityError, Status
from ndop_client.transport import open_channel as transport_open_channel
from ndop_core.nhs_number import check_digit
from ndop_core.proto import ndop_pb2
from ndop_server import keys as keyfile
from ndop_server.accounts import Accounts
from ndop_server.register import Publisher
from ndop_server.server import RunningServer, start_server
from ndop_server.store import Store
from ndop_server.synthetic import hyphenated, spaced, valid_numbers
from tests.conftest import GENEROUS, Register, write_numbers
from tests.relay import Hooks
from tests.relay import relay as relay_to

Metadata = tuple[tuple[str, str], ...]

if TYPE_CHECKING:
    _UnaryStreamInterceptor = grpc.UnaryStreamClientInterceptor[Any, Any]
else:
    _UnaryStreamInterceptor = grpc.UnaryStreamClientInterceptor
GET_FILTER = "/ndop.v1.OptOutRegister/GetFilter"


def _canonical(value: int) -> str:
    return f"{value:010d}"


def _bad_check_digit(value: int) -> str:
    text = _canonical(value)
    return text[:9] + str((int(text[9]) + 1) % 10)


def _check_digit_ten_prefixes(count: int) -> list[str]:
    found = []
    for prefix in range(999_000_000, 999_100_000):
        if check_digit(str(prefix)) is None:
            found.append(str(prefix))
            if len(found) == count:
                return found
    raise AssertionError("no prefix with check digit 10 found")


@dataclass
class Cohort:
    rows: list[str]
    expected: list[Status | None]
    """None for a blank row: never cleared nor opted out, however the SDK names it."""


def _mixed_cohort(register: Register) -> Cohort:
    """Opted out, not opted out, duplicates, other written forms, invalid and blank rows."""
    rng = np.random.default_rng(5)
    opted = register.opted_out.tolist()
    other = register.not_opted_out[:1500].tolist()
    rows: list[tuple[str, Status | None]] = []
    for position, value in enumerate(opted):
        form = (_canonical, spaced, hyphenated)[position % 3](value)
        rows.append((form, Status.OPTED_OUT))
    rows += [(f" {_canonical(v)} ", Status.OPTED_OUT) for v in opted[:50]]  # duplicates
    rows += [(f"{_canonical(v)},", Status.OPTED_OUT) for v in opted[50:80]]  # CfNDO line
    rows += [(_canonical(v), Status.CLEARED) for v in other]
    rows += [(spaced(v), Status.CLEARED) for v in other[:40]]  # duplicates
    rows += [(_bad_check_digit(v), Status.INVALID) for v in opted[:30] + other[:30]]
    rows += [(p + "0", Status.INVALID) for p in _check_digit_ten_prefixes(5)]
    rows += [("999123456", Status.INVALID), ("99912345678", Status.INVALID)]
    rows += [("999ABC4567", Status.INVALID), ("999 123 456X", Status.INVALID)]
    rows += [("", None), ("   ", None)]
    order = rng.permutation(len(rows))
    chosen = [rows[i] for i in order]
    return Cohort([r for r, _ in chosen], [s for _, s in chosen])


class _CountingInterceptor(_UnaryStreamInterceptor):
    """Counts GetFilter calls and the filter bytes they deliver."""

    def __init__(self) -> None:
        self.calls = 0
        self.received = 0

    def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        call = continuation(client_call_details, request)
        if client_call_details.method == GET_FILTER:
            self.calls += 1
            return _CountedChunks(call, self)
        return call


class _CountedChunks:
    def __init__(self, call: Any, counter: _CountingInterceptor) -> None:
        self._call = call
        self._counter = counter

    def __iter__(self) -> _CountedChunks:
        return self

    def __next__(self) -> Any:
        chunk = next(self._call)
        self._counter.received += len(chunk.data)
        return chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


@pytest.fixture
def counter(monkeypatch: pytest.MonkeyPatch) -> _CountingInterceptor:
    """Every Client opened in the test counts its GetFilter calls here."""
    counting = _CountingInterceptor()
    original = transport_open_channel

    def open_channel(*args: Any, **kwargs: Any) -> grpc.Channel:
        return grpc.intercept_channel(original(*args, **kwargs), counting)

    monkeypatch.setattr(replicas_module, "open_channel", open_channel)
    return counting


def _client(address: str, cache: Path, token: str | None = None) -> Client:
    return Client(
        address, insecure=True, purpose="research", workers=2, cache_dir=cache, token=token
    )


@dataclass
class Shared:
    """One register and server for the tests that do not change the register."""

    register: Register
    address: str
    token: str

    @property
    def metadata(self) -> Metadata:
        return (("authorization", f"Bearer {self.token}"),)

    def client(self, cache: Path, address: str | None = None) -> Client:
        return _client(address or self.address, cache, self.token)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    directory = tmp_path_factory.mktemp("private-mode")
    numbers = valid_numbers(3000, "999", seed=11)
    keys_path = directory / "keys.json"
    keys = keyfile.write_new(keys_path)
    store_path = directory / "register.sqlite3"
    with Store(store_path, create=True) as store:
        Publisher(store, keys, workers=2).load_snapshot(
            write_numbers(directory / "snapshot.dat", numbers[:1000])
        )
    with Accounts(store_path) as accounts:
        token = accounts.add("private-org", GENEROUS)
    running = start_server(store_path, keys, "127.0.0.1:0", tls=None, insecure=True)
    try:
        register = Register(keys_path, store_path, keys, numbers[:1000], numbers[1000:])
        yield Shared(register, f"127.0.0.1:{running.port}", token)
    finally:
        running.stop(grace=1)


# --- answers -----------------------------------------------------------------------------


def test_private_and_hashed_agree_on_a_mixed_cohort(shared: Shared, tmp_path: Path) -> None:
    register = shared.register
    cohort = _mixed_cohort(register)
    with shared.client(tmp_path / "cache") as client:
        private = client.check(cohort.rows, mode="private")
        hashed = client.check(cohort.rows, mode="hashed")
    assert private.statuses == hashed.statuses
    for position, (got, wanted) in enumerate(zip(private.statuses, cohort.expected, strict=True)):
        if wanted is None:
            assert got not in (Status.CLEARED, Status.OPTED_OUT), position
        else:
            assert got == wanted, (position, got, wanted)
    assert private.register_version == hashed.register_version == 1
    assert private.register_count == hashed.register_count == len(register.opted_out)
    assert private.cleared == hashed.cleared
    assert private.cleared == [
        r for r, s in zip(cohort.rows, cohort.expected, strict=True) if s is Status.CLEARED
    ]
    invalid = {i for i, s in enumerate(cohort.expected) if s is Status.INVALID}
    blank = {i for i, s in enumerate(cohort.expected) if s is None}
    reported = [row.line for row in private.invalid]
    assert reported == [row.line for row in hashed.invalid]
    assert reported == sorted(reported)
    assert invalid <= set(reported) <= invalid | blank
    assert private.opted_out_count == hashed.opted_out_count == 1080
    assert private.tally.duplicates == hashed.tally.duplicates == 50 + 30 + 40
    assert private.mode == "private" and hashed.mode == "hashed"


def test_private_mode_finds_every_opted_out_number(shared: Shared, tmp_path: Path) -> None:
    register = shared.register
    numbers = [_canonical(v) for v in register.opted_out.tolist()]
    numbers += [_canonical(v) for v in register.not_opted_out.tolist()]
    with shared.client(tmp_path / "cache") as client:
        result = client.check(numbers, mode="private")
    opted = len(register.opted_out)
    assert result.statuses[:opted] == [Status.OPTED_OUT] * opted, "no false negatives"
    # At a false-positive rate of 1e-9, 2,000 others expect 2e-6 false exclusions.
    assert result.statuses[opted:] == [Status.CLEARED] * len(register.not_opted_out)
    assert result.cleared == numbers[opted:]


# --- the filter cache --------------------------------------------------------------------


def _filter_files(cache: Path, register: Register) -> list[Path]:
    directory = cache / register.keys.register_id
    return sorted(p for p in directory.iterdir() if p.is_file()) if directory.exists() else []


def test_filter_file_is_cached_per_version(shared: Shared, tmp_path: Path) -> None:
    register = shared.register
    numbers = [_canonical(v) for v in register.opted_out[:30].tolist()]
    cache = tmp_path / "cache"
    with shared.client(cache) as client:
        client.check(numbers, mode="private")
        files = _filter_files(cache, register)
        assert len(files) == 1 and files[0].name.startswith("v1-")
        before = files[0].stat()
        client.check(numbers, mode="private")
    with shared.client(cache) as fresh:  # a new client reuses the same cache directory
        fresh.check(numbers, mode="private")
    assert _filter_files(cache, register) == files
    after = files[0].stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_size,
    )


def test_second_check_does_not_download_the_filter_again(
    shared: Shared, tmp_path: Path, counter: _CountingInterceptor
) -> None:
    register = shared.register
    numbers = [_canonical(v) for v in register.opted_out[:30].tolist()]
    cache = tmp_path / "cache"
    with shared.client(cache) as client:
        client.check(numbers, mode="private")
        assert counter.calls == 1
        first_download = counter.received
        assert first_download == client.info().filter_size
        second = client.check(numbers, mode="private")
    assert second.statuses == [Status.OPTED_OUT] * 30
    assert counter.received == first_download, (
        f"the second check of version 1 received {counter.received - first_download} more "
        "filter bytes although the filter was cached"
    )
    assert counter.calls == 1, "the second check of the same version called GetFilter again"


def test_new_version_downloads_a_new_filter(
    register: Register, server: RunningServer, address: str, token: str, tmp_path: Path
) -> None:
    numbers = [_canonical(v) for v in register.opted_out[:30].tolist()]
    cache = tmp_path / "cache"
    with _client(address, cache, token) as client:
        assert client.check(numbers, mode="private").register_version == 1
        with Store(register.store_path) as store:
            Publisher(store, register.keys, workers=1).apply_changes(
                None, write_numbers(tmp_path / "remove.dat", register.opted_out[:10])
            )
        deadline = time.monotonic() + 60
        while client.info().version != 2:  # the running server picks the new version up
            assert time.monotonic() < deadline, "the server never served version 2"
            time.sleep(0.05)
        result = client.check(numbers, mode="private")
    assert result.register_version == 2
    assert result.statuses == [Status.CLEARED] * 10 + [Status.OPTED_OUT] * 20
    names = [p.name.split("-")[0] for p in _filter_files(cache, register)]
    assert names == ["v1", "v2"]


# --- a changed OPRF key ------------------------------------------------------------------


@pytest.fixture
def relay(shared: Shared) -> Iterator[tuple[str, Hooks]]:
    hooks = Hooks()
    with relay_to(shared.address, shared.metadata, hooks) as address:
        yield address, hooks


def _other_key_id(register: Register) -> str:
    real = register.keys.oprf_key_id
    return "0" * len(real) if real != "0" * len(real) else "1" * len(real)


def test_relay_without_tampering_gives_the_right_answer(
    shared: Shared, relay: tuple[str, Hooks], tmp_path: Path
) -> None:
    register = shared.register
    relay_address, hooks = relay
    numbers = [_canonical(v) for v in register.opted_out[:20].tolist()]
    numbers += [_canonical(v) for v in register.not_opted_out[:20].tolist()]
    with shared.client(tmp_path / "cache", relay_address) as client:
        result = client.check(numbers, mode="private")
    assert result.statuses == [Status.OPTED_OUT] * 20 + [Status.CLEARED] * 20
    assert hooks.evaluated_counts == [40]


@pytest.mark.parametrize("where", ["evaluated batch", "filter header"])
def test_key_id_mismatch_raises_integrity_error(
    shared: Shared, relay: tuple[str, Hooks], tmp_path: Path, where: str
) -> None:
    register = shared.register
    relay_address, hooks = relay
    other = _other_key_id(register)

    def on_batch(response: ndop_pb2.EvaluateResponse) -> None:
        if response.HasField("batch"):
            response.batch.key_id = other

    def on_chunk(chunk: ndop_pb2.FilterChunk) -> None:
        if chunk.HasField("header"):
            chunk.header.key_id = other

    if where == "evaluated batch":
        hooks.evaluated = on_batch
    else:
        hooks.filter_chunk = on_chunk
    numbers = [_canonical(v) for v in register.opted_out[:20].tolist()]
    numbers += [_canonical(v) for v in register.not_opted_out[:20].tolist()]
    with (
        shared.client(tmp_path / "cache", relay_address) as client,
        pytest.raises(IntegrityError) as caught,
    ):
        client.check(numbers, mode="private")
    message = str(caught.value)
    assert all(n not in message for n in numbers)
