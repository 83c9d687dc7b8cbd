"""Cohort files: reading rows in chunks and writing the cleared rows back in the same format.

Three formats, chosen by extension:
- `.dat` (CfNDO): one number per line, written `9434765919,`; cleared rows are written
  canonically;
- `.csv`: a header row, the NHS number in one named column; cleared rows keep every column;
- anything else: plain text, one number per line; cleared rows are written as they were.

Files are read as UTF-8 with an optional BOM; LF and CRLF line ends are both accepted and the
cleared file keeps the input's. Blank lines are skipped, not reported as invalid.
"""

from __future__ import annotations

import csv
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import islice
from pathlib import Path
from typing import IO, Final

import numpy as np

from ndop_client.errors import InputError
from ndop_client.nhs_number import canonical_bytes

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


class ClearedWriter:
    """Writes cleared rows to a temporary file that replaces OUT only when complete."""

    def __init__(self, cohort: CohortFile, out: Path) -> None:
        self._cohort = cohort
        self._out = out
        directory = out.parent if str(out.parent) else Path(".")
        try:
            fd, temp_name = tempfile.mkstemp(prefix=f".{out.name}.", dir=directory)
        except OSError as exc:
            raise InputError(f"cannot write output {out}: {exc.strerror}") from exc
        self._temp = Path(temp_name)
        self._handle = os.fdopen(fd, "w", encoding="utf-8", newline="")
        self._csv = csv.writer(self._handle, lineterminator=cohort.newline)
        if cohort.header is not None:
            self._csv.writerow(cohort.header)

    def write(self, chunk: Chunk, keep: np.ndarray, values: np.ndarray) -> None:
        """Write the rows of `chunk` where `keep` is true; `values` are the rows' numbers."""
        positions = np.flatnonzero(keep).tolist()
        newline = self._cohort.newline
        if self._cohort.format is Format.DAT:
            suffix = f",{newline}".encode("ascii")
            self._handle.write(canonical_bytes(values[keep], suffix).decode("ascii"))
        elif self._cohort.format is Format.CSV:
            rows = chunk.records
            self._csv.writerows(rows[i] for i in positions)
        else:
            lines_in = chunk.records
            self._handle.write(
                "".join(
                    line if line.endswith("\n") else f"{line}{newline}"
                    for line in (str(lines_in[i]) for i in positions)
                )
            )

    def commit(self) -> None:
        self._handle.close()
        os.replace(self._temp, self._out)

    def abort(self) -> None:
        self._handle.close()
        self._temp.unlink(missing_ok=True)
