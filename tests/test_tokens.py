"""Store tokens (docs/hashing.md): ndop-token-v2 is the CBC-MAC of the digest under a key
derived from the store key; a keys file made before it keeps its store's ndop-token-v1 tokens
until the register is re-keyed."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ndop_client import Client
from ndop_core.hashing import DIGEST_SIZE
from ndop_server import keys as keyfile
from ndop_server.accounts import Accounts
from ndop_server.register import Publisher
from ndop_server.server import start_server
from ndop_server.store import Store
from ndop_server.synthetic import valid_numbers
from ndop_server.tokens import LEGACY_SCHEME, SCHEME, LegacyStoreKey, Tokenizer
from tests.conftest import GENEROUS, write_numbers


def _cbc_mac(store_key: bytes, digest: bytes) -> bytes:
    """The last block of AES-256-CBC with a zero IV over the digest, one digest at a time."""
    key = hmac.new(store_key, b"ndop-token-v2/aes-256", hashlib.sha256).digest()
    encrypt = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).encryptor()
    return (encrypt.update(digest) + encrypt.finalize())[16:]


def test_tokens_are_the_cbc_mac_of_each_digest() -> None:
    store_key = os.urandom(32)
    digests = [os.urandom(DIGEST_SIZE) for _ in range(300)] + [bytes(DIGEST_SIZE)]
    tokenizer = Tokenizer(store_key)
    assert tokenizer.scheme == SCHEME
    tokens = tokenizer.tokens(b"".join(digests), DIGEST_SIZE)
    assert tokens == b"".join(_cbc_mac(store_key, digest) for digest in digests)
    assert tokenizer.tokens(b"", DIGEST_SIZE) == b""


def test_legacy_keys_keep_blake2b_tokens() -> None:
    store_key = LegacyStoreKey(os.urandom(32))
    digests = [os.urandom(DIGEST_SIZE) for _ in range(50)]
    tokenizer = Tokenizer(store_key)
    assert tokenizer.scheme == LEGACY_SCHEME
    expected = b"".join(
        hashlib.blake2b(digest, key=store_key, digest_size=16, person=b"ndop-token-v1").digest()
        for digest in digests
    )
    assert tokenizer.tokens(b"".join(digests), DIGEST_SIZE) == expected


def _as_legacy_file(path: Path) -> None:
    data = json.loads(path.read_text())
    assert data["format"] == "ndop-keys/2"
    data["format"] = "ndop-keys/1"
    path.write_text(json.dumps(data))


def test_a_keys_file_keeps_its_token_scheme_until_the_register_is_rekeyed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keys.json"
    keyfile.write_new(path)
    _as_legacy_file(path)
    legacy = keyfile.load(path)
    assert isinstance(legacy.store_key, LegacyStoreKey)
    keyfile.save(path, legacy.with_new_signing_key())
    assert json.loads(path.read_text())["format"] == "ndop-keys/1"
    assert Tokenizer(keyfile.load(path).store_key).scheme == LEGACY_SCHEME
    keyfile.save(path, keyfile.load(path).with_new_register_secrets())
    rekeyed = keyfile.load(path)
    assert json.loads(path.read_text())["format"] == "ndop-keys/2"
    assert Tokenizer(rekeyed.store_key).scheme == SCHEME
    assert rekeyed.audit_key == legacy.audit_key


def _opted_out(store: Path, keys: keyfile.RegisterKeys, numbers: list[str]) -> np.ndarray:
    running = start_server(store, keys, "127.0.0.1:0", tls=None, insecure=True)
    try:
        with Accounts(store) as accounts:
            token = accounts.add(f"org-{os.urandom(4).hex()}", GENEROUS)
        address = f"127.0.0.1:{running.port}"
        with Client(address, insecure=True, token=token, purpose="research") as client:
            result = client.check(numbers, mode="hashed", progress=False)
    finally:
        running.stop(grace=1)
    return result.opted_out_mask


def test_a_store_made_with_legacy_keys_answers_before_and_after_rekeying(
    tmp_path: Path,
) -> None:
    numbers = valid_numbers(400, "999", seed=13)
    members = numbers[:150]
    snapshot = write_numbers(tmp_path / "snapshot.dat", members)
    keys_path = tmp_path / "keys.json"
    keyfile.write_new(keys_path)
    _as_legacy_file(keys_path)
    legacy = keyfile.load(keys_path)
    store_path = tmp_path / "register.sqlite3"
    with Store(store_path, create=True) as store:
        Publisher(store, legacy, workers=1).load_snapshot(snapshot)
    texts = [f"{value:010d}" for value in numbers]
    expected = np.isin(numbers, members)
    assert (_opted_out(store_path, legacy, texts) == expected).all()

    rekeyed = legacy.with_new_register_secrets()
    with Store(store_path) as store:
        Publisher(store, rekeyed, workers=1).rekey(snapshot)
    assert (_opted_out(store_path, rekeyed, texts) == expected).all()
