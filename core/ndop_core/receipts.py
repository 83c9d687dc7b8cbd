"""Signed compliance receipts: the file `ndop check` writes, and how an auditor verifies it.

A receipt is the server's Ed25519 signature over a serialized ReceiptBody. The file keeps the
exact signed bytes (base64) beside a readable copy of the statement; verification checks the
signature over the bytes and that the readable copy says the same thing. docs/receipts.md
describes the format; verification refuses anything it does not allow (duplicate or extra keys,
other types, non-canonical base64 or protobuf), so no unsigned part of a file can be read as
if it were signed.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

from google.protobuf.message import DecodeError

from ndop_core.errors import ReceiptInvalid, UsageError
from ndop_core.files import write_json_atomically
from ndop_core.proto import ndop_pb2

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

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


RECEIPT_FIELDS: Final[dict[str, type]] = {
    "format": str,
    "statement": dict,
    "signing_key_id": str,
    "body": str,
    "signature": str,
}
STATEMENT_FIELDS: Final[dict[str, type]] = {
    "format": str,
    "organisation": str,
    "request_id": str,
    "issued_at": str,
    "mode": str,
    "purpose": str,
    "register_id": str,
    "register_version": int,
    "register_count": int,
    "items_checked": int,
    "submitted_sha256": str,
}
_TYPE_NAMES: Final[dict[type, str]] = {str: "a string", int: "an integer", dict: "an object"}
_SIGNATURE_BYTES: Final = 64


def verify(data: Any, public_key: bytes) -> dict[str, Any]:
    """The receipt's statement if its signature and contents hold; ReceiptInvalid otherwise.

    `data` is the parsed JSON file; `verify_text` also refuses duplicate keys, which a parsed
    dict can no longer show.
    """
    verifier = _verifier(public_key)
    _check_shape(data)
    if data["signing_key_id"] != key_id(public_key):
        raise ReceiptInvalid("the receipt names a signing key other than the public key given")
    body = _base64(data["body"], "body")
    signature = _base64(data["signature"], "signature")
    _check_signature(verifier, signature, body)
    signed = _signed_statement(body)
    _check_statement(data["statement"], signed)
    return signed


def verify_text(text: str, public_key: bytes) -> dict[str, Any]:
    """`verify` for the text of a receipt file."""
    return verify(_parse(text), public_key)


def verify_file(path: Path, public_key: bytes) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read receipt {path}: {exc.strerror or 'unreadable'}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReceiptInvalid(f"receipt {path} is not UTF-8 JSON") from exc
    return verify_text(text, public_key)


def _parse(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise ReceiptInvalid("the receipt is not JSON") from exc


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        raise ReceiptInvalid("the receipt gives a key twice, so it can be read two ways")
    return data


def _no_constant(name: str) -> NoReturn:
    raise ReceiptInvalid("the receipt holds a number that is not finite")


def _verifier(public_key: bytes) -> Ed25519PublicKey:
    # Loaded when a receipt is verified: `ndop check` only writes receipts.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        return Ed25519PublicKey.from_public_bytes(public_key)
    except (TypeError, ValueError) as exc:
        raise UsageError("the public key must be 32 raw bytes (64 hex characters)") from exc


def _check_shape(data: Any) -> None:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ReceiptInvalid(f"this is not an {FORMAT} receipt")
    _check_fields(data, RECEIPT_FIELDS, "the receipt")
    _check_fields(data["statement"], STATEMENT_FIELDS, "the receipt's statement")


def _check_fields(data: dict[str, Any], fields: dict[str, type], where: str) -> None:
    """Exactly the format's fields, each of its JSON type (a bool is not an integer here)."""
    for name, kind in fields.items():
        if name not in data:
            raise ReceiptInvalid(f"{where} lacks the field {name}")
        if type(data[name]) is not kind:
            raise ReceiptInvalid(f"{where} field {name} is not {_TYPE_NAMES[kind]}")
    if len(data) != len(fields):
        raise ReceiptInvalid(f"{where} has fields that are not part of {FORMAT} and not signed")


def _base64(text: str, name: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise ReceiptInvalid(f"the receipt's {name} is not base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise ReceiptInvalid(f"the receipt's {name} is not canonical base64")
    return raw


def _check_signature(verifier: Ed25519PublicKey, signature: bytes, body: bytes) -> None:
    from cryptography.exceptions import InvalidSignature

    if len(signature) != _SIGNATURE_BYTES:
        raise ReceiptInvalid("the receipt's signature is not an Ed25519 signature")
    try:
        verifier.verify(signature, body)
    except InvalidSignature as exc:
        raise ReceiptInvalid(
            "the signature does not verify: the receipt was altered or signed by another key"
        ) from exc


def _signed_statement(body: bytes) -> dict[str, Any]:
    try:
        message = ndop_pb2.ReceiptBody.FromString(body)
        signed = statement(message)
    except (DecodeError, ValueError) as exc:
        raise ReceiptInvalid("the signed body is not a ReceiptBody") from exc
    # Unknown fields, repeats or another field order would be signed yet absent from the
    # statement; the server only ever signs the deterministic serialization.
    message.DiscardUnknownFields()
    if message.SerializeToString(deterministic=True) != body:
        raise ReceiptInvalid("the signed body is not in the canonical encoding the server signs")
    if signed["format"] != FORMAT:
        raise ReceiptInvalid(f"the signed body is not an {FORMAT} receipt")
    return signed


def _check_statement(readable: dict[str, Any], signed: dict[str, Any]) -> None:
    for name in STATEMENT_FIELDS:
        if readable[name] != signed[name]:
            raise ReceiptInvalid(
                f"the readable statement's {name} differs from what the server signed"
            )
