"""Building a version's filter with NumPy, byte for byte what pybloom-live writes for the same
capacity and keys (docs/protocol.md, "The filter, exactly"; tests compare the two).

Bit positions come from `ndop_core.filter.KeyHasher`, the code clients test keys with, so the
hashing exists once. Building is: the slice values v_j of every key (in worker processes for
large registers), how many keys set each bit (`BitCounts`), then the bits that are set. Every
type is explicitly little-endian, so the file is the same on any machine (pybloom-live itself
writes native order).

pybloom-live fixes its parameters from capacity and error rate, and ndop publishes at error
rate 1e-9; `capacity_for` chooses the capacity (see docs/protocol.md, "Capacity"): it keeps the
previous version's capacity while the entry count stays within a band below it, so that
bits_per_slice, and with it every key's bit positions, survive ordinary daily change sets; only
then can a version be derived from the one before it and a client update its filter with a
delta.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np

from ndop_core import filter as published
from ndop_server.errors import ConfigurationError

MIN_SLACK: Final = 64
SLACK_DIVISOR: Final = 64
"""A new capacity is the count plus 1/64 (1.6%) of it, at least MIN_SLACK."""


def slack(count: int) -> int:
    return max(count // SLACK_DIVISOR, MIN_SLACK)


def capacity_for(count: int, previous: int | None) -> int:
    """The capacity of a version of `count` entries whose predecessor had capacity `previous`.

    The previous capacity is kept while count <= previous <= count + 2 * slack(count): the
    false-positive rate never exceeds the published one, and the file is at most ~3% larger
    than a filter sized exactly. Outside that band: count + slack(count).
    """
    if previous is not None and count <= previous <= count + 2 * slack(count):
        return previous
    return count + slack(count)


def parameters(capacity: int, count: int = 0) -> published.FilterParameters:
    """pybloom-live's parameters for `capacity` at ndop's error rate, derived exactly as
    pybloom-live 4.0.0 does (binary64 arithmetic)."""
    if capacity < 1:
        raise ConfigurationError("a filter needs a capacity of at least 1")
    rate = published.FALSE_POSITIVE_RATE
    num_slices = math.ceil(math.log(1.0 / rate, 2))
    bits_per_slice = math.ceil((capacity * abs(math.log(rate))) / (num_slices * math.log(2) ** 2))
    return published.FilterParameters(rate, num_slices, bits_per_slice, capacity, count)


def hex_keys(raw_keys: bytes) -> list[bytes]:
    """The filter keys (64 lowercase hex ASCII bytes) of concatenated 32-byte OPRF prefixes."""
    text = raw_keys.hex().encode("ascii")
    width = 2 * published.KEY_BYTES
    return [text[i : i + width] for i in range(0, len(text), width)]


def slice_values(params: published.FilterParameters, raw_keys: bytes) -> np.ndarray:
    """v_j of every key, by slice: row j holds every key's value in slice j (the key's bit
    there is j*m + v_j). Rows are contiguous, which is what counting bits wants."""
    by_key = published.KeyHasher(params).slice_values(hex_keys(raw_keys))
    return np.ascontiguousarray(by_key.T)


def positions(params: published.FilterParameters, values: np.ndarray) -> np.ndarray:
    """Slice values (by slice) to bit positions in the whole array, flattened, as uint64."""
    offsets = np.arange(params.num_slices, dtype=np.uint64) * np.uint64(params.bits_per_slice)
    result: np.ndarray = (values.astype(np.uint64) + offsets[:, None]).ravel()
    return result


def file_bytes(params: published.FilterParameters, bits: bytes) -> bytes:
    """The published file: header, then the bit array (LSB first, padding bits zero)."""
    if len(bits) != params.size - published.HEADER.size:
        raise ValueError("the bit array does not match the filter's parameters")
    return params.header() + bits
