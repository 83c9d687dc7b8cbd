"""Store tokens: the client's digest keyed once more with the secret store key.

    token = BLAKE2b-128(key=store_key, person="ndop-token-v1", digest)

The store and the in-memory index only ever hold tokens, so a copy of the store without the
keys file cannot be matched against digests computed from the public salt.
"""

from __future__ import annotations

import hashlib
from typing import Final

import numpy as np

from ndop_core.packing import hash_each

TOKEN_SIZE: Final = 16
_PERSON: Final = b"ndop-token-v1"


class Tokenizer:
    def __init__(self, store_key: bytes) -> None:
        self._base = hashlib.blake2b(key=store_key, digest_size=TOKEN_SIZE, person=_PERSON)

    def tokens(self, packed_digests: bytes, digest_size: int) -> bytes:
        """Concatenated tokens for concatenated digests, in order."""
        return hash_each(self._base, packed_digests, digest_size)


def index_keys(packed_tokens: bytes) -> np.ndarray:
    """The 64-bit keys the in-memory index compares: each token's first eight bytes."""
    return np.frombuffer(packed_tokens, dtype="<u8")[:: TOKEN_SIZE // 8]
