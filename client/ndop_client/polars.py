"""Clear a polars DataFrame: `pip install 'ndop[polars]'`.

from ndop_client.polars import check_dataframe
with ndop_client.Client(...) as client:
    cleared, result = check_dataframe(df, "nhs_number", client)
    flagged, result = check_dataframe(df, "nhs_number", client, output="status")
"""

from __future__ import annotations

from typing import NamedTuple

import polars as pl

from ndop_client.client import Client, Mode
from ndop_client.frames import STATUS_COLUMN, Output, require_column, require_output, status_names
from ndop_client.progress import ProgressChoice
from ndop_client.results import CheckResult


class FrameCheck(NamedTuple):
    frame: pl.DataFrame
    """the cleared rows, or every row with a status column"""
    result: CheckResult
    """counts, masks and the signed receipt"""


def check_dataframe(
    df: pl.DataFrame,
    column: str,
    client: Client,
    *,
    output: Output = "cleared",
    status_column: str = STATUS_COLUMN,
    mode: Mode = "private",
    purpose: str | None = None,
    progress: ProgressChoice = None,
    max_invalid_rate: float | None = None,
) -> FrameCheck:
    """Check `df[column]` as one check. output="cleared" keeps the rows whose number is valid
    and not opted out; output="status" adds `status_column` ('cleared', 'opted_out',
    'invalid') to every row."""
    require_column(df.columns, column)
    require_output(output, status_column, df.columns)
    result = client.check(
        df.get_column(column),
        mode=mode,
        purpose=purpose,
        progress=progress,
        max_invalid_rate=max_invalid_rate,
    )
    if output == "status":
        statuses = pl.Series(status_column, status_names(result).tolist(), dtype=pl.Utf8)
        return FrameCheck(df.with_columns(statuses), result)
    return FrameCheck(df.filter(pl.Series(result.mask)), result)
