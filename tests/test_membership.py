"""The server's membership lookup (ndop_server.membership) answers exactly as np.isin."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ndop_server.membership import SortedKeys

TOP = 2**64 - 1
KEYS = st.integers(0, TOP)


def _array(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.uint64).astype("<u8")


@settings(max_examples=200, deadline=None)
@given(
    held=st.lists(KEYS, max_size=300),
    asked=st.lists(KEYS, max_size=100),
    seed=st.integers(0, 2**32),
)
def test_contains_is_isin(held: list[int], asked: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    held_keys = np.sort(_array(held))
    picked = held_keys[rng.integers(0, len(held_keys), size=20)] if held else _array([])
    keys = np.concatenate([_array(asked), picked, _array([0, TOP])])
    assert SortedKeys(held_keys).contains(keys).tolist() == np.isin(keys, held_keys).tolist()


def test_crowded_buckets_and_repeats() -> None:
    held = np.sort(_array([5, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 2**63, TOP]))
    keys = _array([*range(25), 2**63 - 1, 2**63, 2**63 + 1, TOP - 1, TOP])
    assert SortedKeys(held).contains(keys).tolist() == np.isin(keys, held).tolist()


def test_a_large_uniform_index() -> None:
    rng = np.random.default_rng(7)
    held = np.sort(rng.integers(0, TOP, size=200_000, dtype=np.uint64, endpoint=True))
    keys = np.concatenate([held[::97], rng.integers(0, TOP, size=5_000, dtype=np.uint64)])
    assert (SortedKeys(held).contains(keys) == np.isin(keys, held)).all()
