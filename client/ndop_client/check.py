"""The data path of a check, top to bottom: read rows → validate → dedupe → match → write.

Matching is whatever the caller passes in (hashed or private mode): it receives the sorted
unique valid numbers and answers which are opted out. Memory is bounded by the number of rows
times a few bytes (NumPy arrays, never a Python object per row) plus the first
INVALID_ROWS_LISTED invalid rows; the input is opened once and the cleared rows are written on a
second pass over the same bytes (see ndop_core.input_stream).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ndop_client.cleared import ClearedWriter
from ndop_client.column_values import ColumnTexts
from ndop_client.matching import MatchOutcome
from ndop_client.results import CheckResult, Tally
from ndop_core.cohort_files import CohortFile, Format, InvalidRows, invalid_rows
from ndop_core.errors import InputError
from ndop_core.nhs_number import INVALID, InvalidReason, parse_column

Matcher = Callable[[np.ndarray], MatchOutcome]


@dataclass
class Classified:
    """Every row's number (INVALID where it has none) and what matching said of each row."""

    values: np.ndarray
    blank: np.ndarray
    opted_out: np.ndarray
    outcome: MatchOutcome
    tally: Tally


@dataclass
class Validated:
    """A column read and validated, before anything is sent."""

    values: np.ndarray
    blank: np.ndarray
    invalid: InvalidRows = field(default_factory=InvalidRows)
    float_exports: int = 0

    @property
    def rows(self) -> int:
        return int(len(self.values) - self.blank.sum())

    def require_invalid_rate(self, max_rate: float | None) -> None:
        """InputError before any check when more rows are invalid than the caller allows."""
        if max_rate is None or not self.rows:
            return
        rate = self.invalid.count / self.rows
        if rate > max_rate:
            raise InputError(
                f"{rate:.0%} of the rows ({self.invalid.count:,} of {self.rows:,}) are not valid "
                f"NHS numbers, more than the {max_rate:.0%} allowed by --max-invalid-rate; "
                "nothing was sent (is --column the NHS number column?)"
            )


def classify(checked: Validated, matcher: Matcher) -> Classified:
    """Dedupe the valid numbers, match each once, and map the answers back to every row."""
    values, blank = checked.values, checked.blank
    valid = values != INVALID
    unique, inverse = np.unique(values[valid], return_inverse=True)
    outcome = matcher(unique)
    opted_out = np.zeros(len(values), dtype=bool)
    opted_out[valid] = outcome.opted_out[inverse]
    tally = Tally(
        rows=checked.rows,
        blank=int(blank.sum()),
        valid=int(valid.sum()),
        unique=len(unique),
        opted_out_rows=int(opted_out.sum()),
        opted_out_unique=int(outcome.opted_out.sum()),
        invalid=checked.invalid,
        float_exports=checked.float_exports,
    )
    tally.duplicates = tally.valid - tally.unique
    tally.cleared = tally.valid - tally.opted_out_rows
    return Classified(values, blank, opted_out, outcome, tally)


@dataclass
class ColumnNumbers:
    """A caller's column as numbers: each row's value (INVALID where it has none), why each
    invalid row is invalid, and which valid rows were written as decimals."""

    values: np.ndarray
    reasons: dict[int, InvalidReason]
    from_float: np.ndarray


def numbers_of(column: ColumnTexts) -> ColumnNumbers:
    parsed = parse_column(column.texts)
    values = parsed.values
    reasons = parsed.reasons
    for position, reason in column.reasons.items():
        values[position] = INVALID
        reasons[position] = reason
    from_float = np.zeros(len(values), dtype=bool)
    if len(column.from_float):
        from_float |= column.from_float
    from_float[parsed.float_positions] = True
    return ColumnNumbers(values, reasons, from_float & (values != INVALID))


def validate_column(column: ColumnTexts) -> Validated:
    numbers = numbers_of(column)
    values = numbers.values
    blank = np.zeros(len(values), dtype=bool)
    checked = Validated(values, blank, float_exports=int(numbers.from_float.sum()))
    checked.invalid.add(invalid_rows(numbers.reasons, range(len(values)), blank))
    return checked


def check_column(
    inputs: list[object] | np.ndarray,
    column: ColumnTexts,
    matcher: Matcher,
    mode: str,
    max_invalid_rate: float | None = None,
) -> CheckResult:
    checked = validate_column(column)
    checked.require_invalid_rate(max_invalid_rate)
    result = classify(checked, matcher)
    summary = result.outcome.summary
    codes = np.where(checked.values == INVALID, 2, result.opted_out.astype(np.uint8))
    return CheckResult(
        mode=mode,
        register_version=result.outcome.register_version,
        register_count=result.outcome.register_count,
        codes=codes.astype(np.uint8),
        inputs=inputs,
        tally=result.tally,
        request_id=summary.request_id if summary else "",
        receipt=summary.receipt if summary else None,
    )


@dataclass
class FileCheck:
    """The outcome of checking one file; `report` turns it into the JSON report."""

    mode: str
    cohort: CohortFile
    out: Path | str
    classified: Classified
    timings: dict[str, float]
    report: dict[str, Any] = field(default_factory=dict)
    """the JSON report, once saved (Client.check_file)"""


def read_file(cohort: CohortFile) -> Validated:
    value_chunks: list[np.ndarray] = []
    blank_chunks: list[np.ndarray] = []
    checked = Validated(np.empty(0, dtype=np.int64), np.empty(0, dtype=bool))
    for parsed in cohort.parsed_chunks():
        value_chunks.append(parsed.values)
        blank_chunks.append(parsed.blank)
        checked.invalid.add(parsed.invalid)
        checked.float_exports += parsed.float_exports
    if value_chunks:
        checked.values = np.concatenate(value_chunks)
        checked.blank = np.concatenate(blank_chunks)
    return checked


def _write_rows(
    cohort: CohortFile, writer: ClearedWriter, keep: np.ndarray, values: np.ndarray
) -> None:
    """The kept rows as the input wrote them, from a second pass over the input."""
    offset = 0
    for chunk in cohort.chunks():
        end = offset + len(chunk.texts)
        writer.write(chunk, keep[offset:end], values[offset:end])
        offset = end
    if offset != len(values):
        raise InputError(f"{cohort.name} changed while it was being checked")


def check_file(
    cohort: CohortFile,
    out: Path | str,
    matcher: Matcher,
    mode: str,
    *,
    max_invalid_rate: float | None = None,
) -> FileCheck:
    started = time.perf_counter()
    checked = read_file(cohort)
    checked.require_invalid_rate(max_invalid_rate)
    validated = time.perf_counter()

    classified = classify(checked, matcher)
    matched = time.perf_counter()

    values = classified.values
    keep = (values != INVALID) & ~classified.opted_out
    writer = ClearedWriter(cohort, out)
    try:
        if cohort.format is Format.DAT:
            # Cleared .dat rows are written canonically: nothing of the input is read again.
            writer.write_numbers(values[keep])
        else:
            _write_rows(cohort, writer, keep, values)
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    written = time.perf_counter()
    timings = {
        "read_and_validate_s": validated - started,
        "match_s": matched - validated,
        "write_s": written - matched,
        "total_s": written - started,
    }
    return FileCheck(mode, cohort, out, classified, timings)
