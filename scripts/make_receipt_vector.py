"""Write tests/vectors/receipt/: an ndop-receipt/1 receipt signed by a published TEST key.

The receipt is signed the way the server signs (ReceiptSigner) and written the way the client
writes it (ndop_core.receipts.write). Ed25519 signatures are deterministic, so running this
again writes the same bytes. Usage: python scripts/make_receipt_vector.py [OUTPUT_DIR]
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.protobuf.timestamp_pb2 import Timestamp

from ndop_core import receipts
from ndop_core.proto import ndop_pb2
from ndop_server.receipts import ReceiptSigner

DEFAULT_OUT: Final = Path(__file__).resolve().parents[1] / "tests" / "vectors" / "receipt"
# TEST KEY: its seed is published beside the vector, so it proves nothing about any real check.
TEST_SEED: Final = hashlib.sha256(b"ndop receipt test vector - TEST KEY ONLY").digest()
# Five 32-byte stand-ins for blinded elements, in the order a client would send them.
SUBMITTED: Final = tuple(bytes([n]) * 32 for n in range(1, 6))


def body() -> ndop_pb2.ReceiptBody:
    issued_at = Timestamp()
    issued_at.FromJsonString("2025-06-30T12:34:56.789Z")
    return ndop_pb2.ReceiptBody(
        format=receipts.FORMAT,
        organisation="test-org",
        request_id="3f2c8d1e-5b7a-4c9e-8f60-1a2b3c4d5e6f",
        issued_at=issued_at,
        mode="private",
        purpose="research",
        register_id="reg-0123456789abcdef",
        register_version=42,
        register_count=999,
        items_checked=len(SUBMITTED),
        submitted_sha256=hashlib.sha256(b"".join(SUBMITTED)).digest(),
    )


def key_record(key: Ed25519PrivateKey) -> dict[str, str]:
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {
        "warning": "TEST KEY ONLY: this seed is public; never sign a real receipt with it",
        "algorithm": "Ed25519",
        "seed_hex": TEST_SEED.hex(),
        "public_key_hex": public.hex(),
        "key_id": receipts.key_id(public),
    }


def make(out_dir: Path) -> None:
    key = Ed25519PrivateKey.from_private_bytes(TEST_SEED)
    out_dir.mkdir(parents=True, exist_ok=True)
    receipts.write(ReceiptSigner(key).sign(body()), out_dir / "receipt.json")
    (out_dir / "test-key.json").write_text(json.dumps(key_record(key), indent=2) + "\n")


if __name__ == "__main__":
    make(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
