"""What an in-memory check answers: one status per input, the counts, and the receipt.

A result prints as one line, however many rows it holds; `mask` selects the cleared rows of
a DataFrame or array; `summary()` gives the counts a report would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any

import numpy as np

from ndop_core.cohort_files import InvalidRow, InvalidRows

CLEARED_CODE, OPTED_OUT_CODE, INVALID_CODE = 0, 1, 2


class Status(StrEnum):
    CLEARED = "cleared"
    OPTED_OUT = "opted_out"
    INVALID = "invalid"


_BY_CODE = (Status.CLEARED, Status.OPTED_OUT, Status.INVALID)


@dataclass
class Tally:
    """Counts shared by file checks and in-memory checks."""

    rows: int = 0
    blank: int = 0
    valid: int = 0
    duplicates: int = 0
    unique: int = 0
    opted_out_rows: int = 0
    opted_out_unique: int = 0
    cleared: int = 0
    invalid: InvalidRows = field(default_factory=InvalidRows)
    float_exports: int = 0
    """valid numbers written as decimals (9434765919.0), accepted as the ten digits"""

    @property
    def opt_out_rate(self) -> float:
        return round(self.opted_out_unique / self.unique, 6) if self.unique else 0.0

    @property
    def invalid_rate(self) -> float:
        return self.invalid.count / self.rows if self.rows else 0.0


@dataclass(repr=False)
class CheckResult:
    """The answer to an in-memory check (`Client.check`)."""

    mode: str
    register_version: int
    register_count: int
    codes: np.ndarray
    """uint8 per input: 0 cleared, 1 opted out, 2 invalid"""
    inputs: list[Any] | np.ndarray
    tally: Tally
    request_id: str
    receipt: Any = None

    def __len__(self) -> int:
        return len(self.codes)

    def __repr__(self) -> str:
        t = self.tally
        return (
            f"<CheckResult {self.mode} v{self.register_version}: {len(self):,} rows, "
            f"{t.cleared:,} cleared, {t.opted_out_rows:,} opted out, "
            f"{t.invalid.count:,} invalid, {t.duplicates:,} duplicates>"
        )

    @cached_property
    def statuses(self) -> list[Status]:
        return [_BY_CODE[code] for code in self.codes.tolist()]

    @property
    def mask(self) -> np.ndarray:
        """True where the input is cleared (valid and not opted out): the rows to keep."""
        return np.asarray(self.codes == CLEARED_CODE)

    @property
    def opted_out_mask(self) -> np.ndarray:
        return np.asarray(self.codes == OPTED_OUT_CODE)

    @property
    def invalid_mask(self) -> np.ndarray:
        return np.asarray(self.codes == INVALID_CODE)

    @property
    def cleared(self) -> list[Any]:
        """The inputs to keep, in order, as they were given."""
        positions = np.flatnonzero(self.mask)
        if isinstance(self.inputs, np.ndarray):
            kept: list[Any] = self.inputs[positions].tolist()
            return kept
        return [self.inputs[p] for p in positions.tolist()]

    @property
    def invalid(self) -> list[InvalidRow]:
        """The first invalid inputs by position (0-based) and reason; see `summary()` for all."""
        return self.tally.invalid.listed

    @property
    def opted_out_count(self) -> int:
        return self.tally.opted_out_rows

    def summary(self) -> dict[str, Any]:
        t = self.tally
        return {
            "mode": self.mode,
            "register_version": self.register_version,
            "register_count": self.register_count,
            "request_id": self.request_id,
            "rows": len(self),
            "valid": t.valid,
            "invalid": t.invalid.count,
            "invalid_reasons": dict(t.invalid.by_reason),
            "duplicates": t.duplicates,
            "unique_checked": t.unique,
            "opted_out": t.opted_out_rows,
            "cleared": t.cleared,
            "float_exports": t.float_exports,
            "cohort_opt_out_rate": t.opt_out_rate,
        }
