"""Download a register version's filter once, check its digest, and keep it on disk.

`cached_filter` answers from disk alone when RegisterInfo describes a filter already held;
`fetch_filter` downloads it otherwise.

Files live under CACHE_DIR/REGISTER_ID/ named by version and digest, so a cached filter is
reused only for exactly the filter the server describes.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from ndop_client.compatibility import require_filter_scheme
from ndop_client.register_info import RegisterInfo
from ndop_client.stall import DEFAULT_STALL_SECONDS, StallPolicy, StallWatch
from ndop_core import filter as published_filter
from ndop_core.errors import InputError, IntegrityError, RequestRejected, UnsupportedServer
from ndop_core.proto import ndop_pb2, ndop_pb2_grpc


@dataclass(frozen=True)
class CachedFilter:
    path: Path
    register_version: int
    count: int
    key_id: str
    false_positive_rate: float


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


def fetch_filter(
    stub: ndop_pb2_grpc.OptOutRegisterStub,
    cache_dir: Path,
    register_id: str,
    version: int,
    metadata: tuple[tuple[str, str], ...],
    stall: StallPolicy | None = None,
) -> CachedFilter:
    """The filter of `version`, from the cache when it holds the same digest."""
    watch = (stall or StallPolicy(DEFAULT_STALL_SECONDS, "")).watch("the filter download")
    watch.expect()
    chunks = stub.GetFilter(ndop_pb2.GetFilterRequest(version=version), metadata=metadata)
    with watch.guarding(chunks):
        return _download(chunks, cache_dir, register_id, version, watch)


def _download(
    chunks: Iterator[ndop_pb2.FilterChunk],
    cache_dir: Path,
    register_id: str,
    version: int,
    watch: StallWatch,
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
    try:
        _require_usable(header, first.data)
    except BaseException:
        _cancel(chunks)
        raise
    path = _path(cache_dir, register_id, version, header.sha256)
    directory = path.parent
    described = CachedFilter(
        path, header.register_version, header.count, header.key_id, header.false_positive_rate
    )
    if path.exists() and _sha256_file(path) == header.sha256:
        _cancel(chunks)
        return described
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=".filter.", dir=directory)
    except OSError as exc:
        _cancel(chunks)
        raise _cache_error(directory, exc) from None
    digest = hashlib.sha256()
    received = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in _chain(first, chunks):
                watch.received(settles=0)
                if chunk.offset != received:
                    raise IntegrityError("the filter arrived with a gap or overlap")
                handle.write(chunk.data)
                digest.update(chunk.data)
                received += len(chunk.data)
        if received != header.size or digest.digest() != header.sha256:
            raise IntegrityError(
                "the downloaded filter does not match its published digest; it was discarded"
            )
        os.replace(temp_name, path)
    except OSError as exc:
        Path(temp_name).unlink(missing_ok=True)
        _cancel(chunks)
        raise _cache_error(directory, exc) from None
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        _cancel(chunks)
        raise
    return described


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


def _chain(
    first: ndop_pb2.FilterChunk, rest: Iterator[ndop_pb2.FilterChunk]
) -> Iterator[ndop_pb2.FilterChunk]:
    yield first
    yield from rest


def _sha256_file(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.digest()
