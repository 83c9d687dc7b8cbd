"""How many entries set each bit of a version's filter, so that the next version can be derived
from it: adding a key only sets bits, but withdrawing one may clear a bit only when no other
entry sets it. A filter holds no counts (and must stay pybloom-live's format), so the store
keeps them beside it as the version's "filter-counts" artifact.

Counts are held in 4 bits per filter bit, saturating at 15; the exact count of every saturated
bit is listed after them (at ndop's sizes about 0.69 entries set each bit, and a count of 15
has odds near 10^-15, so the list is empty in practice but exact whenever it is not).

    artifact   = "ndopcnt1" | uint64 num_bits | uint64 saturated
                 | ceil(num_bits / 2) bytes of 4-bit counts (bit p: low nibble of byte p // 2
                   when p is even, high nibble when odd)
                 | saturated x uint64 position, ascending | saturated x uint64 count

Nothing here identifies anyone: the counts are of bits of OPRF outputs, like the filter.
"""

from __future__ import annotations

import struct
from typing import Final

import numpy as np

from ndop_core import filter as published
from ndop_server.errors import StoreError

_MAGIC: Final = b"ndopcnt1"
_HEADER: Final = struct.Struct("<8sQQ")
SATURATED: Final = 15


class CountsMismatch(StoreError):
    """The stored counts disagree with the entries withdrawn; rebuild the filter instead."""


class BitCounts:
    """Per-bit counts of one filter, updated in place by `change`."""

    def __init__(
        self,
        num_bits: int,
        nibbles: np.ndarray,
        over_positions: np.ndarray,
        over_counts: np.ndarray,
    ) -> None:
        self.num_bits = num_bits
        self._nibbles = nibbles
        self._over_positions = over_positions
        self._over_counts = over_counts

    # --- building -----------------------------------------------------------------------------

    @classmethod
    def from_slice_values(
        cls, params: published.FilterParameters, values: np.ndarray
    ) -> tuple[BitCounts, bytes]:
        """Counts of every bit, and the packed bit array, for keys with these slice values
        (by slice: row j holds every key's v_j)."""
        m = params.bits_per_slice
        counts = np.zeros(params.num_bits, dtype=np.uint8)
        over_positions: list[np.ndarray] = []
        over_counts: list[np.ndarray] = []
        for j in range(params.num_slices):
            slice_counts = np.bincount(values[j], minlength=m)
            saturated = np.flatnonzero(slice_counts >= SATURATED)
            if len(saturated):
                over_positions.append(saturated.astype(np.uint64) + np.uint64(j * m))
                over_counts.append(slice_counts[saturated].astype(np.uint64))
            counts[j * m : (j + 1) * m] = np.minimum(slice_counts, SATURATED)
        bits = np.packbits(counts > 0, bitorder="little").tobytes()
        nibbles = _pack_nibbles(counts)
        return (
            cls(
                params.num_bits,
                nibbles,
                _concatenate(over_positions),
                _concatenate(over_counts),
            ),
            bits,
        )

    # --- the artifact --------------------------------------------------------------------------

    def encode(self) -> bytes:
        return b"".join(
            (
                _HEADER.pack(_MAGIC, self.num_bits, len(self._over_positions)),
                self._nibbles.tobytes(),
                self._over_positions.astype("<u8").tobytes(),
                self._over_counts.astype("<u8").tobytes(),
            )
        )

    @classmethod
    def decode(cls, data: bytes, num_bits: int) -> BitCounts:
        """The counts artifact of a filter of `num_bits` bits; CountsMismatch if it is not one."""
        if len(data) < _HEADER.size:
            raise CountsMismatch("the stored filter counts are truncated")
        magic, stored_bits, saturated = _HEADER.unpack_from(data)
        nibble_bytes = -(-num_bits // 2)
        expected = _HEADER.size + nibble_bytes + 16 * saturated
        if magic != _MAGIC or stored_bits != num_bits or len(data) != expected:
            raise CountsMismatch("the stored filter counts do not belong to this filter")
        start = _HEADER.size
        nibbles = np.frombuffer(data, dtype=np.uint8, count=nibble_bytes, offset=start).copy()
        start += nibble_bytes
        over_positions = np.frombuffer(data, dtype="<u8", count=saturated, offset=start)
        over_counts = np.frombuffer(
            data, dtype="<u8", count=saturated, offset=start + 8 * saturated
        )
        return cls(
            num_bits, nibbles, over_positions.astype(np.uint64), over_counts.astype(np.uint64)
        )

    # --- reading and changing -------------------------------------------------------------------

    def at(self, bits: np.ndarray) -> np.ndarray:
        """The counts of `bits` (distinct positions), as int64."""
        bits = bits.astype(np.uint64)
        shift = ((bits & np.uint64(1)) * np.uint64(4)).astype(np.uint8)
        counts = ((self._nibbles[(bits >> np.uint64(1)).astype(np.intp)] >> shift) & 15).astype(
            np.int64
        )
        saturated = counts == SATURATED
        if saturated.any():
            where = np.searchsorted(self._over_positions, bits[saturated])
            counts[saturated] = self._over_counts[where].astype(np.int64)
        return counts

    def change(self, added: np.ndarray, removed: np.ndarray) -> np.ndarray:
        """Count the bits of added keys in and of removed keys out (flattened positions, one
        per key and slice); the positions whose bit flips, ascending."""
        touched, inverse = np.unique(
            np.concatenate([added.astype(np.uint64), removed.astype(np.uint64)]),
            return_inverse=True,
        )
        inverse = inverse.ravel()
        up = np.bincount(inverse[: len(added)], minlength=len(touched))
        down = np.bincount(inverse[len(added) :], minlength=len(touched))
        old = self.at(touched)
        new = old + up - down
        if (new < 0).any():
            raise CountsMismatch("the stored filter counts disagree with the entries withdrawn")
        self._set(touched, new)
        flips: np.ndarray = touched[(old > 0) != (new > 0)]
        return flips

    def bits(self) -> bytes:
        """The packed bit array these counts describe: a bit is set when its count is not 0."""
        counts = np.empty(2 * len(self._nibbles), dtype=np.uint8)
        counts[0::2] = self._nibbles & 15
        counts[1::2] = self._nibbles >> 4
        return np.packbits(counts[: self.num_bits] > 0, bitorder="little").tobytes()

    def _set(self, bits: np.ndarray, counts: np.ndarray) -> None:
        nibble = np.minimum(counts, SATURATED).astype(np.uint8)
        byte = (bits >> np.uint64(1)).astype(np.intp)
        even = (bits & np.uint64(1)) == 0
        # Distinct positions: within the even ones (and within the odd ones) bytes are distinct.
        self._nibbles[byte[even]] = (self._nibbles[byte[even]] & 0xF0) | nibble[even]
        self._nibbles[byte[~even]] = (self._nibbles[byte[~even]] & 0x0F) | (nibble[~even] << 4)
        saturated = counts >= SATURATED
        if saturated.any() or len(self._over_positions):
            keep = ~np.isin(self._over_positions, bits)
            positions = np.concatenate([self._over_positions[keep], bits[saturated]])
            values = np.concatenate([self._over_counts[keep], counts[saturated].astype(np.uint64)])
            order = np.argsort(positions, kind="stable")
            self._over_positions, self._over_counts = positions[order], values[order]


def _pack_nibbles(counts: np.ndarray) -> np.ndarray:
    padded = counts if len(counts) % 2 == 0 else np.append(counts, np.uint8(0))
    packed: np.ndarray = padded[0::2] | (padded[1::2] << 4)
    return packed


def _concatenate(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)
