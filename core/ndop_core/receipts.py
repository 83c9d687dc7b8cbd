"""Signed compliance receipts: the file `ndop check` writes, and how an auditor verifies it.

A receipt is the server's Ed25519 signature over a serialized ReceiptBody. The file keeps the
exact signed bytes (base64) beside a readable copy of the statement; verification checks the
signature over the bytes and that the readable copy says the same thing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from ndop_core.errors import ReceiptInvalid, UsageError
from ndop_core.files import write_json_atomically
from ndop_core.proto import ndop_pb2

FORMAT: Final = "ndop-receipt/1"


def key_id(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:16]


def statement(body: ndop_pb2.ReceiptBody) -> dict[str, Any]:
    return {
        "format": body.format,
        "organisation": body.organisation,
        "request_id": body.request_id,
        "issued_at": body.issued_at.ToJsonString(),
        "mode": body.mode,
        "purpose": body.purpose,
        "register_id": body.register_id,
        "register_version": body.register_version,
        "register_count": body.register_count,
        "items_checked": body.items_checked,
        "submitted_sha256": body.submitted_sha256.hex(),
    }


def to_json(receipt: ndop_pb2.Receipt) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "statement": statement(ndop_pb2.ReceiptBody.FromString(receipt.body)),
        "signing_key_id": receipt.signing_key_id,
        "body": base64.b64encode(receipt.body).decode("ascii"),
        "signature": base64.b64encode(receipt.signature).decode("ascii"),
    }


def write(receipt: ndop_pb2.Receipt, path: Path) -> None:
    write_json_atomically(to_json(receipt), path, "receipt")


def read_public_key(text_or_path: str) -> bytes:
    """A raw Ed25519 public key from hex (as `ndop keys public` prints) or a file holding it."""
    candidate = text_or_path.strip()
    if not _is_hex_key(candidate):
        try:
            candidate = Path(candidate).read_text().strip()
        except OSError as exc:
            raise UsageError(
                "--public-key must be 64 hex characters or a file holding them"
            ) from exc
    if not _is_hex_key(candidate):
        raise UsageError("--public-key must be 64 hex characters or a file holding them")
    return bytes.fromhex(candidate)


def _is_hex_key(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


def verify(data: Any, public_key: bytes) -> dict[str, Any]:
    """The receipt's statement if its signature and contents hold; ReceiptInvalid otherwise."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ReceiptInvalid(f"this is not an {FORMAT} receipt")
    try:
        body = base64.b64decode(data["body"], validate=True)
        signature = base64.b64decode(data["signature"], validate=True)
    except (KeyError, TypeError, binascii.Error) as exc:
        raise ReceiptInvalid("the receipt's body or signature is missing or not base64") from exc
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, body)
    except (InvalidSignature, ValueError) as exc:
        raise ReceiptInvalid(
            "the signature does not verify: the receipt was altered or signed by another key"
        ) from exc
    try:
        signed = statement(ndop_pb2.ReceiptBody.FromString(body))
    except DecodeError as exc:
        raise ReceiptInvalid("the signed body is not a receipt") from exc
    if signed.get("format") != FORMAT:
        raise ReceiptInvalid(f"the signed body is not an {FORMAT} receipt")
    if data.get("statement") != signed:
        raise ReceiptInvalid("the readable statement differs from what the server signed")
    return signed


def verify_file(path: Path, public_key: bytes) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read receipt {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ReceiptInvalid(f"receipt {path} is not JSON") from exc
    return verify(data, public_key)
