"""Filter deltas, scheme "ndop-filter-delta-v1" (docs/protocol.md, "Filter deltas, exactly"):
what turns the filter a client holds into a newer version's filter with the same bit layout.

A delta names its base filter by SHA-256, carries the new filter's 40-byte header, and lists
the bit positions where the two bit arrays differ, as gaps Rice-coded in two sections:

    delta  = base_sha256 (32) | target header (40) | uint64 flips n | uint64 low_bits r
             | uint64 high_bytes h | high section (h bytes) | low section (ceil(n*r/8) bytes)
    gap_0  = p_0; gap_i = p_i - p_(i-1) - 1 for ascending positions p_0 < p_1 < ...
    gap_i  = q_i * 2^r + l_i with 0 <= l_i < 2^r
    high   = for each i: q_i zero bits, then a one bit; the rest of the last byte zero
    low    = l_0, l_1, ... as r-bit fields, each least-significant bit first

Bits are numbered least-significant first within each byte, as in the filter. The new filter
is the new header followed by the base's bit array with every listed bit flipped. Nothing in a
delta but bits of the filter: no key, no OPRF output.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Final

import numpy as np

from ndop_core import filter as published
from ndop_core.errors import IntegrityError

SCHEME: Final = "ndop-filter-delta-v1"
FIXED: Final = struct.Struct("<32s40sQQQ")
"""base_sha256, target header, flips, low_bits, high_bytes."""
MAX_LOW_BITS: Final = 63


class DeltaRefused(IntegrityError):
    """A delta that is malformed or does not apply to the filter given."""


@dataclass(frozen=True)
class FilterDelta:
    base_sha256: bytes
    target_header: bytes
    flips: np.ndarray
    """Ascending bit positions (uint64) where base and target differ."""

    @property
    def target(self) -> published.FilterParameters:
        return published.FilterParameters.from_header(self.target_header)


def flips_between(base_bits: bytes, target_bits: bytes) -> np.ndarray:
    """Ascending positions of the bits that differ between two bit arrays of equal length."""
    if len(base_bits) != len(target_bits):
        raise ValueError("bit arrays of different lengths have no delta")
    differ = np.bitwise_xor(
        np.frombuffer(base_bits, dtype=np.uint8), np.frombuffer(target_bits, dtype=np.uint8)
    )
    bytes_changed = np.flatnonzero(differ)
    bits = np.unpackbits(differ[bytes_changed, None], axis=1, bitorder="little")
    rows, columns = np.nonzero(bits)
    flips: np.ndarray = bytes_changed[rows].astype(np.uint64) * np.uint64(8) + columns.astype(
        np.uint64
    )
    return flips


def compose(flip_lists: list[np.ndarray]) -> np.ndarray:
    """The flips of consecutive deltas applied one after another: bits flipped an odd number
    of times."""
    if not flip_lists:
        return np.empty(0, dtype=np.uint64)
    every = np.concatenate([flips.astype(np.uint64) for flips in flip_lists])
    values, counts = np.unique(every, return_counts=True)
    odd: np.ndarray = values[counts % 2 == 1]
    return odd


def _gaps(flips: np.ndarray) -> np.ndarray:
    positions = flips.astype(np.uint64)
    gaps = np.empty(len(positions), dtype=np.uint64)
    if len(positions):
        gaps[0] = positions[0]
        gaps[1:] = positions[1:] - positions[:-1] - np.uint64(1)
    return gaps


def _best_low_bits(gaps: np.ndarray) -> int:
    """The r that makes the two sections shortest (the smallest such r on a tie)."""
    if not len(gaps):
        return 0
    best, best_size = 0, -1
    for r in range(int(gaps.max()).bit_length() + 1):
        high_bits = int((gaps >> np.uint64(r)).sum()) + len(gaps)
        size = -(-high_bits // 8) + -(-len(gaps) * r // 8)
        if best_size < 0 or size < best_size:
            best, best_size = r, size
    return best


def encode(base_sha256: bytes, target_header: bytes, flips: np.ndarray) -> bytes:
    """The delta from the filter whose SHA-256 is `base_sha256` to the filter with header
    `target_header` and bit array differing at `flips` (ascending, distinct)."""
    if len(base_sha256) != 32 or len(target_header) != published.HEADER.size:
        raise ValueError("a delta needs a 32-byte base digest and a 40-byte target header")
    gaps = _gaps(flips)
    if len(gaps) > 1 and (flips[1:] <= flips[:-1]).any():
        raise ValueError("flips must be ascending and distinct")
    r = _best_low_bits(gaps)
    quotients = (gaps >> np.uint64(r)).astype(np.int64)
    ones = np.cumsum(quotients + 1) - 1  # where each code's terminating one bit falls
    high = np.zeros(int(ones[-1]) + 1 if len(ones) else 0, dtype=np.uint8)
    high[ones] = 1
    low_bits = (gaps[:, None] >> np.arange(r, dtype=np.uint64)) & np.uint64(1)
    high_bytes = np.packbits(high, bitorder="little").tobytes()
    low_bytes = np.packbits(low_bits.astype(np.uint8).ravel(), bitorder="little").tobytes()
    fixed = FIXED.pack(base_sha256, target_header, len(gaps), r, len(high_bytes))
    return fixed + high_bytes + low_bytes


def decode(data: bytes) -> FilterDelta:
    """A delta's parts; DeltaRefused if it is not exactly what encode() makes of them."""
    if len(data) < FIXED.size:
        raise DeltaRefused("the filter delta is shorter than its header")
    base_sha256, target_header, n, r, h = FIXED.unpack_from(data)
    if r > MAX_LOW_BITS or (n == 0 and (r or h)):
        raise DeltaRefused("the filter delta's header is not one a delta can have")
    low_size = -(-n * r // 8)
    if h > len(data) or len(data) != FIXED.size + h + low_size:
        raise DeltaRefused("the filter delta's length does not match its header")
    target = published.FilterParameters.from_header(target_header)
    target.require_file_of(target.size)
    high = np.unpackbits(
        np.frombuffer(data, dtype=np.uint8, count=h, offset=FIXED.size), bitorder="little"
    )
    ones = np.flatnonzero(high)
    if len(ones) != n or (n and int(ones[-1]) // 8 != h - 1):
        raise DeltaRefused("the filter delta's high section does not hold exactly its codes")
    quotients = np.diff(ones, prepend=-1) - 1
    low = np.unpackbits(
        np.frombuffer(data, dtype=np.uint8, count=low_size, offset=FIXED.size + h),
        bitorder="little",
    )
    if low[n * r :].any():
        raise DeltaRefused("the filter delta's padding bits are not zero")
    weights = np.uint64(1) << np.arange(r, dtype=np.uint64)
    remainders = low[: n * r].reshape(n, r).astype(np.uint64) @ weights if r else np.zeros(n)
    num_bits = target.num_bits
    if n and int(quotients.max()) > (num_bits - 1) >> r:
        raise DeltaRefused("the filter delta flips a bit beyond the filter's end")
    gaps = (quotients.astype(np.uint64) << np.uint64(r)) | remainders.astype(np.uint64)
    flips = np.cumsum(gaps + np.uint64(1), dtype=np.uint64) - np.uint64(1)
    if n and (int(flips[-1]) >= num_bits or (n > 1 and (flips[1:] <= flips[:-1]).any())):
        raise DeltaRefused("the filter delta flips a bit beyond the filter's end")
    return FilterDelta(base_sha256, target_header, flips)


def apply(base: bytes, data: bytes) -> bytes:
    """The filter `data` (a delta) makes of `base` (a whole filter file)."""
    delta = decode(data)
    if hashlib.sha256(base).digest() != delta.base_sha256:
        raise DeltaRefused("the filter delta was made for another filter than the one held")
    base_params = published.FilterParameters.from_header(base)
    base_params.require_file_of(len(base))
    target = delta.target
    if (target.num_slices, target.bits_per_slice) != (
        base_params.num_slices,
        base_params.bits_per_slice,
    ):
        raise DeltaRefused("the filter delta changes the filter's slices, which no delta can")
    target.require_file_of(len(base))
    bits = np.frombuffer(base, dtype=np.uint8, offset=published.HEADER.size).copy()
    flips = delta.flips
    if len(flips):
        byte = (flips >> np.uint64(3)).astype(np.intp)
        masks = (np.uint64(1) << (flips & np.uint64(7))).astype(np.uint8)
        starts = np.flatnonzero(np.diff(byte, prepend=-1))
        # Distinct bits of one byte: their sum is their OR.
        bits[byte[starts]] ^= np.add.reduceat(masks, starts).astype(np.uint8)
    return delta.target_header + bits.tobytes()
