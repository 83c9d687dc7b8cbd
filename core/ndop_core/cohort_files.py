"""Number files (cohorts and register inputs): reading rows in chunks, validating each chunk.

Three formats, chosen by extension:
- `.dat` (CfNDO): one number per line, written `9434765919,`;
- `.csv`: a header row, the NHS number in one named column;
- anything else: plain text, one number per line.

Files are read as UTF-8 with an optional BOM; LF and CRLF line ends are both accepted.
Blank lines are skipped, not reported as invalid.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import islice
from pathlib import Path
from typing import IO, Final

import numpy as np

from ndop_core.errors import InputError
from ndop_core.nhs_number import InvalidReason, parse_values

CHUNK_ROWS: Final = 65536
_DEFAULT_COLUMN_PATTERN: Final = re.compile(r"^\s*nhs[\s_-]*(number|no|num)?\s*$", re.IGNORECASE)


class Format(StrEnum):
    DAT = "dat"
    CSV = "csv"
    TEXT = "text"


def detect_format(path: Path) -> Format:
    suffix = path.suffix.lower()
    if suffix == ".dat":
        return Format.DAT
    if suffix == ".csv":
        return Format.CSV
    return Format.TEXT


@dataclass
class Chunk:
    """Consecutive rows of a cohort file."""

    texts: list[str]
    """The text that should hold an NHS number, one per row."""
    line_numbers: Sequence[int]
    records: list[str] | list[list[str]]
    """What is written back for a cleared row: the line (.dat, text) or the fields (.csv)."""
    blank: list[bool] | None = None
    """Rows with nothing in them at all; None where an empty text means a blank line."""


class CohortFile:
    """A cohort file opened for reading in chunks, as often as needed."""

    def __init__(self, path: Path, column: str | None = None) -> None:
        self.path = path
        self.format = detect_format(path)
        self.column_name: str | None = None
        self._column_index = 0
        self.header: list[str] | None = None
        self.newline = "\n"
        try:
            with self._open() as handle:
                first = handle.readline()
        except FileNotFoundError as exc:
            raise InputError(f"input file {path} does not exist") from exc
        except IsADirectoryError as exc:
            raise InputError(f"input {path} is a directory, not a file") from exc
        except UnicodeDecodeError as exc:
            raise InputError(f"input file {path} is not UTF-8 text") from exc
        except OSError as exc:
            raise InputError(f"cannot read input file {path}: {exc.strerror}") from exc
        if first.endswith("\r\n"):
            self.newline = "\r\n"
        if self.format is Format.CSV:
            self._choose_column(first, column)
        elif column is not None:
            raise InputError("--column only applies to .csv input")

    def _open(self) -> IO[str]:
        return open(self.path, encoding="utf-8-sig", newline="")

    def _choose_column(self, first_line: str, column: str | None) -> None:
        header = next(csv.reader([first_line]), [])
        if not header:
            raise InputError(f"input file {self.path} has no header row")
        self.header = header
        names = [name.strip() for name in header]
        if column is not None:
            if column not in names:
                raise InputError(f"input file {self.path} has no column named {column!r}")
            self._column_index = names.index(column)
        else:
            matches = [i for i, name in enumerate(names) if _DEFAULT_COLUMN_PATTERN.match(name)]
            if len(matches) != 1:
                raise InputError(
                    f"cannot tell which column of {self.path} holds the NHS number; "
                    "name it with --column"
                )
            self._column_index = matches[0]
        self.column_name = names[self._column_index]

    def chunks(self, size: int = CHUNK_ROWS) -> Iterator[Chunk]:
        try:
            with self._open() as handle:
                if self.format is Format.CSV:
                    yield from self._csv_chunks(handle, size)
                else:
                    yield from self._line_chunks(handle, size)
        except UnicodeDecodeError as exc:
            raise InputError(f"input file {self.path} is not UTF-8 text") from exc
        except csv.Error as exc:
            raise InputError(f"input file {self.path} is not valid CSV: {exc}") from exc

    def _line_chunks(self, handle: IO[str], size: int) -> Iterator[Chunk]:
        first_line = 1
        while lines := list(islice(handle, size)):
            yield Chunk(lines, range(first_line, first_line + len(lines)), lines)
            first_line += len(lines)

    def _csv_chunks(self, handle: IO[str], size: int) -> Iterator[Chunk]:
        reader = csv.reader(handle)
        next(reader, None)
        column = self._column_index
        while True:
            rows: list[list[str]] = []
            line_numbers: list[int] = []
            for row in islice(reader, size):
                rows.append(row)
                line_numbers.append(reader.line_num)
            if not rows:
                return
            texts = [row[column] if len(row) > column else "" for row in rows]
            blank = [not any(field.strip() for field in row) for row in rows]
            yield Chunk(texts, line_numbers, rows, blank)


@dataclass(frozen=True)
class InvalidRow:
    line: int
    """Line number in a file (1-based), or position in a sequence (0-based)."""
    reason: str


def parse_chunk(chunk: Chunk) -> tuple[np.ndarray, np.ndarray, list[InvalidRow]]:
    """(values, blank-row mask, invalid rows) of one chunk of a cohort file."""
    values, reasons = parse_values(chunk.texts)
    if chunk.blank is None:
        blank = np.zeros(len(values), dtype=bool)
        blank[[p for p, reason in reasons.items() if reason is InvalidReason.EMPTY]] = True
    else:
        blank = np.asarray(chunk.blank, dtype=bool)
    return values, blank, invalid_rows(reasons, chunk.line_numbers, blank)


def invalid_rows(
    reasons: dict[int, InvalidReason], line_numbers: Sequence[int], blank: np.ndarray
) -> list[InvalidRow]:
    """The rows `parse_values` found invalid, by line; blank rows are not invalid."""
    return [
        InvalidRow(line_numbers[position], str(reason))
        for position, reason in sorted(reasons.items())
        if not blank[position]
    ]
