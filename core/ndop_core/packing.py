"""Packed batches: fixed-size records concatenated, as they travel on the wire."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class _Hash(Protocol):
    def copy(self) -> _Hash: ...
    def update(self, data: bytes | memoryview, /) -> None: ...
    def digest(self) -> bytes: ...


def split(packed: bytes, size: int) -> list[bytes]:
    """The records of a packed batch, in order."""
    return [packed[i : i + size] for i in range(0, len(packed), size)]


def hash_each(base: _Hash, packed: bytes, size: int) -> bytes:
    """Concatenated hashes of each record, each hashed from a copy of the prepared `base`."""
    copy = base.copy
    view = memoryview(packed)
    out = []
    for start in range(0, len(view), size):
        h = copy()
        h.update(view[start : start + size])
        out.append(h.digest())
    return b"".join(out)


def unpack_bits(packed: bytes, count: int) -> np.ndarray:
    return np.unpackbits(
        np.frombuffer(packed, dtype=np.uint8), count=count, bitorder="little"
    ).astype(bool)


def pack_bits(flags: np.ndarray) -> bytes:
    return np.packbits(flags.astype(bool), bitorder="little").tobytes()
