"""Writing the cleared rows of a cohort file back in its own format, all or nothing.

`.dat` rows are written canonically (`NNNNNNNNNN,`); `.csv` rows keep every column and the
delimiter; plain text rows are written as they were. The cleared file keeps the input's line
ends, is gzip-compressed when its name ends in `.gz`, and replaces OUT only when complete.
`-` writes to standard output instead, as the rows come.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Final

import numpy as np

from ndop_core.cohort_files import Chunk, CohortFile, Format
from ndop_core.errors import InputError
from ndop_core.input_stream import STDIN
from ndop_core.nhs_number import canonical_bytes

_ROWS_AT_ONCE: Final = 1 << 20


class ClearedWriter:
    """Writes cleared rows to a temporary file that replaces OUT only when complete."""

    def __init__(self, cohort: CohortFile, out: Path | str) -> None:
        self._cohort = cohort
        self._to_stdout = str(out) == STDIN
        self._out = Path(out)
        self._temp: Path | None = None
        self._binary: IO[bytes]
        if self._to_stdout:
            self._binary = sys.stdout.buffer
        else:
            directory = self._out.parent if str(self._out.parent) else Path(".")
            try:
                fd, temp_name = tempfile.mkstemp(prefix=f".{self._out.name}.", dir=directory)
            except OSError as exc:
                raise self._error(exc) from None
            self._temp = Path(temp_name)
            self._binary = os.fdopen(fd, "wb")
        self._raw = self._binary
        if self._out.suffix.lower() == ".gz" and not self._to_stdout:
            self._binary = gzip.GzipFile(fileobj=self._raw, mode="wb")  # type: ignore[assignment]
        self._handle = io.TextIOWrapper(
            self._binary, encoding=cohort.encoding, newline="", write_through=False
        )
        self._csv = csv.writer(
            self._handle, delimiter=cohort.delimiter, lineterminator=cohort.newline
        )
        if cohort.header is not None:
            self._guarded(lambda: self._csv.writerow(cohort.header or []))

    def write(self, chunk: Chunk, keep: np.ndarray, values: np.ndarray) -> None:
        """Write the rows of `chunk` where `keep` is true; `values` are the rows' numbers."""
        self._guarded(lambda: self._write(chunk, keep, values))

    def write_numbers(self, values: np.ndarray) -> None:
        """Write .dat rows (`NNNNNNNNNN,`) for these numbers, in order."""
        self._guarded(lambda: self._write_numbers(values))

    def _write_numbers(self, values: np.ndarray) -> None:
        suffix = f",{self._cohort.newline}".encode("ascii")
        self._handle.flush()
        for start in range(0, len(values), _ROWS_AT_ONCE):
            self._binary.write(canonical_bytes(values[start : start + _ROWS_AT_ONCE], suffix))

    def _write(self, chunk: Chunk, keep: np.ndarray, values: np.ndarray) -> None:
        positions = np.flatnonzero(keep).tolist()
        newline = self._cohort.newline
        if self._cohort.format is Format.DAT:
            self._write_numbers(values[keep])
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
        def finish() -> None:
            self._handle.flush()
            if self._to_stdout:
                self._handle.detach()
                return
            self._handle.close()
            # A GzipFile given a file object writes its trailer into it but leaves it open:
            # close it too, so that what replaces OUT is complete.
            self._raw.close()
            if self._temp is not None:
                os.replace(self._temp, self._out)

        self._guarded(finish)

    def abort(self) -> None:
        if self._to_stdout:
            return
        try:
            self._handle.close()
        except (OSError, ValueError):
            self._raw.close()
        if self._temp is not None:
            self._temp.unlink(missing_ok=True)

    def _guarded(self, action: Callable[[], object]) -> None:
        try:
            action()
        except OSError as exc:
            self.abort()
            raise self._error(exc) from None
        except UnicodeEncodeError:
            self.abort()
            raise InputError(f"a row cannot be written back in {self._cohort.encoding}") from None

    def _error(self, exc: OSError) -> InputError:
        where = "standard output" if self._to_stdout else f"output {self._out}"
        return InputError(f"cannot write {where}: {exc.strerror or exc}")
