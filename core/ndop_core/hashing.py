"""Hashed-mode digests: a keyed hash of the canonical NHS number with the register's salt.

    digest = SHA-256(DOMAIN || salt || canonical)

DOMAIN names the scheme and its version, so digests from a future scheme can never be mistaken
for these; salt (32 bytes, published by the register) and canonical (ten ASCII digits) have
fixed lengths, so the concatenation is unambiguous. See docs/hashing.md for why this keeps raw
numbers off the wire but not out of reach of whoever holds the salt.
"""

from __future__ import annotations

import hashlib
from typing import Final

import numpy as np

from ndop_core.errors import UnsupportedServer
from ndop_core.packing import hash_all

SCHEME: Final = "ndop-sha256-v1"
DOMAIN: Final = b"ndop-sha256-v1/nhs-number\x00"
SALT_SIZE: Final = 32
DIGEST_SIZE: Final = 32
CANONICAL_SIZE: Final = 10


class Hasher:
    """Computes digests for one register salt; reuses the hashed prefix for speed."""

    def __init__(self, salt: bytes, scheme: str = SCHEME) -> None:
        if scheme != SCHEME:
            raise UnsupportedServer(
                f"the register uses hashing scheme {scheme!r}; this implementation knows {SCHEME!r}"
            )
        if len(salt) != SALT_SIZE:
            raise UnsupportedServer(f"the register salt must be {SALT_SIZE} bytes")
        self._prefix = hashlib.sha256(DOMAIN + salt)
        self._prefix_bytes = np.frombuffer(DOMAIN + salt, dtype=np.uint8)

    def digest(self, canonical: str) -> bytes:
        """The digest of one canonical ten-digit NHS number."""
        h = self._prefix.copy()
        h.update(canonical.encode("ascii"))
        return h.digest()

    def digest_packed(self, canonical_blob: bytes) -> bytes:
        """Concatenated digests of concatenated ten-byte canonical numbers, in order."""
        # Whole messages, built with NumPy, cost one call each into hashlib where a copy of
        # the hashed prefix costs two (and the prefix is shorter than one SHA-256 block, so
        # a copy saves no hashing).
        numbers = np.frombuffer(canonical_blob, dtype=np.uint8).reshape(-1, CANONICAL_SIZE)
        width = len(self._prefix_bytes) + CANONICAL_SIZE
        messages = np.empty((len(numbers), width), dtype=np.uint8)
        messages[:, : len(self._prefix_bytes)] = self._prefix_bytes
        messages[:, len(self._prefix_bytes) :] = numbers
        # NumPy drops trailing NUL bytes from S items; every message ends in an ASCII digit.
        return hash_all(hashlib.sha256, messages.view(f"S{width}").ravel().tolist())


def digests(salt: bytes, scheme: str, canonical_blob: bytes) -> bytes:
    """`Hasher(salt, scheme).digest_packed(canonical_blob)`, for a worker process."""
    return Hasher(salt, scheme).digest_packed(canonical_blob)
