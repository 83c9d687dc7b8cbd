"""expand_message_xmd against every RFC 9380 vector (data in tests/vectors/hash-to-curve)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from ndop_core.crypto.xmd import expand_message_xmd, expander
from tests.vector_files import load_json

FILES = {
    "sha256": "hash-to-curve/expand_message_xmd_SHA256_38.json",
    "sha512": "hash-to-curve/expand_message_xmd_SHA512_38.json",
}


def _cases() -> list[Any]:
    cases = []
    for hash_name, path in FILES.items():
        suite = load_json(path)
        assert suite["name"] == "expand_message_xmd"
        assert suite["hash"].lower() == hash_name
        assert suite["tests"], f"no vectors in {path}"
        for i, test in enumerate(suite["tests"]):
            cases.append(pytest.param(hash_name, suite["DST"], test, id=f"{hash_name}-{i}"))
    return cases


@pytest.mark.parametrize(("hash_name", "dst", "test"), _cases())
def test_vector(hash_name: str, dst: str, test: dict[str, str]) -> None:
    dst_bytes = dst.encode()
    assert bytes.fromhex(test["DST_prime"]) == dst_bytes + bytes([len(dst_bytes)])
    length = int(test["len_in_bytes"], 16)
    out = expand_message_xmd(test["msg"].encode(), dst_bytes, length, hash_name)
    assert out.hex() == test["uniform_bytes"]
    assert len(out) == length
    assert expander(dst_bytes, length, hash_name)(test["msg"].encode()) == out


@pytest.mark.parametrize("hash_name", ["sha256", "sha512"])
def test_oversize_dst_is_hashed(hash_name: str) -> None:
    long_dst = b"QUUX-V01-CS02-with-expander-long-DST-" + b"1" * 256
    short = getattr(hashlib, hash_name)(b"H2C-OVERSIZE-DST-" + long_dst).digest()
    for length in (32, 128):
        got = expand_message_xmd(b"abc", long_dst, length, hash_name)
        assert got == expand_message_xmd(b"abc", short, length, hash_name)
    dst_255 = b"d" * 255  # the limit itself is used as is
    assert expand_message_xmd(b"", dst_255, 32, hash_name) != expand_message_xmd(
        b"", getattr(hashlib, hash_name)(b"H2C-OVERSIZE-DST-" + dst_255).digest(), 32, hash_name
    )


@pytest.mark.parametrize(
    ("hash_name", "max_len"), [("sha256", 255 * 32), ("sha512", min(255 * 64, 65535))]
)
def test_length_limits(hash_name: str, max_len: int) -> None:
    assert len(expand_message_xmd(b"m", b"DST", max_len, hash_name)) == max_len
    assert len(expand_message_xmd(b"m", b"DST", 1, hash_name)) == 1
    for bad in (0, -1, max_len + 1, 65536):
        with pytest.raises(ValueError):
            expand_message_xmd(b"m", b"DST", bad, hash_name)


def test_unsupported_hash() -> None:
    with pytest.raises(ValueError):
        expand_message_xmd(b"m", b"DST", 32, "md5")
