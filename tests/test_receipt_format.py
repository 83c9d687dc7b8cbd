"""The receipt file format of docs/receipts.md, against the vector in tests/vectors/receipt/.

The vector verifies with ndop_core, with `ndop receipt verify`, with the OpenSSL recipe of the
document (run as it is written there) and with docs/examples/verify-receipt.mjs; a receipt
altered in any field, or shaped in any way the format does not allow, is refused by ndop and by
the Node script. The receipt carries no NHS number; its payload stands in for blinded elements.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from ndop_client.cli.main import main as ndop_main
from ndop_core import receipts
from ndop_core.errors import ReceiptInvalid, UsageError
from ndop_core.proto import ndop_pb2
from tests.vector_files import load_json, vector_path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "receipts.md"
NODE_SCRIPT = ROOT / "docs" / "examples" / "verify-receipt.mjs"
GENERATOR = ROOT / "scripts" / "make_receipt_vector.py"
VECTOR = vector_path("receipt/receipt.json")
TEST_KEY: dict[str, str] = load_json("receipt/test-key.json")
PUBLIC_KEY = bytes.fromhex(TEST_KEY["public_key_hex"])
KEY_HEX = TEST_KEY["public_key_hex"]
NODE = shutil.which("node")
RECIPE_TOOLS = [shutil.which(tool) for tool in ("openssl", "jq", "xxd")]

needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed")
needs_recipe_tools = pytest.mark.skipif(
    None in RECIPE_TOOLS, reason="the OpenSSL recipe needs openssl, jq and xxd"
)

EXPECTED_STATEMENT: dict[str, Any] = {
    "format": "ndop-receipt/1",
    "organisation": "test-org",
    "request_id": "3f2c8d1e-5b7a-4c9e-8f60-1a2b3c4d5e6f",
    "issued_at": "2025-06-30T12:34:56.789Z",
    "mode": "private",
    "purpose": "research",
    "register_id": "reg-0123456789abcdef",
    "register_version": 42,
    "register_count": 999,
    "items_checked": 5,
    "submitted_sha256": hashlib.sha256(b"".join(bytes([n]) * 32 for n in range(1, 6))).hexdigest(),
}


def vector_text() -> str:
    return VECTOR.read_text(encoding="utf-8")


def vector_data() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(vector_text())
    return data


def vector_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(TEST_KEY["seed_hex"]))


def another_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"another test key").digest())


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


# --- running the three verifiers ----------------------------------------------------------------


def run_ndop(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    try:
        code = ndop_main([str(arg) for arg in args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_node(receipt: Path, key_hex: str = KEY_HEX) -> subprocess.CompletedProcess[str]:
    assert NODE is not None
    return subprocess.run(
        [NODE, str(NODE_SCRIPT), str(receipt), key_hex],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def openssl_recipe() -> str:
    """The shell block under the recipe marker in docs/receipts.md, exactly as written."""
    text = DOC.read_text(encoding="utf-8")
    found = re.search(r"<!-- recipe: openssl[^>]*-->\n```sh\n(.*?)```", text, re.DOTALL)
    assert found, "docs/receipts.md has no marked OpenSSL recipe"
    return found.group(1)


def run_recipe(
    receipt: Path, workdir: Path, key_hex: str = KEY_HEX
) -> subprocess.CompletedProcess[str]:
    workdir.mkdir(exist_ok=True)
    return subprocess.run(
        ["sh", "-c", openssl_recipe()],
        cwd=workdir,
        env={"PATH": os.environ["PATH"], "RECEIPT": str(receipt), "KEY": key_hex},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_sentence(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr
    return lines[0]


# --- the vector verifies -------------------------------------------------------------------------


def test_vector_key_is_the_published_test_key() -> None:
    assert "TEST KEY" in TEST_KEY["warning"]
    assert raw_public(vector_key()) == PUBLIC_KEY
    assert TEST_KEY["key_id"] == receipts.key_id(PUBLIC_KEY)
    assert TEST_KEY["key_id"] == hashlib.sha256(PUBLIC_KEY).hexdigest()[:16]
    assert vector_data()["signing_key_id"] == TEST_KEY["key_id"]


def test_vector_verifies_with_ndop_core() -> None:
    assert receipts.verify_file(VECTOR, PUBLIC_KEY) == EXPECTED_STATEMENT
    assert receipts.verify_text(vector_text(), PUBLIC_KEY) == EXPECTED_STATEMENT
    assert receipts.verify(vector_data(), PUBLIC_KEY) == EXPECTED_STATEMENT
    assert vector_data()["statement"] == EXPECTED_STATEMENT


def test_vector_body_is_the_deterministic_serialization() -> None:
    body = base64.b64decode(vector_data()["body"])
    message = ndop_pb2.ReceiptBody.FromString(body)
    assert message.SerializeToString(deterministic=True) == body
    assert (message.issued_at.seconds, message.issued_at.nanos) == (1751286896, 789000000)


def test_vector_is_reproduced_by_its_generator(tmp_path: Path) -> None:
    made = subprocess.run(
        [sys.executable, str(GENERATOR), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    for name in ("receipt.json", "test-key.json"):
        assert (tmp_path / name).read_bytes() == vector_path(f"receipt/{name}").read_bytes()


def test_ndop_receipt_verify_accepts_the_vector(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run_ndop(capsys, "receipt", "verify", VECTOR, "--public-key", KEY_HEX)
    assert (code, err) == (0, "")
    assert out.startswith("receipt verified")
    assert json.loads(out[out.index("{") :]) == EXPECTED_STATEMENT
    key_file = tmp_path / "public.key"
    key_file.write_text(KEY_HEX + "\n")
    code, _, err = run_ndop(capsys, "receipt", "verify", VECTOR, "--public-key", key_file)
    assert (code, err) == (0, "")


@needs_recipe_tools
def test_openssl_recipe_verifies_the_vector(tmp_path: Path) -> None:
    result = run_recipe(VECTOR, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Signature Verified Successfully" in result.stdout
    assert (tmp_path / "body.bin").read_bytes() == base64.b64decode(vector_data()["body"])


def _documented_decode_raw() -> str:
    text = DOC.read_text(encoding="utf-8")
    found = re.search(r"\$ protoc --decode_raw < body.bin\n(.*?)\$ ", text, re.DOTALL)
    assert found, "docs/receipts.md shows no protoc --decode_raw output"
    return found.group(1)


@needs_recipe_tools
def test_decode_raw_output_in_the_document_is_the_vectors(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="protoc comes with grpcio-tools")
    assert run_recipe(VECTOR, tmp_path).returncode == 0
    decoded = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "--decode_raw"],
        input=(tmp_path / "body.bin").read_bytes(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert decoded.returncode == 0, decoded.stderr
    assert decoded.stdout.decode() == _documented_decode_raw()


@needs_node
def test_node_script_verifies_the_vector() -> None:
    result = run_node(VECTOR)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("receipt verified")
    assert json.loads(result.stdout[result.stdout.index("{") :]) == EXPECTED_STATEMENT


# --- alterations every verifier refuses ---------------------------------------------------------

Alteration = Callable[[str], str]


def in_json(change: Callable[[dict[str, Any]], None]) -> Alteration:
    def alter(text: str) -> str:
        data = json.loads(text)
        change(data)
        return json.dumps(data, indent=2) + "\n"

    return alter


_ABSENT = object()


def set_field(path: str, value: Any) -> Alteration:
    """`statement.mode` or `signature`: set one field of the file to another value."""

    def change(data: dict[str, Any]) -> None:
        *parents, name = path.split(".")
        target = data
        for parent in parents:
            target = target[parent]
        before = target.get(name, _ABSENT)
        assert before != value or type(before) is not type(value)
        target[name] = value

    return in_json(change)


def delete_field(path: str) -> Alteration:
    def change(data: dict[str, Any]) -> None:
        *parents, name = path.split(".")
        target = data
        for parent in parents:
            target = target[parent]
        del target[name]

    return in_json(change)


def flip_byte(name: str, position: int) -> Alteration:
    def change(data: dict[str, Any]) -> None:
        raw = bytearray(base64.b64decode(data[name]))
        raw[position] ^= 0x01
        data[name] = b64(bytes(raw))

    return in_json(change)


def replace_text(old: str, new: str) -> Alteration:
    def alter(text: str) -> str:
        assert old in text
        return text.replace(old, new, 1)

    return alter


BASE64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def noncanonical_base64(name: str) -> Alteration:
    """The same bytes in base64 with a padding bit set, which lenient decoders accept."""

    def change(data: dict[str, Any]) -> None:
        text: str = data[name]
        last = BASE64_ALPHABET.index(text[-3])
        assert text.endswith("==") and last & 0x0F == 0  # four unused bits, all zero
        data[name] = text[:-3] + BASE64_ALPHABET[last | 1] + "=="
        assert base64.b64decode(data[name]) == base64.b64decode(text)

    return in_json(change)


def wrapped_base64(name: str) -> Alteration:
    def change(data: dict[str, Any]) -> None:
        data[name] = data[name][:76] + "\n" + data[name][76:]

    return in_json(change)


def signed_body(
    body: bytes, key: Ed25519PrivateKey | None = None, key_id: str | None = None
) -> Alteration:
    """A receipt whose signature over `body` verifies (with the test key unless another key is
    given); the statement is set to what the body says wherever ndop can read it."""
    signer = key or vector_key()

    def change(data: dict[str, Any]) -> None:
        data["body"] = b64(body)
        data["signature"] = b64(signer.sign(body))
        data["signing_key_id"] = key_id or receipts.key_id(raw_public(signer))
        # A body that is not a ReceiptBody at all leaves the statement as it was.
        with contextlib.suppress(DecodeError, ValueError):
            data["statement"] = receipts.statement(ndop_pb2.ReceiptBody.FromString(body))

    return in_json(change)


def vector_body() -> bytes:
    return base64.b64decode(vector_data()["body"])


def restated(**changes: Any) -> bytes:
    body = ndop_pb2.ReceiptBody.FromString(vector_body())
    for name, value in changes.items():
        setattr(body, name, value)
    return body.SerializeToString(deterministic=True)


def with_issued_at(seconds: int, nanos: int) -> bytes:
    body = ndop_pb2.ReceiptBody.FromString(vector_body())
    body.issued_at.seconds, body.issued_at.nanos = seconds, nanos
    return body.SerializeToString(deterministic=True)


def bad_utf8() -> bytes:
    body = vector_body()
    assert b"\x12\x08test-org" in body
    return body.replace(b"\x12\x08test-org", b"\x12\x08test-\xffrg")


def field_bytes(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2) with a one-byte tag and length."""
    return bytes([(number << 3) | 2, len(payload)]) + payload


def out_of_order() -> bytes:
    body = vector_body()
    first = field_bytes(1, b"ndop-receipt/1")
    assert body.startswith(first)
    return body[len(first) :] + first


OTHER_ID = receipts.key_id(raw_public(another_key()))

ALTERATIONS: dict[str, Alteration] = {
    # every statement field
    "statement.format": set_field("statement.format", "ndop-receipt/2"),
    "statement.organisation": set_field("statement.organisation", "other-org"),
    "statement.request_id": set_field(
        "statement.request_id", "3f2c8d1e-5b7a-4c9e-8f60-1a2b3c4d5e70"
    ),
    "statement.issued_at": set_field("statement.issued_at", "2025-06-30T12:34:56.788Z"),
    "statement.issued_at-same-instant": set_field(
        "statement.issued_at", "2025-06-30T12:34:56.789000Z"
    ),
    "statement.mode": set_field("statement.mode", "hashed"),
    "statement.purpose": set_field("statement.purpose", "planning"),
    "statement.register_id": set_field("statement.register_id", "reg-fedcba9876543210"),
    "statement.register_version": set_field("statement.register_version", 43),
    "statement.register_version-string": set_field("statement.register_version", "42"),
    "statement.register_version-float": set_field("statement.register_version", 42.0),
    "statement.register_count": set_field("statement.register_count", 998),
    "statement.register_count-string": set_field("statement.register_count", "999"),
    "statement.items_checked": set_field("statement.items_checked", 4),
    "statement.items_checked-bool": set_field("statement.items_checked", True),
    "statement.submitted_sha256": set_field("statement.submitted_sha256", "00" * 32),
    "statement.submitted_sha256-uppercase": set_field(
        "statement.submitted_sha256", EXPECTED_STATEMENT["submitted_sha256"].upper()
    ),
    "statement-not-object": set_field("statement", [EXPECTED_STATEMENT]),
    # the envelope
    "format": set_field("format", "ndop-receipt/2"),
    "signing_key_id": set_field("signing_key_id", OTHER_ID),
    "signing_key_id-uppercase": set_field("signing_key_id", TEST_KEY["key_id"].upper()),
    "body-first-byte": flip_byte("body", 0),
    "body-middle-byte": flip_byte("body", 80),
    "body-last-byte": flip_byte("body", -1),
    "body-noncanonical-base64": noncanonical_base64("body"),
    "body-wrapped-base64": wrapped_base64("body"),
    "body-not-base64": set_field("body", "not base64!"),
    "signature-byte": flip_byte("signature", 10),
    "signature-noncanonical-base64": noncanonical_base64("signature"),
    "signature-truncated": in_json(lambda data: data.update(signature=data["signature"][:-4])),
    "signature-empty": set_field("signature", ""),
    # fields that are not part of the format, or given twice
    "extra-top-level-field": set_field("comment", "verified by hand"),
    "extra-statement-field": set_field("statement.opted_out", 2),
    "duplicate-top-level-signature": replace_text(
        '\n  "signature"', '\n  "signature": "",\n  "signature"'
    ),
    "duplicate-statement-mode": replace_text(
        '"mode": "private",', '"mode": "hashed",\n    "mode": "private",'
    ),
    "duplicate-statement-mode-same-value": replace_text(
        '"mode": "private",', '"mode": "private",\n    "mode": "private",'
    ),
    # well signed, yet not by this key or not a receipt the format allows
    "signed-by-another-key": signed_body(vector_body(), another_key()),
    "signed-by-another-key-claiming-this-id": signed_body(
        restated(organisation="forger-org"), another_key(), TEST_KEY["key_id"]
    ),
    "signed-body-not-protobuf": signed_body(b"\xff" * 20),
    "signed-body-unknown-field": signed_body(vector_body() + field_bytes(12, b"unsigned?")),
    "signed-body-out-of-order": signed_body(out_of_order()),
    "signed-body-wrong-wire-type": signed_body(vector_body() + bytes([(8 << 3) | 2, 1, 42])),
    "signed-body-other-format": signed_body(restated(format="ndop-receipt/0")),
    "signed-body-truncated": signed_body(vector_body()[:-5]),
    "signed-body-string-not-utf8": signed_body(bad_utf8()),
    "signed-body-issued-after-9999": signed_body(with_issued_at(253402300800, 0)),
    "signed-body-negative-nanos": signed_body(with_issued_at(1751286896, -1)),
}
ALTERATIONS.update({f"missing-{name}": delete_field(name) for name in receipts.RECEIPT_FIELDS})
ALTERATIONS.update(
    {f"missing-statement.{name}": delete_field(f"statement.{name}") for name in EXPECTED_STATEMENT}
)


def altered_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.receipt.json"
    path.write_text(ALTERATIONS[name](vector_text()), encoding="utf-8")
    return path


def assert_no_receipt_bytes(message: str) -> None:
    data = vector_data()
    for secret in (
        data["body"][:12],
        data["signature"][:12],
        EXPECTED_STATEMENT["submitted_sha256"][:12],
        EXPECTED_STATEMENT["request_id"],
        "test-org",
        "other-org",
        "forger-org",
    ):
        assert secret.lower() not in message.lower()


def test_every_statement_and_envelope_field_is_altered() -> None:
    altered = {name.split("-")[0] for name in ALTERATIONS}
    for field in EXPECTED_STATEMENT:
        assert f"statement.{field}" in altered
    for field in receipts.RECEIPT_FIELDS:
        assert field in altered


@pytest.mark.parametrize("name", sorted(ALTERATIONS))
def test_ndop_core_refuses(name: str, tmp_path: Path) -> None:
    path = altered_file(tmp_path, name)
    with pytest.raises(ReceiptInvalid) as refused:
        receipts.verify_file(path, PUBLIC_KEY)
    message = str(refused.value)
    assert message.count(". ") == 0 and "\n" not in message
    assert_no_receipt_bytes(message)


@pytest.mark.parametrize("name", sorted(ALTERATIONS))
def test_ndop_receipt_verify_refuses_with_exit_1(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = altered_file(tmp_path, name)
    code, out, err = run_ndop(capsys, "receipt", "verify", path, "--public-key", KEY_HEX)
    assert code == 1
    assert one_sentence(err).startswith("ndop: ")
    assert "verified" not in out
    assert_no_receipt_bytes(err)


@needs_node
@pytest.mark.parametrize("name", sorted(ALTERATIONS))
def test_node_script_refuses(name: str, tmp_path: Path) -> None:
    result = run_node(altered_file(tmp_path, name))
    assert result.returncode == 1, result.stdout
    assert one_sentence(result.stderr).startswith("receipt NOT verified: ")
    assert "verified:" not in result.stdout


def test_only_ndop_refuses_a_spelled_out_default() -> None:
    """A body that encodes register_count = 0 explicitly is not what the server writes; the Node
    script accepts it (docs/receipts.md says so), ndop does not."""
    explicit_zero = restated(register_count=0) + bytes([9 << 3, 0])
    text = signed_body(explicit_zero)(vector_text())
    with pytest.raises(ReceiptInvalid, match="canonical"):
        receipts.verify_text(text, PUBLIC_KEY)


# --- the OpenSSL recipe refuses what it checks --------------------------------------------------


@needs_recipe_tools
@pytest.mark.parametrize(
    "name",
    [
        "body-first-byte",
        "body-middle-byte",
        "body-last-byte",
        "signature-byte",
        "signing_key_id",
        "signed-by-another-key-claiming-this-id",
    ],
)
def test_openssl_recipe_refuses(name: str, tmp_path: Path) -> None:
    result = run_recipe(altered_file(tmp_path, name), tmp_path / "work")
    assert result.returncode != 0
    assert "Signature Verified Successfully" not in result.stdout


@needs_recipe_tools
def test_openssl_recipe_refuses_another_public_key(tmp_path: Path) -> None:
    result = run_recipe(VECTOR, tmp_path, raw_public(another_key()).hex())
    assert result.returncode == 1
    assert "another signing key" in result.stderr


# --- the shape of the file and the key ------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        "null",
        '"ndop-receipt/1"',
        '{"format": "ndop-receipt/1"}',
        '{"format": "ndop-receipt/1", "x": NaN}',
        "[" * 100_000,
        '{"format": "ndop-receipt/1", "n": ' + "9" * 5000 + "}",
    ],
    ids=lambda text: text[:24] or "empty",
)
def test_malformed_text_is_refused_in_one_sentence(text: str) -> None:
    with pytest.raises(ReceiptInvalid):
        receipts.verify_text(text, PUBLIC_KEY)


def test_other_public_key_is_refused() -> None:
    with pytest.raises(ReceiptInvalid, match="other than the public key"):
        receipts.verify_file(VECTOR, raw_public(another_key()))


@pytest.mark.parametrize("key", [b"", b"\x00" * 31, b"\x00" * 33])
def test_public_key_of_the_wrong_size_is_a_usage_error(key: bytes) -> None:
    with pytest.raises(UsageError):
        receipts.verify(vector_data(), key)


def test_dict_entry_point_still_refuses_the_shapes_it_can_see() -> None:
    data = vector_data()
    bad: Any
    for bad in (None, [], "x", {**data, "extra": 1}, {**data, "statement": {}}):
        with pytest.raises(ReceiptInvalid):
            receipts.verify(copy.deepcopy(bad), PUBLIC_KEY)


def test_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(vector_text().replace("test-org", "t\xe9st-org").encode("latin-1"))
    with pytest.raises(ReceiptInvalid):
        receipts.verify_file(path, PUBLIC_KEY)


@settings(max_examples=150, deadline=None)
@given(body=st.binary(max_size=200))
def test_any_signed_bytes_give_a_statement_or_receipt_invalid(body: bytes) -> None:
    text = signed_body(body)(vector_text())
    try:
        statement = receipts.verify_text(text, PUBLIC_KEY)
    except ReceiptInvalid:
        return
    assert body == ndop_pb2.ReceiptBody.FromString(body).SerializeToString(deterministic=True)
    assert statement["format"] == receipts.FORMAT


# --- exit codes of `ndop receipt verify` ---------------------------------------------------------


def test_exit_codes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    def verify(receipt: Path, key: str) -> int:
        code, _, err = run_ndop(capsys, "receipt", "verify", receipt, "--public-key", key)
        if code:
            assert one_sentence(err).startswith("ndop: ")
        return code

    tampered = altered_file(tmp_path, "statement.items_checked")
    other = raw_public(another_key()).hex()
    assert verify(VECTOR, KEY_HEX) == 0
    assert verify(tampered, KEY_HEX) == 1
    assert verify(VECTOR, other) == 1
    assert verify(tmp_path / "missing.json", KEY_HEX) == 2
    assert verify(tmp_path, KEY_HEX) == 2  # a directory
    for bad_key in ("", "abc", "zz" * 32, "00" * 33, str(tmp_path / "no-key-file")):
        assert verify(VECTOR, bad_key) == 2
