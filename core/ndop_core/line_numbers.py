"""NHS numbers of lines of bytes, one number a line, read with NumPy: no Python object per row.

A line that is exactly ten digits, optionally followed by the CfNDO comma, then CR LF or LF
(or nothing, at the end of the input) is read and its check digit tested in bulk. Any other
line (blank, spaced, hyphenated, a decimal export, not digits, a wrong check digit) is decoded
alone and goes through `nhs_number.parse`, so every row gets the answer and reason `parse`
would give it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np

from ndop_core.nhs_number import (
    _POWERS_OF_TEN,
    _WEIGHT_VECTOR,
    INVALID,
    ParsedColumn,
    parse_rest,
)

_LF: Final = 10
_CR: Final = 13
_COMMA: Final = 44
_ZERO: Final = 48
_OFFSETS: Final = np.arange(10)
_VALUE_AND_CHECK_WEIGHTS: Final = np.column_stack([_POWERS_OF_TEN, np.append(_WEIGHT_VECTOR, 0)])

Decode = Callable[[bytes, int], str]
"""(one line's bytes, how many lines come before it in the block) -> its text"""


def parse_lines(block: bytes, decode: Decode) -> ParsedColumn:
    """Each line of `block` (whole lines; the last may lack its LF) as a number, INVALID with
    a reason where it holds none; positions count lines from the block's first."""
    if not block:
        return ParsedColumn(np.empty(0, dtype=np.int64), {}, [])
    data = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(data == _LF)
    if data[-1] != _LF:
        ends = np.append(ends, len(data))
    starts = np.concatenate(([0], ends[:-1] + 1))
    stops = ends.copy()
    stops -= (stops > starts) & (data[stops - 1] == _CR)
    stops -= (stops > starts) & (data[stops - 1] == _COMMA)
    values = np.full(len(starts), INVALID, dtype=np.int64)
    plain = np.flatnonzero(stops - starts == 10)
    width = int(ends[0]) + 1
    if len(plain) == len(starts) and len(data) == len(starts) * width:
        digits = data.reshape(-1, width)[:, :10] - np.uint8(_ZERO)  # every line alike
    else:
        digits = data[starts[plain, None] + _OFFSETS] - np.uint8(_ZERO)
    # One integer product gives each line's value and check-digit sum. (A float64 one would
    # go through BLAS, whose threads spin on every core after each call and slow the hashing
    # workers and the server beside it.)
    value_and_sum = digits @ _VALUE_AND_CHECK_WEIGHTS
    check = 11 - value_and_sum[:, 1] % 11
    check[check == 11] = 0
    valid = check == digits[:, 9]
    if not (digits <= 9).all():
        valid &= (digits <= 9).all(axis=1)
    values[plain[valid]] = value_and_sum[valid, 0]

    def line(position: int) -> str:
        return decode(block[starts[position] : ends[position] + 1], position)

    return parse_rest(values, line)
