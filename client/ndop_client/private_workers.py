"""The per-batch work of private mode, run in worker processes so that every core helps.

Each function takes and returns plain bytes so that batches cross process boundaries cheaply.
A worker keeps the last filter it loaded; a check uses one filter throughout.
"""

from __future__ import annotations

from pathlib import Path

from ndop_core import filter as published_filter
from ndop_core.crypto import oprf
from ndop_core.errors import RequestRejected
from ndop_core.hashing import CANONICAL_SIZE
from ndop_core.packing import split

_loaded: tuple[Path, published_filter.BloomFilter] | None = None


def blind(canonical_blob: bytes) -> tuple[bytes, bytes]:
    """(concatenated blinds, concatenated blinded elements) for ten-byte canonical numbers."""
    blinds, blinded = oprf.blind_batch(split(canonical_blob, CANONICAL_SIZE))
    return b"".join(blinds), blinded


def unblind_and_test(
    filter_path: Path, canonical_blob: bytes, blinds: bytes, evaluated: bytes
) -> bytes:
    """Finalize each evaluated element and test it against the filter: one flag byte each."""
    global _loaded
    if _loaded is None or _loaded[0] != filter_path:
        _loaded = (filter_path, published_filter.BloomFilter(filter_path.read_bytes()))
    return test_outputs(_loaded[1], canonical_blob, blinds, evaluated)


def test_outputs(
    bloom: published_filter.BloomFilter, canonical_blob: bytes, blinds: bytes, evaluated: bytes
) -> bytes:
    """Finalize each evaluated element and test it against `bloom`: one flag byte each."""
    inputs = split(canonical_blob, CANONICAL_SIZE)
    try:
        outputs = oprf.finalize_batch(inputs, split(blinds, oprf.SCALAR_SIZE), evaluated)
    except oprf.InvalidElementError:
        raise RequestRejected(
            "the server answered with an element that is not a valid ristretto255 encoding"
        ) from None
    keys = [published_filter.filter_key(output) for output in outputs]
    return bloom.contains(keys).astype("u1").tobytes()
