"""Store tokens: the client's digest keyed once more with the secret store key.

    token_key = HMAC-SHA256(store_key, "ndop-token-v2/aes-256")
    token     = AES-256(token_key, AES-256(token_key, digest[0:16]) XOR digest[16:32])

that is, the CBC-MAC of the 32-byte digest under a key derived from the store key: every
digest has the same length, and for messages of one fixed length CBC-MAC is a pseudorandom
function, as the keyed BLAKE2b of ndop-token-v1 was. Its two AES passes run over a whole
batch in two calls to OpenSSL rather than one Python call per digest (docs/hashing.md).

The store and the in-memory index only ever hold tokens, so a copy of the store without the
keys file cannot be matched against digests computed from the public salt.

Keys files made before ndop-token-v2 hold a LegacyStoreKey: their stores hold
ndop-token-v1 tokens, token = BLAKE2b-128(key=store_key, person="ndop-token-v1", digest),
and keep them until `ndop keys rotate --register` makes every entry again.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ndop_core.packing import hash_each

TOKEN_SIZE: Final = 16
SCHEME: Final = "ndop-token-v2"
LEGACY_SCHEME: Final = "ndop-token-v1"
_KEY_LABEL: Final = b"ndop-token-v2/aes-256"
_LEGACY_PERSON: Final = b"ndop-token-v1"
_BLOCK: Final = 16


class LegacyStoreKey(bytes):
    """A store key whose store holds ndop-token-v1 tokens (a keys file made before v2)."""


class Tokenizer:
    def __init__(self, store_key: bytes) -> None:
        self.scheme = LEGACY_SCHEME if isinstance(store_key, LegacyStoreKey) else SCHEME
        self._legacy = (
            hashlib.blake2b(key=store_key, digest_size=TOKEN_SIZE, person=_LEGACY_PERSON)
            if self.scheme == LEGACY_SCHEME
            else None
        )
        token_key = hmac.new(store_key, _KEY_LABEL, hashlib.sha256).digest()
        self._cipher = Cipher(algorithms.AES(token_key), modes.ECB())

    def tokens(self, packed_digests: bytes, digest_size: int) -> bytes:
        """Concatenated tokens for concatenated digests, in order."""
        if self._legacy is not None:
            return hash_each(self._legacy, packed_digests, digest_size)
        if digest_size != 2 * _BLOCK:
            raise ValueError(f"{SCHEME} keys digests of {2 * _BLOCK} bytes")
        halves = np.frombuffer(packed_digests, dtype=np.uint8).reshape(-1, 2, _BLOCK)
        encrypt = self._cipher.encryptor()
        first = np.frombuffer(encrypt.update(halves[:, 0].tobytes()), dtype=np.uint8)
        chained = first.reshape(-1, _BLOCK) ^ halves[:, 1]
        return encrypt.update(chained.tobytes()) + encrypt.finalize()


def index_keys(packed_tokens: bytes) -> np.ndarray:
    """The 64-bit keys the in-memory index compares: each token's first eight bytes."""
    return np.frombuffer(packed_tokens, dtype="<u8")[:: TOKEN_SIZE // 8]
