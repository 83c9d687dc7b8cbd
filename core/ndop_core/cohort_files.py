"""Number files (cohorts and register inputs): reading rows in chunks, validating each chunk.

Three formats, chosen by extension (a `.gz` after it is looked through), or for standard input
and names without one by the first line:
- `.dat` (CfNDO): one number per line, written `9434765919,`;
- `.csv`, `.tsv`: a header row, the NHS number in one named column; the delimiter (comma,
  semicolon, tab or bar) is the one the header row uses most (always tab for `.tsv`);
- anything else: plain text, one number per line.

The input is opened once (see input_stream): pipes, FIFOs and standard input work, and the
second pass that writes the cleared rows reads the same bytes again. LF and CRLF line ends are
both accepted; blank lines are skipped, not reported as invalid.
"""

from __future__ import annotations

import csv
import itertools
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Final

import numpy as np

from ndop_core.errors import InputError
from ndop_core.input_stream import (
    STDIN,
    ByteSource,
    decode_lines,
    decompressed,
    describe,
    encoding_named,
    line_blocks,
    lines_of,
)
from ndop_core.line_numbers import Decode, parse_lines
from ndop_core.nhs_number import InvalidReason, parse_column

CHUNK_ROWS: Final = 65536
INVALID_ROWS_LISTED: Final = 1000
_DEFAULT_COLUMN_PATTERN: Final = re.compile(
    r"^\s*nhs[\s_.-]*(number|no|num)?\.?\s*$", re.IGNORECASE
)
_LOOKS_LIKE_NUMBER: Final = re.compile(r"\s*[0-9]{3}[ -]?[0-9]{3}[ -]?[0-9]{4}(\.0*)?\s*")
_DELIMITERS: Final = (",", ";", "\t", "|")
_COLUMNS_NAMED: Final = 20


class Format(StrEnum):
    DAT = "dat"
    CSV = "csv"
    TEXT = "text"


FORMAT_CHOICES: Final = ("dat", "csv", "tsv", "text")


def detect_format(path: Path | str) -> Format | None:
    """The format a name says, or None when only the content can tell (stdin, no suffix)."""
    if str(path) == STDIN:
        return None
    name = Path(path)
    suffix = name.suffix.lower()
    if suffix == ".gz":
        suffix = Path(name.stem).suffix.lower()
    if suffix == ".dat":
        return Format.DAT
    if suffix in (".csv", ".tsv", ".tab"):
        return Format.CSV
    if suffix in (".txt", ".text"):
        return Format.TEXT
    return None


def _sniff_format(first_line: str) -> Format:
    text = first_line.strip()
    if not text or _LOOKS_LIKE_NUMBER.fullmatch(text.removesuffix(",")):
        return Format.DAT if text.endswith(",") else Format.TEXT
    if _DEFAULT_COLUMN_PATTERN.match(text) or any(d in text for d in _DELIMITERS):
        return Format.CSV
    return Format.TEXT


def _sniff_delimiter(path: Path | str, header_line: str) -> str:
    suffix = Path(str(path).removesuffix(".gz")).suffix.lower()
    if suffix in (".tsv", ".tab"):
        return "\t"
    counts = {d: header_line.count(d) for d in _DELIMITERS}
    best = max(_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


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
    """A cohort file (or `-`, standard input) opened once and read in chunks, as often as
    needed: later reads replay what the first one read."""

    def __init__(
        self,
        path: Path | str,
        column: str | None = None,
        *,
        encoding: str = "utf-8",
        format: str | None = None,
    ) -> None:
        self.path = path
        self.name = describe(path)
        self.encoding = encoding_named(encoding)
        self.column_name: str | None = None
        self._column_index = 0
        self.header: list[str] | None = None
        self.delimiter = ","
        self.newline = "\n"
        self._source = ByteSource(path)
        try:
            self._pending: Iterator[bytes] | None = self._blocks()
            block = next(self._pending, b"")
            first_end = block.find(b"\n") + 1 or len(block)
            first = decode_lines(block[:first_end], self.encoding, self.name, 0)
            if block:
                self._pending = itertools.chain([block], self._pending)
            if first.endswith("\r\n"):
                self.newline = "\r\n"
            chosen = _chosen_format(format) if format else detect_format(path)
            self.format = chosen or _sniff_format(first)
            if self.format is Format.CSV:
                self.delimiter = "\t" if format == "tsv" else _sniff_delimiter(path, first)
                self._choose_column(first, column)
            elif column is not None:
                raise InputError("--column only applies to .csv and .tsv input")
        except BaseException:
            self._source.close()
            raise

    @property
    def size(self) -> int | None:
        """Bytes in the input when it is a regular file (compressed, if it is); None otherwise."""
        return self._source.size

    def __enter__(self) -> CohortFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._source.close()

    def _blocks(self) -> Iterator[bytes]:
        """The input in blocks of whole lines (see input_stream.line_blocks)."""
        blocks = decompressed(self._source.blocks(), self.name)
        return line_blocks(blocks, self.encoding, self.name)

    def _take_blocks(self) -> Iterator[bytes]:
        """The blocks the first read left, or the whole input again."""
        blocks = self._pending if self._pending is not None else self._blocks()
        self._pending = None
        return blocks

    def _choose_column(self, first_line: str, column: str | None) -> None:
        header = next(csv.reader([first_line], delimiter=self.delimiter), [])
        if not header:
            raise InputError(f"{self.name} has no header row")
        self.header = header
        names = [name.strip() for name in header]
        if any(_LOOKS_LIKE_NUMBER.fullmatch(name) for name in names):
            raise InputError(
                f"the first row of {self.name} holds an NHS number, not column names: a CSV "
                "needs a header row (for one number per line, name the file .txt)"
            )
        if column is not None:
            index = _column_index(names, column)
            if index is None:
                asked = "like an NHS number" if _LOOKS_LIKE_NUMBER.fullmatch(column) else column
                raise InputError(
                    f"{self.name} has no column named {asked!r}; its columns are {_listed(names)}"
                )
            self._column_index = index
        else:
            matches = [i for i, name in enumerate(names) if _DEFAULT_COLUMN_PATTERN.match(name)]
            if len(matches) != 1:
                raise InputError(
                    f"cannot tell which column of {self.name} holds the NHS number; "
                    f"name it with --column (its columns are {_listed(names)})"
                )
            self._column_index = matches[0]
        self.column_name = names[self._column_index]

    def chunks(self, size: int = CHUNK_ROWS) -> Iterator[Chunk]:
        blocks = self._take_blocks()
        lines = itertools.chain.from_iterable(lines_of(blocks, self.encoding, self.name))
        try:
            if self.format is Format.CSV:
                yield from self._csv_chunks(lines, size)
            else:
                yield from self._line_chunks(lines, size)
        except csv.Error as exc:
            raise InputError(f"{self.name} is not valid CSV: {exc}") from None

    def parsed_chunks(self) -> Iterator[ParsedChunk]:
        """Every row's number, as `read_chunk` gives them for `chunks()`; .dat and text input
        straight from its bytes, without a Python object per row."""
        if self.format is Format.CSV:
            yield from map(read_chunk, self.chunks())
            return
        lines_before = 0
        for block in self._take_blocks():
            parsed = parse_lines(block, self._decoder(lines_before))
            rows = len(parsed.values)
            blank = _blank_lines(parsed.reasons, rows)
            line_numbers = range(lines_before + 1, lines_before + rows + 1)
            invalid = invalid_rows(parsed.reasons, line_numbers, blank)
            yield ParsedChunk(parsed.values, blank, invalid, parsed.float_exports)
            lines_before += rows

    def _decoder(self, lines_before: int) -> Decode:
        def decode(line: bytes, position: int) -> str:
            return decode_lines(line, self.encoding, self.name, lines_before + position)

        return decode

    def _line_chunks(self, lines: Iterator[str], size: int) -> Iterator[Chunk]:
        first_line = 1
        while batch := list(itertools.islice(lines, size)):
            yield Chunk(batch, range(first_line, first_line + len(batch)), batch)
            first_line += len(batch)

    def _csv_chunks(self, lines: Iterator[str], size: int) -> Iterator[Chunk]:
        reader = csv.reader(lines, delimiter=self.delimiter)
        next(reader, None)
        column = self._column_index
        while True:
            rows: list[list[str]] = []
            line_numbers: list[int] = []
            for row in itertools.islice(reader, size):
                rows.append(row)
                line_numbers.append(reader.line_num)
            if not rows:
                return
            texts = [row[column] if len(row) > column else "" for row in rows]
            blank = [not any(field.strip() for field in row) for row in rows]
            yield Chunk(texts, line_numbers, rows, blank)


def _chosen_format(name: str) -> Format:
    if name not in FORMAT_CHOICES:
        raise InputError(f"--format must be one of {', '.join(FORMAT_CHOICES)}, not {name!r}")
    return Format.CSV if name == "tsv" else Format(name)


def _column_index(names: list[str], column: str) -> int | None:
    wanted = column.strip()
    if wanted in names:
        return names.index(wanted)
    folded = [i for i, name in enumerate(names) if name.casefold() == wanted.casefold()]
    return folded[0] if len(folded) == 1 else None


def _listed(names: list[str]) -> str:
    shown = ", ".join(repr(name[:40]) for name in names[:_COLUMNS_NAMED])
    more = len(names) - _COLUMNS_NAMED
    return f"{shown} and {more} more" if more > 0 else shown


@dataclass(frozen=True)
class InvalidRow:
    line: int
    """Line number in a file (1-based), or position in a sequence (0-based)."""
    reason: str


@dataclass
class InvalidRows:
    """The first `limit` invalid rows by line, and how many there were in all, by reason:
    memory stays bounded however much of an input is not NHS numbers."""

    limit: int = INVALID_ROWS_LISTED
    listed: list[InvalidRow] = field(default_factory=list)
    count: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)

    def add(self, rows: Iterable[InvalidRow]) -> None:
        for row in rows:
            self.count += 1
            self.by_reason[row.reason] += 1
            if len(self.listed) < self.limit:
                self.listed.append(row)

    def __iter__(self) -> Iterator[InvalidRow]:
        return iter(self.listed)

    def __bool__(self) -> bool:
        return self.count > 0


@dataclass
class ParsedChunk:
    values: np.ndarray
    blank: np.ndarray
    invalid: list[InvalidRow]
    float_exports: int


def read_chunk(chunk: Chunk) -> ParsedChunk:
    """Values, blank-row mask, invalid rows and decimal exports of one chunk of a file."""
    parsed = parse_column(chunk.texts)
    reasons = parsed.reasons
    if chunk.blank is None:
        blank = _blank_lines(reasons, len(parsed.values))
    else:
        blank = np.asarray(chunk.blank, dtype=bool)
    invalid = invalid_rows(reasons, chunk.line_numbers, blank)
    return ParsedChunk(parsed.values, blank, invalid, parsed.float_exports)


def _blank_lines(reasons: dict[int, InvalidReason], rows: int) -> np.ndarray:
    """Which of a line format's rows are blank lines (blank, not invalid)."""
    blank = np.zeros(rows, dtype=bool)
    blank[[p for p, reason in reasons.items() if reason is InvalidReason.EMPTY]] = True
    return blank


def parse_chunk(chunk: Chunk) -> tuple[np.ndarray, np.ndarray, list[InvalidRow]]:
    """(values, blank-row mask, invalid rows) of one chunk of a cohort file."""
    parsed = read_chunk(chunk)
    return parsed.values, parsed.blank, parsed.invalid


def invalid_rows(
    reasons: dict[int, InvalidReason], line_numbers: Sequence[int], blank: np.ndarray
) -> list[InvalidRow]:
    """The rows `parse_values` found invalid, by line; blank rows are not invalid."""
    return [
        InvalidRow(line_numbers[position], str(reason))
        for position, reason in sorted(reasons.items())
        if not blank[position]
    ]
