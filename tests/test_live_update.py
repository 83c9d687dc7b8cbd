"""A register version published while checks are in flight, and filters that arrive damaged.

A check that started on version v is answered from v to the end, whatever is published
meanwhile; the server picks the new version up without a restart; later checks name it.
A private-mode filter is trusted only when its digest matches: a damaged cached file is
downloaded again, a damaged download is refused and leaves nothing in the cache.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import pytest

import ndop_client.replicas as replicas_module
from ndop_client import Client, IntegrityError, RequestRejected, Status
from ndop_client.filter_cache import fetch_filter
from ndop_client.transport import open_channel as transport_open_channel
from ndop_core import filter as published_filter
from ndop_core.hashing import DIGEST_SIZE, Hasher
from ndop_core.nhs_number import canonical_bytes
from ndop_core.proto import ndop_pb2, ndop_pb2_grpc
from ndop_server import keys as keyfile
from ndop_server.register import FILTER_ARTIFACT, Publisher
from ndop_server.register_view import RegisterHolder
from ndop_server.server import RunningServer
from ndop_server.store import Store
from ndop_server.synthetic import valid_numbers
from tests.conftest import Register, write_numbers

TIMEOUT = 60.0
BATCH = 8192
Metadata = tuple[tuple[str, str], ...]

if TYPE_CHECKING:
    _StreamStreamInterceptor = grpc.StreamStreamClientInterceptor[Any, Any]
else:
    _StreamStreamInterceptor = grpc.StreamStreamClientInterceptor


# --- helpers -----------------------------------------------------------------------------


@dataclass
class Change:
    """The change set published mid-check: version 1 -> version 2."""

    removed: np.ndarray
    added: np.ndarray

    def v1(self, register: Register) -> set[int]:
        return set(register.opted_out.tolist())

    def v2(self, register: Register) -> set[int]:
        return (self.v1(register) - set(self.removed.tolist())) | set(self.added.tolist())


def _change(register: Register) -> Change:
    return Change(removed=register.opted_out[:300], added=register.not_opted_out[:200])


def _publish(register: Register, change: Change, directory: Path) -> None:
    add = write_numbers(directory / "add-v2.dat", change.added)
    remove = write_numbers(directory / "remove-v2.dat", change.removed)
    with Store(register.store_path) as store:
        published = Publisher(store, register.keys, workers=1).apply_changes(add, remove)
    assert published.record.version == 2


def test_a_failed_refresh_does_not_stop_the_watcher(
    register: Register, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh that fails with something other than an unreachable store is logged and
    tried again; the next publication is still picked up."""
    holder = RegisterHolder(register.store_path, poll_seconds=0.05)
    try:
        read_latest = holder._store.latest
        failures = [ValueError("an artifact that cannot be read")]

        def latest(*args: Any) -> Any:
            if failures:
                raise failures.pop()
            return read_latest(*args)

        monkeypatch.setattr(holder._store, "latest", latest)
        holder.start()
        deadline = time.monotonic() + TIMEOUT
        while failures and time.monotonic() < deadline:
            time.sleep(0.02)
        _publish(register, _change(register), tmp_path)
        while time.monotonic() < deadline:
            current = holder.current
            if current is not None and current.version == 2:
                break
            time.sleep(0.02)
        assert not failures
        assert holder.current is not None and holder.current.version == 2
    finally:
        holder.stop()


def _served_version(address: str, metadata: Metadata) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = ndop_pb2_grpc.OptOutRegisterStub(channel)
        info = stub.GetRegisterInfo(
            ndop_pb2.GetRegisterInfoRequest(), metadata=metadata, timeout=TIMEOUT
        )
        return int(info.version.number)


def _wait_until_served(address: str, metadata: Metadata, version: int) -> None:
    """Poll GetRegisterInfo until the running server answers from `version` (no restart)."""
    deadline = time.monotonic() + TIMEOUT
    while _served_version(address, metadata) != version:
        if time.monotonic() > deadline:
            pytest.fail(f"the server never picked up register version {version}")
        time.sleep(0.05)


def _cohort(register: Register, extra: int, seed: int) -> np.ndarray:
    every = np.concatenate(
        [register.opted_out, register.not_opted_out, valid_numbers(extra, "999", seed=seed)]
    )
    rng = np.random.default_rng(seed)
    unique = np.unique(every)
    rng.shuffle(unique)
    return unique


def _expected(cohort: np.ndarray, members: set[int]) -> list[Status]:
    return [Status.OPTED_OUT if v in members else Status.CLEARED for v in cohort.tolist()]


def _receipt_version(receipt: Any) -> int:
    assert receipt is not None and receipt.body, "the check must be answered with a receipt"
    return int(ndop_pb2.ReceiptBody.FromString(receipt.body).register_version)


class _RecordedCall:
    """A response stream that tells `on_response` about every message, otherwise the call."""

    def __init__(self, call: Any, on_response: Callable[[Any], None]) -> None:
        self._call = call
        self._on_response = on_response

    def __iter__(self) -> _RecordedCall:
        return self

    def __next__(self) -> Any:
        response = next(self._call)
        self._on_response(response)
        return response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


@dataclass
class PublishMidCheck(_StreamStreamInterceptor):
    """Holds back the second batch of a check until its first batch has been answered and a
    new version has been published and picked up by the server."""

    publish: Callable[[], None]
    responses: list[Any] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    fired: bool = False
    _answered: threading.Event = field(default_factory=threading.Event)

    def _record(self, response: Any) -> None:
        self.responses.append(response)
        if response.HasField("batch"):
            self._answered.set()

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        def requests() -> Iterator[Any]:
            for request in request_iterator:
                payload = getattr(request, "digests", b"") or getattr(
                    request, "blinded_elements", b""
                )
                if payload and request.batch_id == 1 and not self.fired:
                    self.fired = True
                    try:
                        if not self._answered.wait(TIMEOUT):
                            raise AssertionError("the first batch was never answered")
                        self.publish()
                    except BaseException as exc:
                        self.errors.append(exc)
                        raise
                yield request

        return _RecordedCall(continuation(client_call_details, requests()), self._record)


@pytest.fixture
def intercepted(
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[_StreamStreamInterceptor], None]:
    """Make every Client opened from now on use `interceptor` on its channel."""

    def install(interceptor: _StreamStreamInterceptor) -> None:
        original = transport_open_channel

        def open_channel(*args: Any, **kwargs: Any) -> grpc.Channel:
            return grpc.intercept_channel(original(*args, **kwargs), interceptor)

        monkeypatch.setattr(replicas_module, "open_channel", open_channel)

    return install


# --- hashed mode -------------------------------------------------------------------------


def test_hashed_stream_keeps_its_version_while_a_new_one_is_published(
    register: Register,
    server: RunningServer,
    address: str,
    auth_metadata: Metadata,
    tmp_path: Path,
) -> None:
    cohort = _cohort(register, 200_000, seed=21)
    digests = Hasher(register.keys.salt).digest_packed(canonical_bytes(cohort))
    bounds = [(s, min(s + BATCH, len(cohort))) for s in range(0, len(cohort), BATCH)]
    assert len(bounds) > 3
    change = _change(register)

    outgoing: queue.Queue[ndop_pb2.HashedCheckRequest | None] = queue.Queue()

    def requests() -> Iterator[ndop_pb2.HashedCheckRequest]:
        while (request := outgoing.get()) is not None:
            yield request

    def send(batch_id: int) -> None:
        start, end = bounds[batch_id]
        outgoing.put(
            ndop_pb2.HashedCheckRequest(
                batch_id=batch_id, digests=digests[start * DIGEST_SIZE : end * DIGEST_SIZE]
            )
        )

    with grpc.insecure_channel(address) as channel:
        stub = ndop_pb2_grpc.OptOutRegisterStub(channel)
        call = stub.CheckHashed(requests(), metadata=auth_metadata, timeout=TIMEOUT)
        try:
            outgoing.put(
                ndop_pb2.HashedCheckRequest(
                    context=ndop_pb2.CheckContext(purpose="research", request_id=str(uuid.uuid4()))
                )
            )
            send(0)
            answers = [next(call)]
            assert answers[0].batch.register_version == 1

            _publish(register, change, tmp_path)
            _wait_until_served(address, auth_metadata, 2)

            for batch_id in range(1, len(bounds)):
                send(batch_id)
                answers.append(next(call))
            outgoing.put(None)
            answers.extend(call)
        except BaseException:
            call.cancel()
            raise

    batches = [a.batch for a in answers if a.HasField("batch")]
    summaries = [a.summary for a in answers if a.HasField("summary")]
    assert [b.batch_id for b in batches] == list(range(len(bounds)))
    assert {b.register_version for b in batches} == {1}
    assert len(summaries) == 1
    assert summaries[0].register_version == 1
    assert summaries[0].register_count == len(register.opted_out)
    assert summaries[0].items_checked == len(cohort)

    opted_out = np.zeros(len(cohort), dtype=bool)
    for batch, (start, end) in zip(batches, bounds, strict=True):
        assert batch.count == end - start
        opted_out[start:end] = np.unpackbits(
            np.frombuffer(batch.opted_out, dtype=np.uint8), count=end - start, bitorder="little"
        ).astype(bool)
    v1 = change.v1(register)
    assert opted_out.tolist() == [v in v1 for v in cohort.tolist()]
    assert summaries[0].items_opted_out == len(v1)
    assert _receipt_version(summaries[0].receipt) == 1

    numbers = [f"{v:010d}" for v in cohort[:20_000].tolist()]
    with Client(address, insecure=True, purpose="research") as client:
        later = client.check(numbers, mode="hashed")
    assert later.register_version == 2
    assert later.statuses == _expected(cohort[:20_000], change.v2(register))


def test_sdk_hashed_check_spanning_a_publication(
    register: Register,
    server: RunningServer,
    address: str,
    auth_metadata: Metadata,
    tmp_path: Path,
    intercepted: Callable[[_StreamStreamInterceptor], None],
) -> None:
    cohort = _cohort(register, 200_000, seed=22)
    change = _change(register)

    def publish() -> None:
        _publish(register, change, tmp_path)
        _wait_until_served(address, auth_metadata, 2)

    interceptor = PublishMidCheck(publish)
    intercepted(interceptor)
    numbers = [f"{v:010d}" for v in cohort.tolist()]
    with Client(address, insecure=True, purpose="research") as client:
        result = client.check(numbers, mode="hashed")
    assert interceptor.fired and not interceptor.errors
    assert _served_version(address, auth_metadata) == 2
    batches = [r.batch for r in interceptor.responses if r.HasField("batch")]
    assert len(batches) > 1
    assert {b.register_version for b in batches} == {1}
    assert result.register_version == 1
    assert result.statuses == _expected(cohort, change.v1(register))
    assert _receipt_version(result.receipt) == 1


# --- private mode ------------------------------------------------------------------------


def test_private_check_uses_one_filter_version_across_a_publication(
    register: Register,
    server: RunningServer,
    address: str,
    auth_metadata: Metadata,
    tmp_path: Path,
    intercepted: Callable[[_StreamStreamInterceptor], None],
) -> None:
    cohort = _cohort(register, 3_500, seed=23)
    change = _change(register)

    def publish() -> None:
        _publish(register, change, tmp_path)
        _wait_until_served(address, auth_metadata, 2)

    interceptor = PublishMidCheck(publish)
    intercepted(interceptor)
    numbers = [f"{v:010d}" for v in cohort.tolist()]
    cache = tmp_path / "cache"
    with Client(address, insecure=True, purpose="research", workers=2, cache_dir=cache) as client:
        during = client.check(numbers, mode="private")
        assert interceptor.fired and not interceptor.errors
        batches = [r.batch for r in interceptor.responses if r.HasField("batch")]
        assert len(batches) > 1
        # The result says which filter version it was computed against, and matches it.
        assert during.register_version == 1
        assert during.register_count == len(register.opted_out)
        assert during.statuses == _expected(cohort, change.v1(register))
        assert _receipt_version(during.receipt) == 1

        after = client.check(numbers, mode="private")
    assert after.register_version == 2
    assert after.register_count == len(change.v2(register))
    assert after.statuses == _expected(cohort, change.v2(register))
    assert _receipt_version(after.receipt) == 2
    cached = sorted(p.name for p in (cache / register.keys.register_id).iterdir())
    assert [name.split("-")[0] for name in cached] == ["v1", "v2"]


# --- damaged filters ---------------------------------------------------------------------


def _cached_path(cache: Path, register: Register, info: Any) -> Path:
    return (
        cache / register.keys.register_id / f"v{info.version}-{info.filter_sha256.hex()[:32]}.bloom"
    )


def test_corrupted_cached_filter_is_downloaded_again(
    register: Register, server: RunningServer, address: str, tmp_path: Path
) -> None:
    numbers = [f"{v:010d}" for v in register.opted_out[:100].tolist()]
    numbers += [f"{v:010d}" for v in register.not_opted_out[:100].tolist()]
    expected = [Status.OPTED_OUT] * 100 + [Status.CLEARED] * 100
    cache = tmp_path / "cache"
    with Client(address, insecure=True, purpose="research", workers=2, cache_dir=cache) as client:
        info = client.info()
        path = _cached_path(cache, register, info)
        assert client.check(numbers, mode="private").statuses == expected
        assert path.is_file(), "the filter is cached under its version and digest"
        genuine = path.read_bytes()
        assert hashlib.sha256(genuine).digest() == info.filter_sha256

        # A filter of the same shape holding nothing: trusted, it would clear everyone.
        header = published_filter.HEADER.size
        path.write_bytes(genuine[:header] + bytes(len(genuine) - header))
        assert client.check(numbers, mode="private").statuses == expected
        assert path.read_bytes() == genuine

        flipped = bytearray(genuine)
        flipped[len(flipped) // 2] ^= 0x10
        path.write_bytes(bytes(flipped))
        assert client.check(numbers, mode="private").statuses == expected
        assert path.read_bytes() == genuine

        path.write_bytes(genuine[: len(genuine) // 2])
        assert client.check(numbers, mode="private").statuses == expected
        assert path.read_bytes() == genuine


class _FilterServer(ndop_pb2_grpc.OptOutRegisterServicer):  # type: ignore[misc]
    """Serves one filter as the chunks a test chooses."""

    def __init__(self, header: Any, chunks: list[tuple[int, bytes]]) -> None:
        self.header = header
        self.chunks = chunks

    def GetFilter(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        for index, (offset, data) in enumerate(self.chunks):
            yield ndop_pb2.FilterChunk(
                header=self.header if index == 0 else None, offset=offset, data=data
            )


@dataclass
class RealFilter:
    register_id: str
    version: int
    header: Any
    data: bytes

    def chunks(self, size: int) -> list[tuple[int, bytes]]:
        return [(o, self.data[o : o + size]) for o in range(0, len(self.data), size)]


@pytest.fixture(scope="module")
def real_filter(tmp_path_factory: pytest.TempPathFactory) -> RealFilter:
    """A genuine published filter, built once for the tests that damage it."""
    directory = tmp_path_factory.mktemp("real-filter")
    keys = keyfile.write_new(directory / "keys.json")
    snapshot = write_numbers(directory / "s.dat", valid_numbers(1000, "999", seed=31))
    with Store(directory / "register.sqlite3", create=True) as store:
        Publisher(store, keys, workers=1).load_snapshot(snapshot)
        record = store.latest()
        assert record is not None
        data = store.artifact(record.version, FILTER_ARTIFACT)
    header = ndop_pb2.FilterHeader(
        register_version=record.version,
        count=record.count,
        key_id=record.key_id,
        filter_scheme=published_filter.SCHEME,
        size=len(data),
        sha256=hashlib.sha256(data).digest(),
        false_positive_rate=published_filter.FALSE_POSITIVE_RATE,
    )
    assert header.sha256 == record.filter_sha256
    return RealFilter(keys.register_id, record.version, header, data)


@pytest.fixture
def fake_server() -> Iterator[tuple[_FilterServer, Any]]:
    servicer = _FilterServer(ndop_pb2.FilterHeader(), [])
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    ndop_pb2_grpc.add_OptOutRegisterServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield servicer, ndop_pb2_grpc.OptOutRegisterStub(channel)
    finally:
        channel.close()
        server.stop(None)


def _files(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []


def test_fetch_filter_accepts_an_intact_filter(
    fake_server: tuple[_FilterServer, Any], real_filter: RealFilter, tmp_path: Path
) -> None:
    servicer, stub = fake_server
    servicer.header = real_filter.header
    servicer.chunks = real_filter.chunks(1000)
    assert len(servicer.chunks) > 2
    cache = tmp_path / "cache"
    fetched = fetch_filter(stub, cache, real_filter.register_id, real_filter.version, ())
    assert fetched.path.read_bytes() == real_filter.data
    assert _files(cache) == [fetched.path]


def _tamper(real: RealFilter, how: str) -> list[tuple[int, bytes]]:
    chunks = real.chunks(1000)
    if how == "flipped byte":
        offset, data = chunks[1]
        changed = bytearray(data)
        changed[17] ^= 0x01
        chunks[1] = (offset, bytes(changed))
    elif how == "flipped first byte":
        offset, data = chunks[0]
        chunks[0] = (offset, bytes([data[0] ^ 0x80]) + data[1:])
    elif how == "missing last chunk":
        chunks = chunks[:-1]
    elif how == "extra bytes":
        offset, data = chunks[-1]
        chunks[-1] = (offset, data + b"\x00")
    elif how == "gap":
        del chunks[1]
    elif how == "overlap":
        offset, data = chunks[1]
        chunks[1] = (offset - 1, chunks[0][1][-1:] + data)
    elif how == "swapped chunks":
        (o1, d1), (o2, d2) = chunks[1], chunks[2]
        chunks[1], chunks[2] = (o1, d2), (o2, d1)
    else:
        raise AssertionError(how)
    return chunks


@pytest.mark.parametrize(
    "how",
    [
        "flipped byte",
        "flipped first byte",
        "missing last chunk",
        "extra bytes",
        "gap",
        "overlap",
        "swapped chunks",
    ],
)
def test_damaged_filter_download_is_refused_and_not_cached(
    fake_server: tuple[_FilterServer, Any], real_filter: RealFilter, tmp_path: Path, how: str
) -> None:
    servicer, stub = fake_server
    servicer.header = real_filter.header
    servicer.chunks = _tamper(real_filter, how)
    cache = tmp_path / "cache"
    with pytest.raises(IntegrityError):
        fetch_filter(stub, cache, real_filter.register_id, real_filter.version, ())
    assert _files(cache) == []


def test_damaged_download_does_not_replace_a_good_cached_filter(
    fake_server: tuple[_FilterServer, Any], real_filter: RealFilter, tmp_path: Path
) -> None:
    servicer, stub = fake_server
    servicer.header = real_filter.header
    servicer.chunks = real_filter.chunks(1000)
    cache = tmp_path / "cache"
    good = fetch_filter(stub, cache, real_filter.register_id, real_filter.version, ())
    # The cached copy is damaged, and so is the next download: neither may be kept.
    good.path.write_bytes(b"\x00" * len(real_filter.data))
    servicer.chunks = _tamper(real_filter, "flipped byte")
    with pytest.raises(IntegrityError):
        fetch_filter(stub, cache, real_filter.register_id, real_filter.version, ())
    assert _files(cache) == [good.path]  # no partial download left beside it


def test_filter_for_another_version_is_refused(
    fake_server: tuple[_FilterServer, Any], real_filter: RealFilter, tmp_path: Path
) -> None:
    servicer, stub = fake_server
    header = ndop_pb2.FilterHeader()
    header.CopyFrom(real_filter.header)
    header.register_version = real_filter.version + 1
    servicer.header = header
    servicer.chunks = real_filter.chunks(1000)
    cache = tmp_path / "cache"
    with pytest.raises(RequestRejected):
        fetch_filter(stub, cache, real_filter.register_id, real_filter.version, ())
    assert _files(cache) == []
