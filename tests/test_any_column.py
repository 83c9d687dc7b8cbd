"""Any column goes in: `Client.check` takes lists, tuples, generators, NumPy arrays, pandas and
polars Series of str, int, float, None, NaN and anything else; what cannot hold an NHS number
is INVALID with a reason, never an exception. `check_dataframe` for pandas and polars, and what
a result prints and offers (repr, masks, summary).

Only synthetic 999-range numbers are used (the `register` fixture's).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pytest

from ndop_client import Client, Status, UsageError
from ndop_client import pandas as ndop_pandas
from ndop_client import polars as ndop_polars
from ndop_client.client import Mode
from ndop_core.nhs_number import InvalidReason
from ndop_server.server import RunningServer
from tests.conftest import Register

OK, OUT, BAD = Status.CLEARED, Status.OPTED_OUT, Status.INVALID


@pytest.fixture
def client(server: RunningServer, address: str, tmp_path: Path) -> Iterator[Client]:
    with Client(
        address, insecure=True, purpose="research", cache_dir=tmp_path / "cache", workers=1
    ) as c:
        yield c


@pytest.fixture
def pair(register: Register) -> tuple[int, int]:
    """An opted-out number and one that is not, as ints."""
    return int(register.opted_out[0]), int(register.not_opted_out[0])


def reasons(result: Any) -> dict[int, str]:
    return {row.line: row.reason for row in result.invalid}


@pytest.mark.parametrize("mode", ["hashed", "private"])
def test_a_mixed_list_never_raises(client: Client, pair: tuple[int, int], mode: Mode) -> None:
    opted, kept = pair
    values: list[object] = [
        str(opted),
        kept,
        float(kept),
        f"{kept}.0",
        None,
        float("nan"),
        pd.NA,
        pd.NaT,
        True,
        -kept,
        1.5,
        float("inf"),
        123,
        10**12,
        b"not",
        object(),
        Decimal(kept),
        np.int64(opted),
        np.float64(kept),
        "",
        "  ",
    ]
    result = client.check(values, mode=mode)
    assert result.statuses == [OUT, OK, OK, OK] + [BAD] * 12 + [OK, OUT, OK, BAD, BAD]
    assert reasons(result) == {
        4: str(InvalidReason.MISSING),
        5: str(InvalidReason.MISSING),
        6: str(InvalidReason.MISSING),
        7: str(InvalidReason.MISSING),
        8: str(InvalidReason.UNSUPPORTED_TYPE),
        9: str(InvalidReason.NOT_DIGITS),
        10: str(InvalidReason.NOT_WHOLE),
        11: str(InvalidReason.NOT_DIGITS),
        12: str(InvalidReason.WRONG_LENGTH),
        13: str(InvalidReason.WRONG_LENGTH),
        14: str(InvalidReason.NOT_DIGITS),
        15: str(InvalidReason.UNSUPPORTED_TYPE),
        19: str(InvalidReason.EMPTY),
        20: str(InvalidReason.EMPTY),
    }
    assert result.tally.float_exports == 4  # 2 floats, a "....0" text, a Decimal
    assert result.tally.duplicates == 5
    assert result.cleared[:2] == [kept, float(kept)]


def test_numpy_arrays_and_generators(client: Client, register: Register) -> None:
    opted = register.opted_out[:3].astype(np.int64)
    kept = register.not_opted_out[:4].astype(np.int64)
    ints = np.concatenate([opted, kept])
    expected = [OUT] * 3 + [OK] * 4
    assert client.check(ints, mode="hashed").statuses == expected
    assert client.check(ints.astype(np.uint64), mode="hashed").statuses == expected
    floats = ints.astype(np.float64)
    floats_result = client.check(np.append(floats, [np.nan, 2.5]), mode="hashed")
    assert floats_result.statuses == [*expected, BAD, BAD]
    assert floats_result.tally.float_exports == 7
    assert client.check(ints.astype(str), mode="hashed").statuses == expected
    assert client.check((str(v) for v in ints.tolist()), mode="hashed").statuses == expected
    assert client.check(np.array([True, False]), mode="hashed").statuses == [BAD, BAD]


def test_pandas_series_of_every_kind(client: Client, register: Register) -> None:
    opted, kept = int(register.opted_out[1]), int(register.not_opted_out[1])
    frame = pd.read_csv(io.StringIO(f"nhs,name\n{opted},a\n,b\n{kept},c\n"), dtype={"name": str})
    assert frame["nhs"].dtype == np.float64
    result = client.check(frame["nhs"], mode="hashed")
    assert result.statuses == [OUT, BAD, OK]
    assert result.tally.float_exports == 2
    nullable = pd.Series([opted, None, kept], dtype="Int64")
    assert client.check(nullable, mode="hashed").statuses == [OUT, BAD, OK]
    text = pd.Series([str(opted), None, f"{kept}"], dtype="string")
    assert client.check(text, mode="hashed").statuses == [OUT, BAD, OK]


def test_polars_series(client: Client, register: Register) -> None:
    opted, kept = int(register.opted_out[2]), int(register.not_opted_out[2])
    assert client.check(pl.Series([opted, None, kept]), mode="hashed").statuses == [OUT, BAD, OK]
    ints = client.check(pl.Series([opted, None, kept]), mode="hashed")
    assert ints.tally.float_exports == 0
    assert client.check(pl.Series([str(opted), None, "x"]), mode="hashed").statuses == [
        OUT,
        BAD,
        BAD,
    ]


def test_one_string_is_a_usage_error(client: Client) -> None:
    with pytest.raises(UsageError, match="not one string"):
        client.check("9990000018")


def test_a_result_is_short_and_has_masks_and_a_summary(client: Client, register: Register) -> None:
    numbers = [f"{int(v):010d}" for v in register.opted_out[:300]]
    numbers += [f"{int(v):010d}" for v in register.not_opted_out[:1700]] + ["junk"]
    result = client.check(numbers, mode="hashed")
    text = repr(result)
    assert len(text) < 200 and "\n" not in text
    assert text == (
        "<CheckResult hashed v1: 2,001 rows, 1,700 cleared, 300 opted out, 1 invalid, 0 duplicates>"
    )
    assert result.mask.sum() == 1700 and result.mask.dtype == bool
    assert result.opted_out_mask[:300].all() and result.invalid_mask[-1]
    summary = result.summary()
    assert summary["rows"] == 2001 and summary["cleared"] == 1700
    assert summary["invalid_reasons"] == {str(InvalidReason.NOT_DIGITS): 1}
    for value in numbers[:5]:
        assert value not in text and value not in str(summary)


def test_pandas_check_dataframe(client: Client, register: Register) -> None:
    opted = [int(v) for v in register.opted_out[:3]]
    kept = [int(v) for v in register.not_opted_out[:4]]
    frame = pd.DataFrame(
        {"nhs_number": [*opted, *kept, None], "id": list(range(8))}, index=list("abcdefgh")
    )
    cleared, result = ndop_pandas.check_dataframe(frame, "nhs_number", client, mode="hashed")
    assert list(cleared.index) == list("defg")
    assert list(cleared["id"]) == [3, 4, 5, 6]
    assert result.tally.opted_out_rows == 3
    flagged, _ = ndop_pandas.check_dataframe(
        frame, "nhs_number", client, output="status", mode="hashed"
    )
    assert list(flagged["ndop_status"]) == ["opted_out"] * 3 + ["cleared"] * 4 + ["invalid"]
    assert "ndop_status" not in frame.columns
    with pytest.raises(UsageError, match="its columns are 'nhs_number', 'id'"):
        ndop_pandas.check_dataframe(frame, "nhs", client)
    with pytest.raises(UsageError, match="already has a column"):
        ndop_pandas.check_dataframe(flagged, "nhs_number", client, output="status")


def test_polars_check_dataframe(client: Client, register: Register) -> None:
    opted = [f"{int(v):010d}" for v in register.opted_out[:2]]
    kept = [f"{int(v):010d}" for v in register.not_opted_out[:3]]
    frame = pl.DataFrame({"nhs": [*opted, *kept, "bad"], "id": list(range(6))})
    cleared, _ = ndop_polars.check_dataframe(frame, "nhs", client)
    assert cleared["id"].to_list() == [2, 3, 4]
    flagged, _ = ndop_polars.check_dataframe(frame, "nhs", client, output="status")
    assert flagged["ndop_status"].to_list() == ["opted_out"] * 2 + ["cleared"] * 3 + ["invalid"]
    with pytest.raises(UsageError, match="output must be"):
        ndop_polars.check_dataframe(frame, "nhs", client, output="both")  # type: ignore[arg-type]


def test_check_file_takes_str_paths_and_writes_report_and_receipt(
    client: Client, register: Register, tmp_path: Path
) -> None:
    cohort = tmp_path / "c.dat"
    cohort.write_text("".join(f"{int(v):010d},\n" for v in register.not_opted_out[:3]))
    check = client.check_file(
        str(cohort), str(tmp_path / "out.dat"), mode="hashed", report_path=str(tmp_path / "r.json")
    )
    assert check.report["cleared"] == 3
    assert (tmp_path / "r.json").exists() and (tmp_path / "r.receipt.json").exists()
    assert check.report["receipt"] == str(tmp_path / "r.receipt.json")


def test_progress_the_caller_passes_is_used(client: Client, register: Register) -> None:
    seen: list[tuple[str, int]] = []

    class Bar:
        def __init__(self, total: int, desc: str, **_: object) -> None:
            seen.append((desc, total))

        def update(self, done: int) -> None:
            seen.append(("update", done))

        def close(self) -> None:
            seen.append(("close", 0))

    numbers = [f"{int(v):010d}" for v in register.not_opted_out[:50]]
    client.check(numbers, mode="private", progress=Bar)
    assert seen[0] == ("checking", 50) and seen[-1] == ("close", 0)
    assert sum(n for what, n in seen if what == "update") == 50
