"""The per-batch work of private mode, run in worker processes so that every core helps.

Each function takes and returns plain bytes so that batches cross process boundaries cheaply.
A worker keeps the last filter it loaded; a check uses one filter throughout.
"""

from __future__ import annotations

from pathlib import Path

from pybloom_live import BloomFilter

from ndop_client import bloom
from ndop_client.crypto import oprf
from ndop_client.hashing import CANONICAL_SIZE
from ndop_client.packing import split

_loaded: tuple[Path, BloomFilter] | None = None


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
        _loaded = (filter_path, bloom.deserialize(filter_path.read_bytes()))
    inputs = split(canonical_blob, CANONICAL_SIZE)
    outputs = oprf.finalize_batch(inputs, split(blinds, oprf.SCALAR_SIZE), evaluated)
    members = _loaded[1]
    return bytes(bloom.filter_key(output) in members for output in outputs)
