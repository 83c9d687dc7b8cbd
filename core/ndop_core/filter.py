"""The published filter of a register version, scheme "pybloom-live-v1", as docs/protocol.md
specifies it: a Bloom filter of the OPRF outputs F_k(x) of every opted-out number x.

This module reads a published filter and tests keys against it with NumPy; it never imports
pybloom-live. KeyHasher is also how the server hashes keys when it builds a filter (with NumPy,
in ndop_server.filter_builder); tests check both against pybloom-live bit for bit.

    key        = lowercase hex of F_k(x)[:32], as 64 ASCII bytes
    header     = "<dQQQQ": error_rate, num_slices, bits_per_slice, capacity, count
    checked    = 0 < error_rate < 1; 1 <= num_slices <= 1024; bits_per_slice >= 1; length exactly
                 40 + ceil(num_slices * bits_per_slice / 8); padding bits after the last slice 0
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
# pybloom-live makes k = ceil(log2(1/p)) slices, and 1/p is a finite binary64 below 2**1024.
MAX_SLICES: Final = 1024

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

    def require_file_of(self, length: int) -> None:
        """Refuse a header that does not describe a pybloom-live-v1 file of `length` bytes.

        Compares k*m with the bits the file holds the way docs/protocol.md asks of readers with
        64-bit integers (k > 8*(length - 40) // m refuses without forming k*m), so a header whose
        k*m wraps 2**64 is refused here as it must be there. `capacity` and `count` are only
        informative: count may exceed capacity in a pybloom-live file.
        """
        if not 0.0 < self.error_rate < 1.0:  # also refuses NaN
            raise IntegrityError("the filter's error rate is not a probability between 0 and 1")
        self.require_slices()
        array_bytes = length - HEADER.size
        if (
            array_bytes < 1
            or self.num_slices > 8 * array_bytes // self.bits_per_slice
            or length != self.size
        ):
            raise IntegrityError("the filter's length does not match its header")

    def require_slices(self) -> None:
        """Refuse a slice count or width no pybloom-live filter has."""
        if self.num_slices < 1 or self.bits_per_slice < 1:
            raise IntegrityError("the filter's header describes an empty filter")
        if self.num_slices > MAX_SLICES:
            raise IntegrityError(
                f"the filter's header names {self.num_slices} slices; pybloom-live never makes "
                f"more than {MAX_SLICES}"
            )


class KeyHasher:
    """Maps keys to their bit positions for given parameters; needs no bit array, so positions
    can be computed for filters too large to hold (and are, by the test vectors)."""

    def __init__(self, params: FilterParameters) -> None:
        params.require_slices()
        if params.num_bits > 1 << 64:
            raise IntegrityError("the filter has more bits than 64-bit positions can name")
        name = hash_name(params.num_slices, params.bits_per_slice)
        if name is None:
            raise UnsupportedServer(
                f"the server publishes a {params.num_slices}-slice filter hashed with XXH3-128, "
                "which this client does not implement"
            )
        self.params = params
        self.hash_name = name
        self.chunk = chunk_bytes(params.bits_per_slice)
        self._new = getattr(hashlib, name)
        self._salts = _salts(self._new, params.num_slices, self.chunk)

    @cached_property
    def _slice_offsets(self) -> np.ndarray:
        slices = np.arange(self.params.num_slices, dtype=np.uint64)
        return slices * np.uint64(self.params.bits_per_slice)

    def slice_values(self, keys: Sequence[bytes]) -> np.ndarray:
        """v_j of every key: one row per key, one column per slice, each below bits_per_slice,
        as unsigned integers of the chunk width (2, 4 or 8 bytes)."""
        k = self.params.num_slices
        if not keys:
            return np.empty((0, k), dtype=f"<u{self.chunk}")
        new, salts = self._new, self._salts
        # H(salt_i || key): the salt is a whole digest, hashed together with the key.
        if len(salts) == 1:
            (s0,) = salts
            digests = b"".join([new(s0 + key).digest() for key in keys])
        elif len(salts) == 2:
            s0, s1 = salts
            digests = b"".join([new(s0 + key).digest() + new(s1 + key).digest() for key in keys])
        else:
            digests = b"".join([new(salt + key).digest() for key in keys for salt in salts])
        chunks = np.frombuffer(digests, dtype=f"<u{self.chunk}").reshape(len(keys), -1)[:, :k]
        # In the chunk's own width: 64-bit modulo is several times slower than 16 or 32-bit.
        values: np.ndarray = chunks % chunks.dtype.type(self.params.bits_per_slice)
        return values

    def positions(self, keys: Sequence[bytes]) -> np.ndarray:
        """Bit indices in the whole array, one row per key and one column per slice."""
        offsets: np.ndarray = self.slice_values(keys).astype(np.uint64) + self._slice_offsets
        return offsets


class BloomFilter:
    """A published filter, read-only: `contains` answers for many keys at once."""

    def __init__(self, data: bytes) -> None:
        params = FilterParameters.from_header(data)
        params.require_file_of(len(data))
        padding = 8 * (len(data) - HEADER.size) - params.num_bits
        if padding and data[-1] >> (8 - padding):
            raise IntegrityError("the filter's padding bits after its last slice are not zero")
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
) -> list[bytes]:
    """salt_i = H(uint32_le(i)), as many as the slices need."""
    per_digest = hash_constructor().digest_size // chunk
    needed = -(-num_slices // per_digest)
    return [hash_constructor(struct.pack("<I", i)).digest() for i in range(needed)]
