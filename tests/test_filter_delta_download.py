"""Private-mode clients bring a cached filter up to date with a delta from a real server: the
result is the published filter byte for byte, the download is charged and audited as a filter
download, the whole filter comes instead whenever a delta cannot serve, a bad delta makes the
client download the whole filter, and older filters leave the cache."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from ndop_client import Client, Status
from ndop_client.filter_cache import CachedFilter, fetch_filter
from ndop_core import filter as published
from ndop_core.proto import ndop_pb2, ndop_pb2_grpc
from ndop_server import store as store_module
from ndop_server.accounts import Accounts
from ndop_server.audit_record import FILTER_DOWNLOAD
from ndop_server.register import Publisher
from ndop_server.server import RunningServer
from ndop_server.store import DELTA_ARTIFACT, FILTER_ARTIFACT, Store
from tests.conftest import Register, write_numbers

Metadata = tuple[tuple[str, str], ...]


@pytest.fixture
def stub(server: RunningServer, address: str) -> Iterator[ndop_pb2_grpc.OptOutRegisterStub]:
    channel = grpc.insecure_channel(address)
    try:
        yield ndop_pb2_grpc.OptOutRegisterStub(channel)
    finally:
        channel.close()


def _publish(register: Register, directory: Path, add: np.ndarray, remove: np.ndarray) -> int:
    with Store(register.store_path) as store:
        published_now = Publisher(store, register.keys, workers=1).apply_changes(
            write_numbers(directory / f"add-{time.monotonic_ns()}.dat", add) if len(add) else None,
            write_numbers(directory / f"rm-{time.monotonic_ns()}.dat", remove)
            if len(remove)
            else None,
        )
    assert published_now.published
    return published_now.record.version


def _served(stub: ndop_pb2_grpc.OptOutRegisterStub, metadata: Metadata, version: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = stub.GetRegisterInfo(ndop_pb2.GetRegisterInfoRequest(), metadata=metadata)
        if info.version.number == version:
            return
        time.sleep(0.05)
    pytest.fail(f"the server did not pick up version {version}")


def _stored(register: Register, version: int) -> tuple[bytes, bytes | None]:
    with Store(register.store_path) as store:
        data = store.artifact(version, FILTER_ARTIFACT)
        delta = store.artifacts(DELTA_ARTIFACT, version, version).get(version)
    return data, delta


def _cached(cache: Path, register: Register) -> list[str]:
    return sorted(p.name.split("-")[0] for p in (cache / register.keys.register_id).iterdir())


def test_a_cached_filter_is_brought_up_to_date_with_a_delta(
    register: Register,
    stub: ndop_pb2_grpc.OptOutRegisterStub,
    address: str,
    auth_metadata: Metadata,
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    register_id = register.keys.register_id
    first = fetch_filter(stub, cache, register_id, 1, auth_metadata)
    assert first.delta_from is None and first.received == first.path.stat().st_size

    added, withdrawn = register.not_opted_out[:40], register.opted_out[:40]
    version = _publish(register, tmp_path, added, withdrawn)
    _served(stub, auth_metadata, version)
    data, delta = _stored(register, version)
    assert delta is not None and len(delta) < len(data)
    updated = fetch_filter(stub, cache, register_id, version, auth_metadata)
    assert (updated.delta_from, updated.received) == (1, len(delta))
    assert updated.path.read_bytes() == data
    assert _cached(cache, register) == ["v1", "v2"]

    # The SDK then checks against the updated filter without downloading anything.
    numbers = np.concatenate([added[:10], withdrawn[:10], register.opted_out[100:110]])
    with Client(address, insecure=True, purpose="research", workers=1, cache_dir=cache) as client:
        result = client.check([f"{v:010d}" for v in numbers.tolist()], mode="private")
    assert result.register_version == version
    assert (
        result.statuses == [Status.OPTED_OUT] * 10 + [Status.CLEARED] * 10 + [Status.OPTED_OUT] * 10
    )

    # Two more versions: one delta composed across both, and version 1 leaves the cache.
    _publish(register, tmp_path, register.not_opted_out[40:45], register.opted_out[40:45])
    version = _publish(register, tmp_path, register.not_opted_out[45:47], np.empty(0, np.int64))
    _served(stub, auth_metadata, version)
    latest = fetch_filter(stub, cache, register_id, version, auth_metadata)
    assert latest.delta_from == 2 and 0 < latest.received < len(data)
    assert latest.path.read_bytes() == _stored(register, version)[0]
    assert _cached(cache, register) == ["v2", "v4"]


def test_a_delta_download_is_a_filter_download(
    register: Register,
    token: str,
    stub: ndop_pb2_grpc.OptOutRegisterStub,
    auth_metadata: Metadata,
    tmp_path: Path,
) -> None:
    with Accounts(register.store_path) as accounts:
        accounts.set_limits("test-org", daily_filter_downloads=2)
    cache = tmp_path / "cache"
    fetch_filter(stub, cache, register.keys.register_id, 1, auth_metadata)
    version = _publish(register, tmp_path, register.not_opted_out[:5], register.opted_out[:5])
    _served(stub, auth_metadata, version)
    updated = fetch_filter(stub, cache, register.keys.register_id, version, auth_metadata)
    assert updated.delta_from == 1
    with Accounts(register.store_path) as accounts:
        downloads = [r for r in accounts.audit("test-org") if r.outcome == FILTER_DOWNLOAD]
        assert [r.register_version for r in downloads] == [1, 2]
    request = ndop_pb2.GetFilterRequest(
        version=version, base_version=1, base_sha256=hashlib.sha256(b"").digest()
    )
    with pytest.raises(grpc.RpcError) as refused:
        next(iter(stub.GetFilter(request, metadata=auth_metadata)))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def _first_header(
    stub: ndop_pb2_grpc.OptOutRegisterStub, metadata: Metadata, request: Any
) -> tuple[ndop_pb2.FilterHeader, bytes]:
    chunks = list(stub.GetFilter(request, metadata=metadata))
    return chunks[0].header, b"".join(chunk.data for chunk in chunks)


def test_the_whole_filter_comes_when_a_delta_cannot_serve(
    register: Register,
    stub: ndop_pb2_grpc.OptOutRegisterStub,
    auth_metadata: Metadata,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    v1_filter, _ = _stored(register, 1)
    v1_sha = hashlib.sha256(v1_filter).digest()
    version = _publish(register, tmp_path, register.not_opted_out[:3], register.opted_out[:3])
    _served(stub, auth_metadata, version)
    v2_filter, v2_delta = _stored(register, version)
    asked = ndop_pb2.GetFilterRequest(version=version, base_version=1, base_sha256=v1_sha)
    header, body = _first_header(stub, auth_metadata, asked)
    assert header.HasField("delta") and body == v2_delta
    assert (header.delta.base_version, header.delta.base_sha256) == (1, v1_sha)
    assert header.delta.scheme == "ndop-filter-delta-v1" and header.delta.size == len(body)
    assert (header.size, header.sha256) == (len(v2_filter), hashlib.sha256(v2_filter).digest())

    # A digest that is not version 1's filter's, or no base at all: the whole filter.
    for request in (
        ndop_pb2.GetFilterRequest(version=version, base_version=1, base_sha256=bytes(32)),
        ndop_pb2.GetFilterRequest(version=version),
        ndop_pb2.GetFilterRequest(version=version, base_version=version, base_sha256=v1_sha),
    ):
        header, body = _first_header(stub, auth_metadata, request)
        assert not header.HasField("delta") and body == v2_filter

    # Every key replaced: a delta as large as the filter is not sent.
    everyone = np.concatenate([register.opted_out[3:], register.not_opted_out[:3]])
    newcomers = register.not_opted_out[3 : 3 + len(everyone)]
    version = _publish(register, tmp_path, newcomers, everyone)
    _served(stub, auth_metadata, version)
    v3_filter, v3_delta = _stored(register, version)
    assert v3_delta is not None and len(v3_delta) >= len(v3_filter)
    v2_sha = hashlib.sha256(v2_filter).digest()
    for base, sha in ((2, v2_sha), (1, v1_sha)):
        asked = ndop_pb2.GetFilterRequest(version=version, base_version=base, base_sha256=sha)
        header, body = _first_header(stub, auth_metadata, asked)
        assert not header.HasField("delta") and body == v3_filter

    # A base older than the deltas kept: the whole filter.
    monkeypatch.setitem(store_module.KEPT, DELTA_ARTIFACT, 1)
    v3_sha = hashlib.sha256(v3_filter).digest()
    _publish(register, tmp_path, register.opted_out[:2], np.empty(0, np.int64))
    version = _publish(register, tmp_path, register.opted_out[2:3], np.empty(0, np.int64))
    _served(stub, auth_metadata, version)
    asked = ndop_pb2.GetFilterRequest(version=version, base_version=3, base_sha256=v3_sha)
    header, body = _first_header(stub, auth_metadata, asked)
    assert not header.HasField("delta") and body == _stored(register, version)[0]


def test_a_damaged_cached_filter_is_no_base(
    register: Register,
    stub: ndop_pb2_grpc.OptOutRegisterStub,
    auth_metadata: Metadata,
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    first = fetch_filter(stub, cache, register.keys.register_id, 1, auth_metadata)
    damaged = bytearray(first.path.read_bytes())
    damaged[100] ^= 0x04
    first.path.write_bytes(bytes(damaged))
    version = _publish(register, tmp_path, register.not_opted_out[:5], register.opted_out[:5])
    _served(stub, auth_metadata, version)
    updated = fetch_filter(stub, cache, register.keys.register_id, version, auth_metadata)
    assert updated.delta_from is None
    assert updated.path.read_bytes() == _stored(register, version)[0]


class _DeltaServer(ndop_pb2_grpc.OptOutRegisterServicer):  # type: ignore[misc]
    """Answers a request naming a base with the delta it is given, any other with the filter."""

    def __init__(self, header: Any, data: bytes, delta: bytes) -> None:
        self.header, self.data, self.delta = header, data, delta
        self.requests: list[Any] = []

    def GetFilter(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self.requests.append(request)
        header = ndop_pb2.FilterHeader()
        header.CopyFrom(self.header)
        data = self.data
        if request.base_version:
            header.delta.CopyFrom(
                ndop_pb2.FilterDelta(
                    scheme="ndop-filter-delta-v1",
                    base_version=request.base_version,
                    base_sha256=request.base_sha256,
                    size=len(self.delta),
                )
            )
            data = self.delta
        for offset in range(0, len(data), 100):
            yield ndop_pb2.FilterChunk(
                header=header if offset == 0 else None,
                offset=offset,
                data=data[offset : offset + 100],
            )


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


@pytest.mark.parametrize("damage", ["a flipped bit", "truncated", "another base", "intact"])
def test_a_bad_delta_makes_the_client_download_the_whole_filter(
    register: Register, tmp_path: Path, damage: str
) -> None:
    v1_filter, _ = _stored(register, 1)
    version = _publish(register, tmp_path, register.not_opted_out[:9], register.opted_out[:9])
    v2_filter, delta = _stored(register, version)
    assert delta is not None
    bad = {
        "a flipped bit": _flip(delta, len(delta) - 1),
        "truncated": delta[:-3],
        "another base": _flip(delta, 0),
        "intact": delta,
    }[damage]
    with Store(register.store_path) as store:
        record = store.latest()
    assert record is not None
    header = ndop_pb2.FilterHeader(
        register_version=version,
        count=record.count,
        key_id=record.key_id,
        filter_scheme=published.SCHEME,
        size=len(v2_filter),
        sha256=record.filter_sha256,
        false_positive_rate=published.FALSE_POSITIVE_RATE,
    )
    servicer = _DeltaServer(header, v2_filter, bad)
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    ndop_pb2_grpc.add_OptOutRegisterServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    cache = tmp_path / "cache"
    base = cache / register.keys.register_id / f"v1-{record_sha(v1_filter)[:32]}.bloom"
    base.parent.mkdir(parents=True)
    base.write_bytes(v1_filter)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ndop_pb2_grpc.OptOutRegisterStub(channel)
            fetched: CachedFilter = fetch_filter(
                stub, cache, register.keys.register_id, version, ()
            )
    finally:
        server.stop(None)
    assert fetched.path.read_bytes() == v2_filter
    assert [r.base_version for r in servicer.requests] == ([1] if damage == "intact" else [1, 0])
    assert fetched.delta_from == (1 if damage == "intact" else None)


def record_sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
