"""The published filter of a register version, scheme "pybloom-live-v1", as docs/protocol.md
specifies it: a Bloom filter of the OPRF outputs F_k(y) of every opted-out y.

This module reads a published filter and tests keys against it with NumPy; it never imports
pybloom-live (the server builds filters with it, and tests check that both agree bit for bit).

    key        = lowercase hex of F_k(y)[:32], as 64 ASCII bytes
    header     = "<dQQQQ": error_rate, num_slices, bits_per_slice, capacity, count
    chunk      = 2 bytes if bits_per_slice < 2**15, 4 if < 2**31, else 8 (unsigned, little-endian)
    hash       = by 8 * num_slices * chunk: > 384 SHA-512, > 256 SHA-384, > 160 SHA-256,
                 > 128 SHA-1, else XXH3-128 (not accepted here)
    salt i     = H(uint32_le(i)).digest(), for i = 0, 1, ...
    slice j    = the j-th chunk of H(salt 0 || key) || H(salt 1 || key) || ..., mod bits_per_slice
    bit of j   = j * bits_per_slice + slice j, in a bit array stored LSB first within each byte

A key is in the filter when the bit of every slice is set. A false positive only ever excludes
someone who did not opt out; an opted-out number is always found.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Final

import numpy as np

from ndop_core.errors import IntegrityError, UnsupportedServer

SCHEME: Final = "pybloom-live-v1"
FALSE_POSITIVE_RATE: Final = 1e-9
KEY_BYTES: Final = 32
HEADER: Final = struct.Struct("<dQQQQ")

_HASHES: Final = ((384, "sha512"), (256, "sha384"), (160, "sha256"), (128, "sha1"))


def filter_key(oprf_output: bytes) -> bytes:
    """The ASCII key a filter holds for one OPRF output: hex of its first 32 bytes."""
    return oprf_output[:KEY_BYTES].hex().encode("ascii")


def chunk_bytes(bits_per_slice: int) -> int:
    """Width of the unsigned little-endian integers a digest is cut into."""
    if bits_per_slice >= 1 << 31:
        return 8
    if bits_per_slice >= 1 << 15:
        return 4
    return 2


def hash_name(num_slices: int, bits_per_slice: int) -> str | None:
    """hashlib's name for the filter's hash, or None for XXH3-128 (which ndop never publishes)."""
    total_bits = 8 * num_slices * chunk_bytes(bits_per_slice)
    for above, name in _HASHES:
        if total_bits > above:
            return name
    return None


@dataclass(frozen=True)
class FilterParameters:
    error_rate: float
    num_slices: int
    bits_per_slice: int
    capacity: int
    count: int

    @classmethod
    def from_header(cls, data: bytes) -> FilterParameters:
        if len(data) < HEADER.size:
            raise IntegrityError("the filter is shorter than its header")
        return cls(*HEADER.unpack_from(data))

    @property
    def num_bits(self) -> int:
        return self.num_slices * self.bits_per_slice

    @property
    def size(self) -> int:
        """Bytes of the whole published filter: header and bit array."""
        return HEADER.size + -(-self.num_bits // 8)

    def header(self) -> bytes:
        return HEADER.pack(
            self.error_rate, self.num_slices, self.bits_per_slice, self.capacity, self.count
        )


class KeyHasher:
    """Maps keys to their bit positions for given parameters; needs no bit array, so positions
    can be computed for filters too large to hold (and are, by the test vectors)."""

    def __init__(self, params: FilterParameters) -> None:
        if params.num_slices < 1 or params.bits_per_slice < 1:
            raise IntegrityError("the filter's header describes an empty filter")
        name = hash_name(params.num_slices, params.bits_per_slice)
        if name is None:
            raise UnsupportedServer(
                f"the server publishes a {params.num_slices}-slice filter hashed with XXH3-128, "
                "which this client does not implement"
            )
        self.params = params
        self.hash_name = name
        self.chunk = chunk_bytes(params.bits_per_slice)
        self._salts = _salts(getattr(hashlib, name), params.num_slices, self.chunk)

    @cached_property
    def _slice_offsets(self) -> np.ndarray:
        slices = np.arange(self.params.num_slices, dtype=np.uint64)
        return slices * np.uint64(self.params.bits_per_slice)

    def positions(self, keys: Sequence[bytes]) -> np.ndarray:
        """Bit indices in the whole array, one row per key and one column per slice."""
        if not keys:
            return np.empty((0, self.params.num_slices), dtype=np.uint64)
        salts = self._salts
        digests = b"".join(salt_hash.digest() for key in keys for salt_hash in _keyed(salts, key))
        chunks = np.frombuffer(digests, dtype=f"<u{self.chunk}").reshape(len(keys), -1)
        slices = chunks[:, : self.params.num_slices].astype(np.uint64)
        positions: np.ndarray = slices % np.uint64(self.params.bits_per_slice)
        offsets: np.ndarray = positions + self._slice_offsets
        return offsets


class BloomFilter:
    """A published filter, read-only: `contains` answers for many keys at once."""

    def __init__(self, data: bytes) -> None:
        params = FilterParameters.from_header(data)
        if len(data) != params.size:
            raise IntegrityError("the filter's length does not match its header")
        self._hasher = KeyHasher(params)
        self.params = params
        self._bits = np.frombuffer(data, dtype=np.uint8, offset=HEADER.size)

    def positions(self, keys: Sequence[bytes]) -> np.ndarray:
        """Bit indices in the whole array, one row per key and one column per slice."""
        return self._hasher.positions(keys)

    def contains(self, keys: Sequence[bytes]) -> np.ndarray:
        """One flag per key: True when every one of its bits is set."""
        bits = self.positions(keys)
        stored = self._bits[(bits >> np.uint64(3)).astype(np.intp)]
        is_set = (stored >> (bits & np.uint64(7)).astype(np.uint8)) & 1
        return np.asarray(is_set.all(axis=1), dtype=bool)


def _salts(
    hash_constructor: Callable[..., hashlib._Hash], num_slices: int, chunk: int
) -> list[hashlib._Hash]:
    per_digest = hash_constructor().digest_size // chunk
    needed = -(-num_slices // per_digest)
    return [
        hash_constructor(hash_constructor(struct.pack("<I", i)).digest()) for i in range(needed)
    ]


def _keyed(salts: list[hashlib._Hash], key: bytes) -> list[hashlib._Hash]:
    keyed = []
    for salt in salts:
        h = salt.copy()
        h.update(key)
        keyed.append(h)
    return keyed
