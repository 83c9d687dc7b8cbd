"""Packed batches: fixed-size records concatenated, as they travel on the wire."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from itertools import repeat
from typing import Final, Protocol

import numpy as np

_HASHED_AT_ONCE: Final = 4096


class _Hash(Protocol):
    def copy(self) -> _Hash: ...
    def update(self, data: bytes | memoryview, /) -> None: ...
    def digest(self) -> bytes: ...


def split(packed: bytes, size: int) -> list[bytes]:
    """The records of a packed batch, in order."""
    return [packed[i : i + size] for i in range(0, len(packed), size)]


def hash_each(base: _Hash, packed: bytes, size: int) -> bytes:
    """Concatenated hashes of each `size`-byte record of `packed` (whole records only), each
    hashed from a copy of the prepared `base`.

    Every step runs in C: `map` over hashlib's own methods, never a Python statement per
    record, a few thousand records at a time so that the hash objects stay in cache."""
    kind = type(base)
    copy, update, digest = kind.copy, kind.update, kind.digest
    record = packed.__getitem__
    step = _HASHED_AT_ONCE * size
    out = []
    for first in range(0, len(packed), step):
        last = min(first + step, len(packed))
        starts, ends = range(first, last, size), range(first + size, last + size, size)
        hashes = list(map(copy, repeat(base, len(starts))))
        deque(map(update, hashes, map(record, map(slice, starts, ends))), 0)
        out.append(b"".join(map(digest, hashes)))
    return b"".join(out)


def hash_all(new: Callable[[bytes], _Hash], messages: list[bytes]) -> bytes:
    """Concatenated hashes `new(message).digest()` of each message, with `hash_each`'s loop."""
    if not messages:
        return b""
    digest = type(new(b"")).digest
    return b"".join(
        [
            b"".join(map(digest, map(new, messages[first : first + _HASHED_AT_ONCE])))
            for first in range(0, len(messages), _HASHED_AT_ONCE)
        ]
    )


def unpack_bits(packed: bytes, count: int) -> np.ndarray:
    return np.unpackbits(
        np.frombuffer(packed, dtype=np.uint8), count=count, bitorder="little"
    ).astype(bool)


def pack_bits(flags: np.ndarray) -> bytes:
    return np.packbits(flags.astype(bool), bitorder="little").tobytes()
