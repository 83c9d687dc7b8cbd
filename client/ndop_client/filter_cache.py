"""Download a register version's filter once, check its digest, and keep it on disk.

`cached_filter` answers from disk alone when RegisterInfo describes a filter already held;
`fetch_filter` downloads it otherwise: as a delta from the newest older filter the cache holds
when the server can send one (docs/protocol.md, "Filter deltas"), or whole. A filter made from
a delta is kept only if it has the announced size and SHA-256; if not, the whole filter is
downloaded instead. Once a filter is saved, filters of versions older than the one before it
are removed from the cache.

Files live under CACHE_DIR/REGISTER_ID/ named by version and digest, so a cached filter is
reused only for exactly the filter the server describes.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from itertools import chain
from pathlib import Path
from typing import Final

import grpc

from ndop_client.compatibility import require_filter_scheme
from ndop_client.register_info import RegisterInfo
from ndop_client.stall import DEFAULT_STALL_SECONDS, StallPolicy, StallWatch
from ndop_core import filter as published_filter
from ndop_core import filter_delta
from ndop_core.errors import InputError, IntegrityError, RequestRejected, UnsupportedServer
from ndop_core.proto import ndop_pb2, ndop_pb2_grpc

_NAME: Final = re.compile(r"v(\d+)-([0-9a-f]{32})\.bloom")
VERSIONS_KEPT: Final = 2
"""The newest filter and the one before it: a check may still run against that one."""


@dataclass(frozen=True)
class CachedFilter:
    path: Path
    register_version: int
    count: int
    key_id: str
    false_positive_rate: float
    delta_from: int | None = None
    """When the download was a delta: the version of the cached filter it was applied to."""
    received: int = 0
    """Bytes downloaded for it: the delta's or the whole filter's (0 if it was on disk)."""


@dataclass(frozen=True)
class _Base:
    """A cached filter a delta can start from."""

    version: int
    sha256: bytes
    data: bytes


class _DeltaUnusable(IntegrityError):
    """The server's delta does not give the filter it announced: download the whole filter."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ndop" / "filters"


def _path(cache_dir: Path, register_id: str, version: int, sha256: bytes) -> Path:
    return cache_dir / register_id / f"v{version}-{sha256.hex()[:32]}.bloom"


def cached_filter(cache_dir: Path, info: RegisterInfo) -> CachedFilter | None:
    """The filter `info` describes if the cache already holds it intact; no server call."""
    path = _path(cache_dir, info.register_id, info.version, info.filter_sha256)
    if not path.exists() or _sha256_file(path) != info.filter_sha256:
        return None
    return CachedFilter(
        path, info.version, info.count, info.oprf_key_id, info.filter_false_positive_rate
    )


def filter_for(
    stub: ndop_pb2_grpc.OptOutRegisterStub,
    cache_dir: Path,
    info: RegisterInfo,
    metadata: tuple[tuple[str, str], ...],
    stall: StallPolicy,
) -> CachedFilter:
    """The filter `info` describes, from the cache or downloaded (`fetch_filter`), once it is
    known to be made with the OPRF key the server evaluates with."""
    cached = cached_filter(cache_dir, info) or fetch_filter(
        stub, cache_dir, info.register_id, info.version, metadata, stall
    )
    if cached.key_id != info.oprf_key_id:
        raise IntegrityError("the filter was made with another OPRF key than the server's")
    return cached


def fetch_filter(
    stub: ndop_pb2_grpc.OptOutRegisterStub,
    cache_dir: Path,
    register_id: str,
    version: int,
    metadata: tuple[tuple[str, str], ...],
    stall: StallPolicy | None = None,
) -> CachedFilter:
    """The filter of `version`, from the cache when it holds the same digest; a delta from
    an older cached filter when the server has one, the whole filter otherwise."""
    policy = stall or StallPolicy(DEFAULT_STALL_SECONDS, "")
    base = _newest_base(cache_dir / register_id, version)
    try:
        fetched = _request(stub, cache_dir, register_id, version, metadata, policy, base)
    except _DeltaUnusable:
        fetched = _request(stub, cache_dir, register_id, version, metadata, policy, None)
    _prune(cache_dir / register_id, fetched.register_version)
    return fetched


def _request(
    stub: ndop_pb2_grpc.OptOutRegisterStub,
    cache_dir: Path,
    register_id: str,
    version: int,
    metadata: tuple[tuple[str, str], ...],
    stall: StallPolicy,
    base: _Base | None,
) -> CachedFilter:
    watch = stall.watch("the filter download")
    request = ndop_pb2.GetFilterRequest(version=version)
    if base is not None:
        request.base_version = base.version
        request.base_sha256 = base.sha256
    watch.expect()
    chunks = stub.GetFilter(request, metadata=metadata)
    with watch.guarding(chunks):
        return _download(chunks, cache_dir, register_id, version, watch, base)


def _download(
    chunks: Iterator[ndop_pb2.FilterChunk],
    cache_dir: Path,
    register_id: str,
    version: int,
    watch: StallWatch,
    base: _Base | None = None,
) -> CachedFilter:
    try:
        first = next(chunks)
    except StopIteration as exc:
        raise RequestRejected("the server sent an empty filter stream") from exc
    watch.received(settles=0)
    header = first.header
    if not first.HasField("header") or header.register_version != version:
        _cancel(chunks)
        raise RequestRejected("the server sent a filter for another register version")
    delta = header.delta if header.HasField("delta") else None
    try:
        if delta is None:
            _require_usable(header, first.data)
        else:
            require_filter_scheme(header.filter_scheme)
            _require_delta_of(delta, header, base)
    except BaseException:
        _cancel(chunks)
        raise
    path = _path(cache_dir, register_id, version, header.sha256)
    described = CachedFilter(
        path, header.register_version, header.count, header.key_id, header.false_positive_rate
    )
    if path.exists() and _sha256_file(path) == header.sha256:
        _cancel(chunks)
        return described
    if delta is not None and base is not None:
        data = _receive(first, chunks, delta.size, watch)
        try:
            made = filter_delta.apply(base.data, data)
        except IntegrityError as exc:
            raise _DeltaUnusable(str(exc)) from None
        if len(made) != header.size or hashlib.sha256(made).digest() != header.sha256:
            raise _DeltaUnusable("the filter made from the delta does not match its digest")
        _require_usable(header, made)
        _save(path, [made])
        return replace(described, delta_from=base.version, received=len(data))
    _save(path, _checked(first, chunks, header, watch), chunks)
    return replace(described, received=header.size)


def _require_delta_of(
    delta: ndop_pb2.FilterDelta, header: ndop_pb2.FilterHeader, base: _Base | None
) -> None:
    """A delta is usable only from the base this client named, in the scheme it implements,
    and smaller than the filter it makes."""
    if (
        base is None
        or delta.scheme != filter_delta.SCHEME
        or delta.base_version != base.version
        or delta.base_sha256 != base.sha256
        or delta.size >= header.size
    ):
        raise _DeltaUnusable("the server sent a delta this client cannot use")


def _receive(
    first: ndop_pb2.FilterChunk,
    rest: Iterator[ndop_pb2.FilterChunk],
    size: int,
    watch: StallWatch,
) -> bytes:
    """A delta's bytes, whole and in order, in memory (it is smaller than the filter)."""
    received = bytearray()
    try:
        for chunk in chain([first], rest):
            watch.received(settles=0)
            if chunk.offset != len(received) or len(received) + len(chunk.data) > size:
                raise _DeltaUnusable("the filter delta arrived with a gap or overlap")
            received += chunk.data
    except BaseException:
        _cancel(rest)
        raise
    if len(received) != size:
        raise _DeltaUnusable("the filter delta arrived incomplete")
    return bytes(received)


def _checked(
    first: ndop_pb2.FilterChunk,
    rest: Iterator[ndop_pb2.FilterChunk],
    header: ndop_pb2.FilterHeader,
    watch: StallWatch,
) -> Iterator[bytes]:
    """The whole filter's bytes as they arrive, refused at the end unless whole and intact."""
    digest = hashlib.sha256()
    received = 0
    for chunk in chain([first], rest):
        watch.received(settles=0)
        if chunk.offset != received:
            raise IntegrityError("the filter arrived with a gap or overlap")
        digest.update(chunk.data)
        received += len(chunk.data)
        yield chunk.data
    if received != header.size or digest.digest() != header.sha256:
        raise IntegrityError(
            "the downloaded filter does not match its published digest; it was discarded"
        )


def _save(
    path: Path,
    parts: Iterator[bytes] | list[bytes],
    chunks: Iterator[ndop_pb2.FilterChunk] | None = None,
) -> None:
    """Write a filter under its final name only once every part has arrived and passed."""
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=".filter.", dir=directory)
    except OSError as exc:
        if chunks is not None:
            _cancel(chunks)
        raise _cache_error(directory, exc) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            for part in parts:
                handle.write(part)
        os.replace(temp_name, path)
    except BaseException as exc:
        Path(temp_name).unlink(missing_ok=True)
        if chunks is not None:
            _cancel(chunks)
        if isinstance(exc, OSError):
            raise _cache_error(directory, exc) from None
        raise


def _held(directory: Path) -> list[tuple[int, str, Path]]:
    """(version, digest prefix, path) of the filters cached for one register, newest first."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    held = []
    for name in names:
        match = _NAME.fullmatch(name)
        if match:
            held.append((int(match.group(1)), match.group(2), directory / name))
    return sorted(held, reverse=True)


def _newest_base(directory: Path, version: int) -> _Base | None:
    """The newest intact cached filter older than `version` (any version when 0)."""
    for held_version, prefix, path in _held(directory):
        if version and held_version >= version:
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        sha256 = hashlib.sha256(data).digest()
        if sha256.hex()[:32] == prefix:
            return _Base(held_version, sha256, data)
    return None


def _prune(directory: Path, newest: int) -> None:
    """Remove the filters older than the newest VERSIONS_KEPT versions up to `newest`."""
    held = _held(directory)
    versions = sorted({v for v, _, _ in held if v <= newest}, reverse=True)
    if len(versions) <= VERSIONS_KEPT:
        return
    oldest_kept = versions[VERSIONS_KEPT - 1]
    for held_version, _, path in held:
        if held_version < oldest_kept:
            path.unlink(missing_ok=True)


def _cancel(chunks: Iterator[ndop_pb2.FilterChunk]) -> None:
    if isinstance(chunks, grpc.Future):
        chunks.cancel()


def _cache_error(directory: Path, exc: OSError) -> InputError:
    return InputError(
        f"cannot save the register's filter in {directory}: {exc.strerror}; free some space "
        "there or point XDG_CACHE_HOME (cache_dir= in Python) at another directory"
    )


def _require_usable(header: ndop_pb2.FilterHeader, first_data: bytes) -> None:
    """Refuse, before downloading it, a filter this client could not test or whose own header
    disagrees with the FilterHeader that announces it (docs/protocol.md, "Before using a
    filter"). The first chunk must carry at least the file's 40-byte header."""
    require_filter_scheme(header.filter_scheme)
    params = published_filter.FilterParameters.from_header(first_data)
    params.require_file_of(header.size)
    if params.count != header.count:
        raise IntegrityError(
            f"the filter holds {params.count} entries but the server announced {header.count}"
        )
    if params.error_rate != header.false_positive_rate:
        raise IntegrityError(
            "the filter's error rate is not the false-positive rate the server announced"
        )
    if published_filter.hash_name(params.num_slices, params.bits_per_slice) is None:
        raise UnsupportedServer(
            "the server publishes a filter hashed with XXH3-128, which this client does not "
            "implement"
        )


def _sha256_file(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.digest()
