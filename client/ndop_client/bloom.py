"""The published filter of a register version: a pybloom-live Bloom filter of OPRF outputs.

Scheme "pybloom-live-v1": for every opted-out y the register adds the key
`F_k(y)[:32].hex()` to a `pybloom_live.BloomFilter(capacity=max(count, 1),
error_rate=FALSE_POSITIVE_RATE)`; the filter travels in pybloom-live's own `tofile` format.
A client tests its own F_k(x) the same way. A false positive only ever excludes a patient who
did not opt out; an opted-out patient is always found.

FALSE_POSITIVE_RATE = 1e-9: a cohort of 10 million numbers expects 0.01 false exclusions.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Final

import numpy as np
from pybloom_live import BloomFilter

SCHEME: Final = "pybloom-live-v1"
FALSE_POSITIVE_RATE: Final = 1e-9
KEY_BYTES: Final = 32


def filter_key(oprf_output: bytes) -> str:
    """The string a filter holds for one OPRF output."""
    return oprf_output[:KEY_BYTES].hex()


def empty(count: int) -> BloomFilter:
    """An empty filter sized for `count` entries."""
    return BloomFilter(capacity=max(count, 1), error_rate=FALSE_POSITIVE_RATE)


def add_all(bloom: BloomFilter, keys: Iterable[str]) -> None:
    add = bloom.add
    for key in keys:
        add(key, skip_check=True)


def merge(bloom: BloomFilter, shard_bits: bytes, shard_count: int) -> None:
    """OR the bits of a shard built with the same parameters into `bloom`."""
    merged = np.bitwise_or(
        np.frombuffer(bloom.bitarray.tobytes(), dtype=np.uint8),
        np.frombuffer(shard_bits, dtype=np.uint8),
    )
    bloom.bitarray = type(bloom.bitarray)(endian="little")
    bloom.bitarray.frombytes(merged.tobytes())
    del bloom.bitarray[bloom.num_bits :]
    bloom.count += shard_count


def serialize(bloom: BloomFilter) -> bytes:
    buffer = io.BytesIO()
    bloom.tofile(buffer)
    return bytes(buffer.getvalue())


def deserialize(data: bytes) -> BloomFilter:
    return BloomFilter.fromfile(io.BytesIO(data))
