"""Reading one-number-a-line files from their bytes (ndop_core.line_numbers) gives every row
the number, blank flag and invalid reason that reading them as text lines gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ndop_core import input_stream
from ndop_core.cohort_files import CohortFile, ParsedChunk, read_chunk
from ndop_core.errors import InputError
from ndop_core.nhs_number import with_check_digit

VALID = [int(number) for i in range(40) if (number := with_check_digit(f"99900{i:04d}"))]


def _row(kind: int, index: int) -> str:
    number = str(VALID[index % len(VALID)])
    return [
        number,
        f"{number},",
        f" {number} , ",
        f"{number[:3]} {number[3:6]} {number[6:]}",
        f"{number[:3]}-{number[3:6]}-{number[6:]}",
        f"{number}.0",
        f"{number[:9]}{(int(number[9]) + 1) % 10}",
        "",
        "   ",
        "not a number",
        "99900000",
        f"{number},,",
        "é" + number,
        f"{number}\r",
        "\x00" * 10,
        f"{number[:9]}a,",
    ][kind]


def _both(path: Path, encoding: str = "utf-8") -> tuple[ParsedChunk, ParsedChunk]:
    def joined(parts: list[ParsedChunk]) -> ParsedChunk:
        invalid = [row for part in parts for row in part.invalid]
        return ParsedChunk(
            np.concatenate([p.values for p in parts]) if parts else np.empty(0, np.int64),
            np.concatenate([p.blank for p in parts]) if parts else np.empty(0, bool),
            invalid,
            sum(p.float_exports for p in parts),
        )

    with CohortFile(path, encoding=encoding) as cohort:
        from_bytes = joined(list(cohort.parsed_chunks()))
        from_text = joined([read_chunk(chunk) for chunk in cohort.chunks()])
    return from_bytes, from_text


def _same(a: ParsedChunk, b: ParsedChunk) -> None:
    assert a.values.tolist() == b.values.tolist()
    assert a.blank.tolist() == b.blank.tolist()
    assert a.invalid == b.invalid
    assert a.float_exports == b.float_exports


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 15), st.integers(0, 100)), max_size=60),
    crlf=st.booleans(),
    final_newline=st.booleans(),
    suffix=st.sampled_from([".dat", ".txt"]),
)
def test_bytes_and_text_lines_agree(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[tuple[int, int]],
    crlf: bool,
    final_newline: bool,
    suffix: str,
) -> None:
    newline = "\r\n" if crlf else "\n"
    text = newline.join(_row(kind, index) for kind, index in rows)
    if rows and final_newline:
        text += newline
    path = tmp_path_factory.mktemp("lines") / f"cohort{suffix}"
    path.write_bytes(text.encode("utf-8"))
    _same(*_both(path))


def test_agree_across_blocks_and_with_a_bom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(input_stream, "BLOCK_BYTES", 97)
    rows = "\r\n".join(_row(i % 16, i) for i in range(500))
    path = tmp_path / "cohort.dat"
    path.write_bytes(b"\xef\xbb\xbf" + rows.encode("utf-8"))
    from_bytes, from_text = _both(path)
    _same(from_bytes, from_text)
    assert len(from_bytes.values) == 500
    assert from_bytes.values[0] == VALID[0]


def test_a_line_not_in_the_encoding_is_named(tmp_path: Path) -> None:
    path = tmp_path / "cohort.dat"
    path.write_bytes(f"{VALID[0]},\n{VALID[1]},\n\xff{VALID[2]},\n".encode("latin-1"))
    with CohortFile(path) as cohort, pytest.raises(InputError, match="line 3 of"):
        list(cohort.parsed_chunks())
    with CohortFile(path, encoding="latin-1") as cohort:
        parsed = list(cohort.parsed_chunks())
    assert [row.line for row in parsed[0].invalid] == [3]


@pytest.mark.parametrize("newline", ["\r\n", "\n"])
@pytest.mark.parametrize("odd_one_out", [[], [" 12345678,"]])
def test_agree_when_every_line_is_alike(
    tmp_path: Path, newline: str, odd_one_out: list[str]
) -> None:
    """Lines all of one width are read as a table; one line of another width, as lines."""
    wrong_check = f"{VALID[3]}"[:9] + str((VALID[3] % 10 + 1) % 10)
    rows = [f"{v}," for v in VALID] + [
        f"{wrong_check},",
        "94347659a9,",
        "##########,",
        *odd_one_out,
    ]
    path = tmp_path / "cohort.dat"
    path.write_text("".join(row + newline for row in rows))
    from_bytes, from_text = _both(path)
    _same(from_bytes, from_text)
    assert from_bytes.values[: len(VALID)].tolist() == VALID
    assert [row.line for row in from_bytes.invalid] == list(range(len(VALID) + 1, len(rows) + 1))
