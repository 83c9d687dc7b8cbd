"""Whatever a caller's column holds, as texts to parse: lists, tuples, generators, NumPy
arrays, pandas and polars Series, holding str, int, float, None, NaN, pandas NA or anything
else. A value that cannot hold an NHS number gets its reason here instead of an exception.

Integers must have ten digits as they are (no zero padding: a column that lost its leading
zeros is not silently repaired). A float is accepted when it is a whole ten-digit number, as a
spreadsheet or pandas export writes one (9434765919.0), and counted as such.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np

from ndop_core.errors import UsageError
from ndop_core.nhs_number import InvalidReason

_MISSING_TYPES = frozenset({"NAType", "NaTType"})


@dataclass
class ColumnTexts:
    texts: list[str]
    reasons: dict[int, InvalidReason] = field(default_factory=dict)
    """positions already known to be invalid, whatever their text"""
    from_float: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    """positions whose number came from a float"""


def as_sequence(values: Iterable[Any]) -> list[Any] | np.ndarray:
    """The values as a list or a NumPy array, without copying an array."""
    if isinstance(values, str | bytes):
        raise UsageError("check takes a column of numbers, not one string: pass [number]")
    module = type(values).__module__.split(".")[0]
    if module == "polars" and hasattr(values, "to_list"):
        listed: list[Any] = values.to_list()
        return listed
    if not isinstance(values, np.ndarray) and hasattr(values, "to_numpy"):
        converted = values.to_numpy()
        if isinstance(converted, np.ndarray):
            return converted
    if isinstance(values, np.ndarray):
        return values.ravel() if values.ndim > 1 else values
    try:
        return list(values)
    except TypeError:
        raise UsageError("check takes a column of numbers: a list, array or Series") from None


def texts_of(values: list[Any] | np.ndarray) -> ColumnTexts:
    if isinstance(values, np.ndarray):
        kind = values.dtype.kind
        if kind in "iu":
            return _integers(values)
        if kind == "f":
            return _floats(values)
        if kind == "U":
            return ColumnTexts([str(v) for v in values.tolist()], {}, _none(len(values)))
        if kind != "O":
            reasons = dict.fromkeys(range(len(values)), InvalidReason.UNSUPPORTED_TYPE)
            return ColumnTexts([""] * len(values), reasons, _none(len(values)))
        return _objects(values.tolist())
    return _objects(values)


def _none(count: int) -> np.ndarray:
    return np.zeros(count, dtype=bool)


def _integers(array: np.ndarray) -> ColumnTexts:
    reasons = {int(p): InvalidReason.NOT_DIGITS for p in np.flatnonzero(array < 0)}
    return ColumnTexts([str(v) for v in array.tolist()], reasons, _none(len(array)))


def _floats(array: np.ndarray) -> ColumnTexts:
    missing = np.isnan(array)
    finite = np.isfinite(array)
    whole = finite & (np.floor(np.where(finite, array, 0)) == np.where(finite, array, 0))
    reasons: dict[int, InvalidReason] = {}
    for position in np.flatnonzero(~whole).tolist():
        reasons[position] = (
            InvalidReason.MISSING
            if missing[position]
            else InvalidReason.NOT_WHOLE
            if finite[position]
            else InvalidReason.NOT_DIGITS
        )
    for position in np.flatnonzero(whole & (array < 0)).tolist():
        reasons[position] = InvalidReason.NOT_DIGITS
    usable = whole & (np.abs(array) < 1e18)
    as_int = np.where(usable, array, 0).astype(np.int64)
    texts = [str(v) if ok else "" for v, ok in zip(as_int.tolist(), usable.tolist(), strict=True)]
    for position in np.flatnonzero(whole & ~usable).tolist():
        reasons[position] = InvalidReason.WRONG_LENGTH
    return ColumnTexts(texts, reasons, whole)


def _objects(values: list[Any]) -> ColumnTexts:
    texts: list[str] = []
    reasons: dict[int, InvalidReason] = {}
    from_float = _none(len(values))
    for position, value in enumerate(values):
        if isinstance(value, str):
            texts.append(value)
            continue
        text, reason, was_float = _one(value)
        texts.append(text)
        if reason is not None:
            reasons[position] = reason
        from_float[position] = was_float
    return ColumnTexts(texts, reasons, from_float)


def _one(value: Any) -> tuple[str, InvalidReason | None, bool]:
    """(text, reason it is unusable or None, whether it was a float) of one non-str value."""
    if value is None or type(value).__name__ in _MISSING_TYPES:
        return "", InvalidReason.MISSING, False
    if isinstance(value, bool | np.bool_):
        return "", InvalidReason.UNSUPPORTED_TYPE, False
    if isinstance(value, numbers.Integral):
        number = int(value)
        return str(number), InvalidReason.NOT_DIGITS if number < 0 else None, False
    if isinstance(value, numbers.Real | Decimal):
        return _real(float(value))
    if isinstance(value, bytes):
        try:
            return value.decode("ascii"), None, False
        except UnicodeDecodeError:
            return "", InvalidReason.NOT_DIGITS, False
    return "", InvalidReason.UNSUPPORTED_TYPE, False


def _real(number: float) -> tuple[str, InvalidReason | None, bool]:
    if math.isnan(number):
        return "", InvalidReason.MISSING, False
    if not math.isfinite(number) or number < 0:
        return "", InvalidReason.NOT_DIGITS, False
    if not number.is_integer():
        return "", InvalidReason.NOT_WHOLE, False
    if number >= 1e18:
        return "", InvalidReason.WRONG_LENGTH, False
    return str(int(number)), None, True
