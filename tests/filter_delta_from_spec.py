"""A filter-delta reader written from docs/protocol.md ("Filter deltas, exactly") alone, with
the standard library only: what another implementation would write. It shares no code with
ndop_core.filter_delta, so the vectors check the document as much as the implementation."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

FIXED = struct.Struct("<32s40sQQQ")
FILTER_HEADER = struct.Struct("<dQQQQ")


class Refused(ValueError):
    """The document says a reader refuses this delta."""


@dataclass(frozen=True)
class Delta:
    base_sha256: bytes
    target_header: bytes
    flips: list[int]
    low_bits: int
    high_bytes: int


def _bits(data: bytes) -> list[int]:
    return [(byte >> i) & 1 for byte in data for i in range(8)]


def read(data: bytes, num_bits: int) -> Delta:
    """Decode a delta for a filter of `num_bits` = k*m bits."""
    if len(data) < FIXED.size:
        raise Refused("shorter than its header")
    base_sha256, target_header, n, r, h = FIXED.unpack_from(data)
    if r > 63 or (n == 0 and (r != 0 or h != 0)):
        raise Refused("impossible header")
    low_size = (n * r + 7) // 8
    if len(data) != FIXED.size + h + low_size:
        raise Refused("length")
    high = _bits(data[FIXED.size : FIXED.size + h])
    ones = [i for i, bit in enumerate(high) if bit]
    if len(ones) != n or (n and ones[-1] // 8 != h - 1):
        raise Refused("high section")
    low = _bits(data[FIXED.size + h :])
    if any(low[n * r :]):
        raise Refused("padding")
    flips: list[int] = []
    previous_one = -1
    for i, one in enumerate(ones):
        quotient = one - previous_one - 1
        previous_one = one
        if quotient > (num_bits - 1) >> r:
            raise Refused("beyond the end")
        remainder = sum(low[i * r + b] << b for b in range(r))
        gap = (quotient << r) | remainder
        position = gap if i == 0 else flips[-1] + 1 + gap
        if position >= num_bits:
            raise Refused("beyond the end")
        flips.append(position)
    return Delta(base_sha256, target_header, flips, r, h)


def apply(base: bytes, data: bytes) -> bytes:
    """The filter a delta makes of `base`."""
    _, k, m, _, _ = FILTER_HEADER.unpack_from(base)
    delta = read(data, k * m)
    if hashlib.sha256(base).digest() != delta.base_sha256:
        raise Refused("another base")
    error_rate, target_k, target_m, _, _ = FILTER_HEADER.unpack(delta.target_header)
    if (target_k, target_m) != (k, m) or not 0 < error_rate < 1:
        raise Refused("another layout")
    array = bytearray(base[40:])
    for p in delta.flips:
        array[p // 8] ^= 1 << (p % 8)
    return delta.target_header + bytes(array)
