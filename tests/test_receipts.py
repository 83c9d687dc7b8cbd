"""Signed compliance receipts: what a completed check's receipt states, that it verifies with
the register's public key (SDK and `ndop receipt verify`), and that altered or forged receipts
do not.

Only synthetic 999-range numbers are used.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ndop_client import Client, ReceiptInvalid
from ndop_client.matching import HASHED_BATCH_ITEMS, batch_bounds
from ndop_core import receipts as receipt_file
from ndop_core.hashing import Hasher
from ndop_core.nhs_number import canonical_bytes, parse_values
from ndop_core.proto import ndop_pb2
from ndop_server import keys as keyfile
from ndop_server.accounts import Accounts
from ndop_server.receipts import ReceiptSigner
from ndop_server.server import start_server
from ndop_server.synthetic import hyphenated, spaced, valid_numbers
from tests.conftest import GENEROUS, Register, make_register, write_numbers

NDOP = [sys.executable, "-m", "ndop_client.cli.main"]
TIMEOUT = 30.0
ORGANISATION = "receipt-org"


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("receipts")


@pytest.fixture(scope="module")
def register(root: Path) -> Register:
    return make_register(root, total=3000, opted_out=1000, seed=5150)


@pytest.fixture(scope="module")
def token(register: Register) -> str:
    with Accounts(register.store_path) as accounts:
        return accounts.add(ORGANISATION, GENEROUS)


@pytest.fixture(scope="module")
def address(register: Register, token: str) -> Iterator[str]:
    running = start_server(
        register.store_path, register.keys, "127.0.0.1:0", tls=None, insecure=True
    )
    try:
        yield f"127.0.0.1:{running.port}"
    finally:
        running.stop(grace=1)


@pytest.fixture(scope="module")
def extra_numbers(register: Register) -> np.ndarray:
    """Numbers outside the register, enough for a cohort of more than one batch."""
    candidates = valid_numbers(20_000, "999", seed=5151)
    known = np.concatenate([register.opted_out, register.not_opted_out])
    return candidates[~np.isin(candidates, known)]


@pytest.fixture(scope="module")
def other_keys(root: Path) -> keyfile.RegisterKeys:
    """A second keys file: another register's (or a forger's) signing key."""
    return keyfile.write_new(root / "other-keys.json")


def ndop(
    root: Path, *args: str | Path, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("NDOP_TOKEN", None)
    env.pop("NDOP_DEBUG", None)
    env["XDG_CACHE_HOME"] = str(root / "xdg-cache")
    if token is not None:
        env["NDOP_TOKEN"] = token
    return subprocess.run(
        [*NDOP, *map(str, args)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def submitted_sha256_hashed(register: Register, texts: list[str]) -> str:
    """What the client sends in hashed mode, recomputed: the sorted unique canonical numbers,
    hashed with the register salt, in batches; the hash covers the batch payloads in order."""
    values, _ = parse_values(texts)
    unique = np.unique(values[values >= 0])
    hasher = Hasher(register.keys.salt)
    total = hashlib.sha256()
    for start, end in batch_bounds(len(unique), HASHED_BATCH_ITEMS):
        total.update(hasher.digest_packed(canonical_bytes(unique[start:end])))
    return total.hexdigest()


def unique_valid(texts: list[str]) -> int:
    values, _ = parse_values(texts)
    return len(np.unique(values[values >= 0]))


def canon(values: np.ndarray) -> list[str]:
    return [f"{int(v):010d}" for v in values]


def cohort_texts(register: Register, extra: np.ndarray) -> list[str]:
    """9,000+ rows over two batches: opted-out and not, written every way, with duplicates and
    invalid rows."""
    opted = register.opted_out[:300]
    clear = extra[:9000]
    rows = canon(opted) + canon(clear)
    rows += [spaced(int(v)) for v in opted[:20]] + [hyphenated(int(v)) for v in clear[:20]]
    rows += ["not a number", "12345", ""]
    return rows


# --- what a receipt states -----------------------------------------------------------------------


def _check(
    address: str, token: str, root: Path, texts: list[str], mode: str, purpose: str
) -> tuple[Any, datetime, datetime]:
    before = datetime.now(UTC)
    with Client(
        address,
        insecure=True,
        token=token,
        purpose=purpose,
        workers=1,
        cache_dir=root / "filters",
        timeout=TIMEOUT,
    ) as client:
        result = client.check(texts, mode=mode)  # type: ignore[arg-type]
    return result, before, datetime.now(UTC)


def test_sdk_hashed_receipt_states_the_check(
    register: Register, address: str, token: str, root: Path, extra_numbers: np.ndarray
) -> None:
    texts = cohort_texts(register, extra_numbers)
    result, before, after = _check(address, token, root, texts, "hashed", "legal-requirement")
    assert result.receipt is not None
    statement = receipt_file.verify(
        receipt_file.to_json(result.receipt), register.keys.signing_public_key
    )
    assert statement["format"] == receipt_file.FORMAT
    assert statement["organisation"] == ORGANISATION
    assert statement["request_id"] == result.request_id and result.request_id
    assert statement["mode"] == "hashed"
    assert statement["purpose"] == "legal-requirement"
    assert statement["register_id"] == register.keys.register_id
    assert statement["register_version"] == 1 == result.register_version
    assert statement["register_count"] == len(register.opted_out)
    assert statement["items_checked"] == unique_valid(texts) == 9300
    assert statement["submitted_sha256"] == submitted_sha256_hashed(register, texts)
    issued = datetime.fromisoformat(statement["issued_at"].replace("Z", "+00:00"))
    assert before - timedelta(minutes=5) <= issued <= after + timedelta(minutes=5)
    assert result.opted_out_count == 320


def test_sdk_private_receipt_states_the_check(
    register: Register, address: str, token: str, root: Path
) -> None:
    texts = canon(register.opted_out[:40]) + canon(register.not_opted_out[:60])
    result, _, _ = _check(address, token, root, texts, "private", "overriding-public-interest")
    statement = receipt_file.verify(
        receipt_file.to_json(result.receipt), register.keys.signing_public_key
    )
    assert statement["organisation"] == ORGANISATION
    assert statement["request_id"] == result.request_id
    assert statement["mode"] == "private"
    assert statement["purpose"] == "overriding-public-interest"
    assert (statement["register_version"], statement["register_count"]) == (1, 1000)
    assert statement["items_checked"] == 100
    assert len(bytes.fromhex(statement["submitted_sha256"])) == 32
    # blinded elements are random: the hash of what was sent is not that of the digests
    assert statement["submitted_sha256"] != submitted_sha256_hashed(register, texts)
    again, _, _ = _check(address, token, root, texts, "private", "overriding-public-interest")
    other = receipt_file.statement(ndop_pb2.ReceiptBody.FromString(again.receipt.body))
    assert other["submitted_sha256"] != statement["submitted_sha256"]
    assert other["request_id"] != statement["request_id"]


def test_keys_public_prints_the_signing_key(register: Register, root: Path) -> None:
    printed = ndop(root, "keys", "public", "--keys", register.keys_path)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == register.keys.signing_public_key.hex()
    assert base64.b64encode(register.keys.signing_seed).decode() not in printed.stdout
    assert register.keys.signing_seed.hex() not in printed.stdout


@pytest.fixture(scope="module")
def cli_receipt(
    register: Register, address: str, token: str, root: Path, extra_numbers: np.ndarray
) -> tuple[Path, list[str]]:
    """`ndop check` in hashed mode with --report: the receipt it writes, and the cohort rows."""
    texts = cohort_texts(register, extra_numbers)
    cohort = root / "cohort.txt"
    cohort.write_text("\n".join(texts) + "\n")
    reports = root / "reports"
    reports.mkdir()
    result = ndop(
        root,
        "check",
        cohort,
        "--server",
        address,
        "--insecure",
        "--out",
        root / "cleared.txt",
        "--report",
        reports / "report.json",
        "--mode",
        "hashed",
        "--purpose",
        "research",
        token=token,
    )
    assert result.returncode == 0, result.stderr
    receipt = reports / "report.receipt.json"
    assert receipt.exists(), sorted(p.name for p in reports.iterdir())
    report = json.loads((reports / "report.json").read_text())
    assert Path(report["receipt"]).resolve() == receipt.resolve()
    return receipt, texts


def test_cli_receipt_verifies_with_ndop_receipt_verify(
    register: Register, root: Path, cli_receipt: tuple[Path, list[str]]
) -> None:
    receipt, texts = cli_receipt
    public = ndop(root, "keys", "public", "--keys", register.keys_path).stdout.strip()
    verified = ndop(root, "receipt", "verify", receipt, "--public-key", public)
    assert verified.returncode == 0, verified.stderr
    assert verified.stderr.strip() == ""
    key_file = root / "register-public.key"
    key_file.write_text(public + "\n")
    from_file = ndop(root, "receipt", "verify", receipt, "--public-key", key_file)
    assert from_file.returncode == 0, from_file.stderr

    statement = receipt_file.verify_file(receipt, bytes.fromhex(public))
    report = json.loads((receipt.parent / "report.json").read_text())
    assert statement["organisation"] == ORGANISATION
    assert statement["request_id"] == report["request_id"]
    assert (statement["mode"], statement["purpose"]) == ("hashed", "research")
    assert statement["register_version"] == report["register"]["version"] == 1
    assert statement["register_count"] == report["register"]["count"] == 1000
    assert statement["items_checked"] == report["unique_checked"] == unique_valid(texts)
    assert statement["submitted_sha256"] == submitted_sha256_hashed(register, texts)
    assert statement["request_id"] in verified.stdout


def test_cli_writes_the_receipt_beside_the_output_without_a_report(
    register: Register, address: str, token: str, root: Path
) -> None:
    cohort = write_numbers(root / "small.dat", list(register.opted_out[:3]))
    result = ndop(
        root,
        "check",
        cohort,
        "--server",
        address,
        "--insecure",
        "--out",
        root / "small-cleared.dat",
        "--mode",
        "hashed",
        "--purpose",
        "planning",
        token=token,
    )
    assert result.returncode == 0, result.stderr
    receipt = root / "small-cleared.dat.receipt.json"
    statement = receipt_file.verify_file(receipt, register.keys.signing_public_key)
    assert statement["purpose"] == "planning" and statement["items_checked"] == 3


# --- altered and forged receipts -----------------------------------------------------------------

Alteration = Callable[[dict[str, Any], keyfile.RegisterKeys], None]


def _set_statement(field: str, value: Any) -> Alteration:
    def alter(data: dict[str, Any], other: keyfile.RegisterKeys) -> None:
        assert data["statement"][field] != value
        data["statement"][field] = value

    return alter


def _flip_body_byte(position: int) -> Alteration:
    def alter(data: dict[str, Any], other: keyfile.RegisterKeys) -> None:
        body = bytearray(base64.b64decode(data["body"]))
        body[position] ^= 0x01
        data["body"] = base64.b64encode(bytes(body)).decode()

    return alter


def _flip_signature_byte(data: dict[str, Any], other: keyfile.RegisterKeys) -> None:
    signature = bytearray(base64.b64decode(data["signature"]))
    signature[10] ^= 0x80
    data["signature"] = base64.b64encode(bytes(signature)).decode()


def _restate(data: dict[str, Any], **changes: Any) -> ndop_pb2.ReceiptBody:
    body = ndop_pb2.ReceiptBody.FromString(base64.b64decode(data["body"]))
    for field, value in changes.items():
        setattr(body, field, value)
    return body


def _consistent_body_old_signature(data: dict[str, Any], other: keyfile.RegisterKeys) -> None:
    """Body and statement both say 1 item fewer; the signature is the genuine one."""
    body = _restate(data, items_checked=data["statement"]["items_checked"] - 1)
    data["body"] = base64.b64encode(body.SerializeToString(deterministic=True)).decode()
    data["statement"] = receipt_file.statement(body)


def _signed_by_another_key(data: dict[str, Any], other: keyfile.RegisterKeys) -> None:
    """A well-formed receipt for another organisation, signed with a second keys file's key."""
    body = _restate(data, organisation="forger-org")
    forged = ReceiptSigner(other.signing_key).sign(body)
    key_id = data["signing_key_id"]
    data.clear()
    data.update(receipt_file.to_json(forged))
    data["signing_key_id"] = key_id  # claims to be the register's key


def _resigned_unchanged_by_another_key(data: dict[str, Any], other: keyfile.RegisterKeys) -> None:
    body = ndop_pb2.ReceiptBody.FromString(base64.b64decode(data["body"]))
    data["signature"] = base64.b64encode(
        ReceiptSigner(other.signing_key).sign(body).signature
    ).decode()


def _drop_signature(data: dict[str, Any], other: keyfile.RegisterKeys) -> None:
    del data["signature"]


def _garble_signature(data: dict[str, Any], other: keyfile.RegisterKeys) -> None:
    data["signature"] = "not base64 at all!"


def _wrong_format(data: dict[str, Any], other: keyfile.RegisterKeys) -> None:
    data["format"] = "ndop-receipt/0"


def _empty_signature(data: dict[str, Any], other: keyfile.RegisterKeys) -> None:
    data["signature"] = ""


ALTERATIONS: dict[str, Alteration] = {
    "statement-organisation": _set_statement("organisation", "someone-else"),
    "statement-request-id": _set_statement("request_id", "another-request"),
    "statement-mode": _set_statement("mode", "private"),
    "statement-purpose": _set_statement("purpose", "consent"),
    "statement-register-version": _set_statement("register_version", 2),
    "statement-register-count": _set_statement("register_count", 999),
    "statement-items-checked": _set_statement("items_checked", 1),
    "statement-submitted-sha256": _set_statement("submitted_sha256", "00" * 32),
    "statement-issued-at": _set_statement("issued_at", "2020-01-01T00:00:00Z"),
    "body-first-byte": _flip_body_byte(0),
    "body-middle-byte": _flip_body_byte(40),
    "body-last-byte": _flip_body_byte(-1),
    "signature-byte": _flip_signature_byte,
    "body-restated-old-signature": _consistent_body_old_signature,
    "signed-by-another-key": _signed_by_another_key,
    "resigned-by-another-key": _resigned_unchanged_by_another_key,
    "no-signature": _drop_signature,
    "signature-not-base64": _garble_signature,
    "empty-signature": _empty_signature,
    "wrong-format": _wrong_format,
}


@pytest.mark.parametrize("alteration", sorted(ALTERATIONS))
def test_altered_or_forged_receipt_fails_verification(
    register: Register,
    root: Path,
    cli_receipt: tuple[Path, list[str]],
    other_keys: keyfile.RegisterKeys,
    alteration: str,
) -> None:
    genuine, _ = cli_receipt
    data = json.loads(genuine.read_text())
    receipt_file.verify(copy.deepcopy(data), register.keys.signing_public_key)  # sanity
    ALTERATIONS[alteration](data, other_keys)
    with pytest.raises(ReceiptInvalid):
        receipt_file.verify(data, register.keys.signing_public_key)

    altered = root / f"altered-{alteration}.receipt.json"
    altered.write_text(json.dumps(data, indent=2))
    public = register.keys.signing_public_key.hex()
    result = ndop(root, "receipt", "verify", altered, "--public-key", public)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ndop: ") and "Traceback" not in result.stderr
    assert "verified" not in result.stdout


def test_genuine_receipt_fails_against_another_public_key(
    root: Path, cli_receipt: tuple[Path, list[str]], other_keys: keyfile.RegisterKeys
) -> None:
    genuine, _ = cli_receipt
    with pytest.raises(ReceiptInvalid):
        receipt_file.verify_file(genuine, other_keys.signing_public_key)
    other_public = ndop(root, "keys", "public", "--keys", root / "other-keys.json").stdout.strip()
    assert other_public == other_keys.signing_public_key.hex()
    result = ndop(root, "receipt", "verify", genuine, "--public-key", other_public)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ndop: "), result.stderr


@pytest.mark.parametrize("content", ["", "not json", "[]", '{"format": "ndop-receipt/1"}'])
def test_malformed_receipt_files_fail_in_one_sentence(
    register: Register, root: Path, content: str
) -> None:
    path = root / f"malformed-{abs(hash(content))}.json"
    path.write_text(content)
    if content.startswith(("[", "{")):
        with pytest.raises(ReceiptInvalid):
            receipt_file.verify(json.loads(content), register.keys.signing_public_key)
    result = ndop(
        root, "receipt", "verify", path, "--public-key", register.keys.signing_public_key.hex()
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ndop: "), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("key", ["", "abc", "zz" * 32, "00" * 33])
def test_bad_public_key_is_a_usage_error(
    root: Path, cli_receipt: tuple[Path, list[str]], key: str
) -> None:
    genuine, _ = cli_receipt
    result = ndop(root, "receipt", "verify", genuine, "--public-key", key)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ndop: "), result.stderr
