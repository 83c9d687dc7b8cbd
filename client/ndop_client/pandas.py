"""Clear a pandas DataFrame: `pip install 'ndop[pandas]'`.

    from ndop_client.pandas import check_dataframe
    with ndop_client.Client(...) as client:
        cleared, result = check_dataframe(df, "nhs_number", client)
        flagged, result = check_dataframe(df, "nhs_number", client, output="status")

The column may hold text, integers, or floats (a column with empty cells reads as float64:
9434765919.0 is taken as 9434765919 and counted); missing values are invalid rows.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pandas as pd

from ndop_client.client import Client, Mode
from ndop_client.frames import STATUS_COLUMN, Output, require_column, require_output, status_names
from ndop_client.progress import ProgressChoice
from ndop_client.results import CheckResult


class FrameCheck(NamedTuple):
    frame: pd.DataFrame
    """the cleared rows (index kept), or every row with a status column"""
    result: CheckResult
    """counts, masks and the signed receipt"""


def check_dataframe(
    df: pd.DataFrame,
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
    columns = [str(c) for c in df.columns]
    require_column(columns, column)
    require_output(output, status_column, columns)
    result = client.check(
        df[column],
        mode=mode,
        purpose=purpose,
        progress=progress,
        max_invalid_rate=max_invalid_rate,
    )
    if output == "status":
        extra: dict[str, Any] = {status_column: status_names(result)}
        return FrameCheck(df.assign(**extra), result)
    return FrameCheck(df[result.mask], result)
