"""Signing the receipt that ends every completed check (Ed25519 key from the keys file)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ndop_core.proto import ndop_pb2
from ndop_core.receipts import key_id


class ReceiptSigner:
    def __init__(self, signing_key: Ed25519PrivateKey) -> None:
        self._key = signing_key
        public = signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = key_id(public)

    def sign(self, body: ndop_pb2.ReceiptBody) -> ndop_pb2.Receipt:
        serialized = body.SerializeToString(deterministic=True)
        return ndop_pb2.Receipt(
            body=serialized, signature=self._key.sign(serialized), signing_key_id=self.key_id
        )
