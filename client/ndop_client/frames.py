"""What the pandas and polars helpers share: choosing the column and naming the statuses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

import numpy as np

from ndop_client.results import CheckResult, Status
from ndop_core.errors import UsageError

Output = Literal["cleared", "status"]
OUTPUTS: Final = ("cleared", "status")
STATUS_COLUMN: Final = "ndop_status"
_NAMES: Final = np.array([Status.CLEARED.value, Status.OPTED_OUT.value, Status.INVALID.value])


def require_column(columns: Sequence[str], column: str) -> None:
    if column not in columns:
        shown = ", ".join(repr(str(c)[:40]) for c in list(columns)[:20])
        raise UsageError(f"the DataFrame has no column {column!r}; its columns are {shown}")


def require_output(output: str, status_column: str, columns: Sequence[str]) -> None:
    if output not in OUTPUTS:
        raise UsageError(f"output must be 'cleared' or 'status', not {output!r}")
    if output == "status" and status_column in columns:
        raise UsageError(
            f"the DataFrame already has a column {status_column!r}; name another with "
            "status_column="
        )


def status_names(result: CheckResult) -> np.ndarray:
    """'cleared', 'opted_out' or 'invalid' for each row."""
    return status_names_of(result.codes)


def status_names_of(codes: np.ndarray) -> np.ndarray:
    return np.asarray(_NAMES[codes])
