"""Synthetic NHS numbers for demos, tests and benchmarks, from ranges never issued to patients.

- "999": 999 000 0000 - 999 999 9999, reserved for testing (about 909,000 valid numbers);
  tests and demos use only this range.
- "9": 900 000 0000 - 999 999 9999, used by NHS test environments (about 9.09 million valid);
  benchmarks that need millions use it.
"""

from __future__ import annotations

from typing import Final, Literal

import numpy as np

from ndop_core.nhs_number import _POWERS_OF_TEN, _WEIGHT_VECTOR, distinct

Range = Literal["999", "9"]
_PREFIX_BOUNDS: Final = {"999": (999_000_000, 1_000_000_000), "9": (900_000_000, 1_000_000_000)}


def valid_numbers(count: int, number_range: Range = "999", seed: int = 0) -> np.ndarray:
    """`count` distinct valid NHS numbers from the range, in random order, as int64 values."""
    low, high = _PREFIX_BOUNDS[number_range]
    rng = np.random.default_rng(seed)
    if count > (high - low) * 10 // 11:
        raise ValueError(f"the {number_range} range has fewer than {count} valid numbers")
    found = np.empty(0, dtype=np.int64)
    while len(found) < count:
        prefixes = rng.integers(low, high, size=int((count - len(found)) * 1.3) + 16)
        found = distinct(np.concatenate([found, _complete(prefixes)]))
    rng.shuffle(found)
    return found[:count]


def _complete(prefixes: np.ndarray) -> np.ndarray:
    """Valid ten-digit numbers from nine-digit prefixes; prefixes whose check would be 10 drop."""
    digits = (prefixes[:, None] // _POWERS_OF_TEN[1:]) % 10
    check = 11 - (digits @ _WEIGHT_VECTOR) % 11
    check[check == 11] = 0
    keep = check != 10
    return np.asarray(prefixes[keep] * 10 + check[keep], dtype=np.int64)


def spaced(value: int) -> str:
    text = f"{value:010d}"
    return f"{text[:3]} {text[3:6]} {text[6:]}"


def hyphenated(value: int) -> str:
    text = f"{value:010d}"
    return f"{text[:3]}-{text[3:6]}-{text[6:]}"
