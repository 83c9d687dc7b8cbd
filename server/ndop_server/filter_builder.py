"""Building a version's filter with pybloom-live, in shards across processes, in the exact
format `ndop_core.filter` specifies (see docs/protocol.md).

pybloom-live packs salts and unpacks digests in the machine's native byte order; the published
format fixes little-endian, so building refuses on a big-endian machine rather than publish a
filter no client can test.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable

import numpy as np
from pybloom_live import BloomFilter

from ndop_core import filter as published
from ndop_server.errors import ConfigurationError


def empty(count: int) -> BloomFilter:
    """An empty filter sized for `count` entries."""
    if sys.byteorder != "little":
        raise ConfigurationError(
            "filters can only be built on a little-endian machine: pybloom-live writes native order"
        )
    return BloomFilter(capacity=max(count, 1), error_rate=published.FALSE_POSITIVE_RATE)


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
