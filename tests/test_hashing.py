"""Hashed-mode digests are exactly what docs/hashing.md specifies, however many at once."""

from __future__ import annotations

import hashlib
import os

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ndop_core.hashing import SCHEME, Hasher, digests
from ndop_core.nhs_number import canonical_bytes


def _spec(salt: bytes, number: int) -> bytes:
    return hashlib.sha256(
        b"ndop-sha256-v1/nhs-number\x00" + salt + f"{number:010d}".encode()
    ).digest()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 9_999_999_999), max_size=200), st.binary(min_size=32, max_size=32))
def test_digests_follow_the_specification(numbers: list[int], salt: bytes) -> None:
    blob = canonical_bytes(np.array(numbers, dtype=np.int64))
    expected = b"".join(_spec(salt, number) for number in numbers)
    assert Hasher(salt).digest_packed(blob) == expected
    assert digests(salt, SCHEME, blob) == expected
    assert [Hasher(salt).digest(f"{n:010d}") for n in numbers] == [_spec(salt, n) for n in numbers]


def test_many_digests_at_once() -> None:
    salt = os.urandom(32)
    numbers = np.random.default_rng(3).integers(0, 10**10, size=20_000)
    blob = canonical_bytes(numbers)
    packed = Hasher(salt).digest_packed(blob)
    assert len(packed) == 32 * len(numbers)
    for position in (0, 4095, 4096, 4097, 19_999):
        assert packed[32 * position : 32 * position + 32] == _spec(salt, int(numbers[position]))
