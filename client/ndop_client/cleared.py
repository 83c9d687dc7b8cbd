"""Writing the cleared rows of a cohort file back in its own format, all or nothing.

`.dat` rows are written canonically (`NNNNNNNNNN,`); `.csv` rows keep every column; plain text
rows are written as they were. The cleared file keeps the input's line ends.
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

import numpy as np

from ndop_core.cohort_files import Chunk, CohortFile, Format
from ndop_core.errors import InputError
from ndop_core.nhs_number import canonical_bytes


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
