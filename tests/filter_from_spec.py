"""The private-mode filter (`pybloom-live-v1`), written from docs/protocol.md alone.

An independent reader of the published filter, made only from the section "The filter,
exactly" of docs/protocol.md and the vectors in tests/vectors/filter/, to show that the document
is enough. It uses the standard library only and imports nothing from ndop or pybloom-live.

- `parse_header` / `Filter.parse`: the 40-byte little-endian header and the bit array, with
  every check of "Before using a filter" that concerns the file itself (length, SHA-256,
  k >= 1 and m >= 1, a hash row this reader implements) plus the zero padding bits.
- `KeyHashing`: chunk width, hash row, salts, digests, slice values and bit positions of a key,
  from k and m alone.
- `Filter.contains`: a key is in when all k of its bits are set.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

SCHEME = "pybloom-live-v1"
HEADER_SIZE = 40
KEY_SIZE = 64
_HEADER = struct.Struct("<dQQQQ")
_HEX_DIGITS = frozenset(b"0123456789abcdef")
_CHUNK_CODES = {2: "H", 4: "I", 8: "Q"}  # little-endian unsigned, c bytes
_MAX_SALTS = 2**32  # salt i is H(uint32_le(i))


class FilterFormatError(ValueError):
    """The filter (or a key given to it) does not follow `pybloom-live-v1`: refuse it."""


def chunk_width(bits_per_slice: int) -> int:
    """Chunk width c in bytes, from m alone: 2 if m < 2^15, 4 if m < 2^31, else 8."""
    if bits_per_slice < 1:
        raise FilterFormatError("bits_per_slice must be at least 1")
    if bits_per_slice < 2**15:
        return 2
    if bits_per_slice < 2**31:
        return 4
    return 8


def hash_name(num_slices: int, chunk_bytes: int) -> str:
    """The hashlib name of the hash row for t = 8*k*c; the XXH3-128 row (t <= 128) is refused."""
    t = 8 * num_slices * chunk_bytes
    if t > 384:
        return "sha512"
    if t > 256:
        return "sha384"
    if t > 160:
        return "sha256"
    if t > 128:
        return "sha1"
    raise FilterFormatError(f"8*k*c = {t} bits selects the XXH3-128 row, which is refused")


def key_of(oprf_output: bytes) -> bytes:
    """The filter key of an OPRF output: the 64 ASCII bytes of y[:32].hex() (lowercase)."""
    if len(oprf_output) != 64:
        raise FilterFormatError("an OPRF output is 64 bytes")
    return oprf_output[:32].hex().encode("ascii")


def _key_bytes(key: bytes | str) -> bytes:
    raw = key.encode("ascii") if isinstance(key, str) else bytes(key)
    if len(raw) != KEY_SIZE or not _HEX_DIGITS.issuperset(raw):
        raise FilterFormatError("a key is 64 lowercase hexadecimal ASCII characters")
    return raw


@dataclass(frozen=True)
class KeyHashing:
    """How keys map to bits for k slices of m bits (section "Bit positions of a key")."""

    num_slices: int
    bits_per_slice: int
    chunk_bytes: int
    hash_name: str
    salts: tuple[bytes, ...]

    @classmethod
    def for_parameters(cls, num_slices: int, bits_per_slice: int) -> KeyHashing:
        if num_slices < 1:
            raise FilterFormatError("num_slices must be at least 1")
        c = chunk_width(bits_per_slice)
        name = hash_name(num_slices, c)
        digest_size = hashlib.new(name).digest_size
        per_digest = digest_size // c  # every digest length that occurs is whole chunks
        count = -(-num_slices // per_digest)
        if count > _MAX_SALTS:
            raise FilterFormatError("more salts than a uint32 index can name")
        salts = tuple(hashlib.new(name, struct.pack("<I", i)).digest() for i in range(count))
        return cls(num_slices, bits_per_slice, c, name, salts)

    def digests(self, key: bytes | str) -> list[bytes]:
        """D_i = H(salt_i || key) for every salt, over the 64 ASCII bytes of the key."""
        raw = _key_bytes(key)
        return [hashlib.new(self.hash_name, salt + raw).digest() for salt in self.salts]

    def slice_values(self, key: bytes | str) -> list[int]:
        """v_j = uint_le(chunk j of D_0 || D_1 || ...) mod m, for j = 0 .. k - 1."""
        joined = b"".join(self.digests(key))
        c, m = self.chunk_bytes, self.bits_per_slice
        chunks = struct.unpack_from(f"<{self.num_slices}{_CHUNK_CODES[c]}", joined)
        return [int(value) % m for value in chunks]

    def positions(self, key: bytes | str) -> list[int]:
        """p_j = j*m + v_j: the bit of slice j in the whole bit array."""
        m = self.bits_per_slice
        return [j * m + v for j, v in enumerate(self.slice_values(key))]


@dataclass(frozen=True)
class Header:
    """The five fields of the 40-byte little-endian header."""

    error_rate: float
    num_slices: int
    bits_per_slice: int
    capacity: int
    count: int

    @property
    def array_bytes(self) -> int:
        """ceil(k*m / 8), the length of the bit array."""
        return -(-(self.num_slices * self.bits_per_slice) // 8)

    @property
    def file_size(self) -> int:
        return HEADER_SIZE + self.array_bytes


def parse_header(data: bytes) -> Header:
    if len(data) < HEADER_SIZE:
        raise FilterFormatError(f"a filter is at least {HEADER_SIZE} bytes; got {len(data)}")
    error_rate, k, m, capacity, count = _HEADER.unpack_from(data, 0)
    return Header(float(error_rate), int(k), int(m), int(capacity), int(count))


@dataclass(frozen=True)
class Filter:
    """A checked `pybloom-live-v1` filter file: header, bit array and key hashing."""

    header: Header
    hashing: KeyHashing
    data: bytes

    @classmethod
    def parse(
        cls,
        data: bytes,
        *,
        expected_size: int | None = None,
        expected_sha256: bytes | None = None,
        scheme: str | None = None,
    ) -> Filter:
        """Check a whole filter file and return it; raise FilterFormatError to refuse it.

        `expected_size`, `expected_sha256` and `scheme` are FilterHeader.size, .sha256 and
        .filter_scheme of the download (each checked when given).
        """
        data = bytes(data)
        if scheme is not None and scheme != SCHEME:
            raise FilterFormatError(f"filter scheme {scheme!r} is not {SCHEME!r}")
        if expected_size is not None and len(data) != expected_size:
            raise FilterFormatError(
                f"the filter is {len(data)} bytes but its download header says {expected_size}"
            )
        if expected_sha256 is not None and hashlib.sha256(data).digest() != bytes(expected_sha256):
            raise FilterFormatError("the SHA-256 of the filter file does not match")
        header = parse_header(data)
        if header.num_slices < 1 or header.bits_per_slice < 1:
            raise FilterFormatError("num_slices and bits_per_slice must both be at least 1")
        if len(data) != header.file_size:
            raise FilterFormatError(
                f"the filter is {len(data)} bytes but its header (k={header.num_slices}, "
                f"m={header.bits_per_slice}) makes it {header.file_size}"
            )
        total_bits = header.num_slices * header.bits_per_slice
        spare = 8 * header.array_bytes - total_bits
        if spare and data[-1] >> (8 - spare):
            raise FilterFormatError("padding bits after the last slice are not zero")
        hashing = KeyHashing.for_parameters(header.num_slices, header.bits_per_slice)
        return cls(header, hashing, data)

    def bit(self, n: int) -> bool:
        """Bit n of the array: bit n mod 8 of file byte 40 + n div 8."""
        if not 0 <= n < self.header.num_slices * self.header.bits_per_slice:
            raise IndexError(f"bit {n} is outside the array")
        return bool((self.data[HEADER_SIZE + n // 8] >> (n % 8)) & 1)

    def contains(self, key: bytes | str) -> bool:
        """True when all k bits of `key` (64 lowercase hex ASCII bytes) are set."""
        return all(self.bit(p) for p in self.hashing.positions(key))

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, bytes | str):
            return False
        return self.contains(key)
