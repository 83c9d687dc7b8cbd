"""The data path of a check, top to bottom: read rows → validate → dedupe → match → write.

Matching is whatever the caller passes in (hashed or private mode): it receives the sorted
unique valid numbers and answers which are opted out. Memory is bounded by the number of rows
times a few bytes (NumPy arrays, never a Python object per row); rows themselves are read twice
from the file rather than held.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from ndop_client.cleared import ClearedWriter
from ndop_client.matching import MatchOutcome
from ndop_core.cohort_files import CohortFile, InvalidRow, invalid_rows, parse_chunk
from ndop_core.errors import InputError
from ndop_core.nhs_number import INVALID, parse_values

Matcher = Callable[[np.ndarray], MatchOutcome]


class Status(StrEnum):
    CLEARED = "cleared"
    OPTED_OUT = "opted_out"
    INVALID = "invalid"


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
    invalid: list[InvalidRow] = field(default_factory=list)


@dataclass
class Classified:
    """Every row's number (INVALID where it has none) and what matching said of each row."""

    values: np.ndarray
    blank: np.ndarray
    opted_out: np.ndarray
    outcome: MatchOutcome
    tally: Tally


def classify(values: np.ndarray, blank: np.ndarray, matcher: Matcher) -> Classified:
    """Dedupe the valid numbers, match each once, and map the answers back to every row."""
    valid = values != INVALID
    unique, inverse = np.unique(values[valid], return_inverse=True)
    outcome = matcher(unique)
    opted_out = np.zeros(len(values), dtype=bool)
    opted_out[valid] = outcome.opted_out[inverse]
    tally = Tally(
        rows=int(len(values) - blank.sum()),
        blank=int(blank.sum()),
        valid=int(valid.sum()),
        unique=len(unique),
        opted_out_rows=int(opted_out.sum()),
        opted_out_unique=int(outcome.opted_out.sum()),
    )
    tally.duplicates = tally.valid - tally.unique
    tally.cleared = tally.valid - tally.opted_out_rows
    return Classified(values, blank, opted_out, outcome, tally)


@dataclass
class CheckResult:
    """The answer to an in-memory check (`Client.check`)."""

    mode: str
    register_version: int
    register_count: int
    statuses: list[Status]
    cleared: list[str]
    tally: Tally
    request_id: str
    receipt: Any = None

    @property
    def invalid(self) -> list[InvalidRow]:
        return self.tally.invalid

    @property
    def opted_out_count(self) -> int:
        return self.tally.opted_out_rows


def check_sequence(numbers: Sequence[str], matcher: Matcher, mode: str) -> CheckResult:
    values, reasons = parse_values(numbers)
    blank = np.zeros(len(values), dtype=bool)
    result = classify(values, blank, matcher)
    result.tally.invalid = invalid_rows(reasons, range(len(values)), blank)
    statuses = [
        Status.INVALID if v == INVALID else Status.OPTED_OUT if o else Status.CLEARED
        for v, o in zip(values.tolist(), result.opted_out.tolist(), strict=True)
    ]
    cleared = [n for n, s in zip(numbers, statuses, strict=True) if s is Status.CLEARED]
    return CheckResult(
        mode=mode,
        register_version=result.outcome.register_version,
        register_count=result.outcome.register_count,
        statuses=statuses,
        cleared=cleared,
        tally=result.tally,
        request_id=result.outcome.summary.request_id if result.outcome.summary else "",
        receipt=result.outcome.summary.receipt if result.outcome.summary else None,
    )


@dataclass
class FileCheck:
    """The outcome of checking one file; `report` turns it into the JSON report."""

    mode: str
    cohort: CohortFile
    out: Path
    classified: Classified
    timings: dict[str, float]


def check_file(cohort: CohortFile, out: Path, matcher: Matcher, mode: str) -> FileCheck:
    started = time.perf_counter()
    value_chunks: list[np.ndarray] = []
    blank_chunks: list[np.ndarray] = []
    invalid: list[InvalidRow] = []
    for chunk in cohort.chunks():
        values, blank, chunk_invalid = parse_chunk(chunk)
        value_chunks.append(values)
        blank_chunks.append(blank)
        invalid.extend(chunk_invalid)
    values = np.concatenate(value_chunks) if value_chunks else np.empty(0, dtype=np.int64)
    blank = np.concatenate(blank_chunks) if blank_chunks else np.empty(0, dtype=bool)
    validated = time.perf_counter()

    classified = classify(values, blank, matcher)
    classified.tally.invalid = invalid
    matched = time.perf_counter()

    keep = (values != INVALID) & ~classified.opted_out
    writer = ClearedWriter(cohort, out)
    try:
        offset = 0
        for chunk in cohort.chunks():
            end = offset + len(chunk.texts)
            writer.write(chunk, keep[offset:end], values[offset:end])
            offset = end
        if offset != len(values):
            raise InputError("the input file changed while it was being checked")
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
