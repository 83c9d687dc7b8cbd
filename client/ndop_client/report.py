"""The JSON report of a file check and where a check's outputs go: counts, invalid rows (the
first INVALID_ROWS_LISTED by line, and all of them counted by reason), register version and
timings; the cleared file, the report and the signed receipt, none of which may be another.

It holds line numbers and reasons, never an NHS number.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ndop_client.check import FileCheck
from ndop_core import receipts
from ndop_core.errors import InputError, UsageError
from ndop_core.files import write_json_atomically
from ndop_core.input_stream import STDIN

MOSTLY_INVALID: Final = 0.5
"""Above this share of invalid rows a check warns loudly: the wrong column or format, probably."""


def receipt_path_for(beside: Path) -> Path:
    """report.json -> report.receipt.json; cleared.dat -> cleared.dat.receipt.json"""
    stem = beside.stem if beside.suffix == ".json" else beside.name
    return beside.with_name(f"{stem}.receipt.json")


@dataclass(frozen=True)
class OutputPaths:
    """Where a file check writes: checked before any work, so that a collision or a missing
    directory is refused rather than discovered after the check."""

    out: Path | str
    report: Path | str | None
    receipt: Path

    @classmethod
    def of(
        cls,
        input_path: Path | str,
        out: Path | str,
        report: Path | str | None,
        receipt: Path | str | None,
    ) -> OutputPaths:
        if str(out) == STDIN and report is not None and str(report) == STDIN:
            raise UsageError("--out - and --report - cannot both write to standard output")
        if receipt is None:
            files = [Path(p) for p in (report, out) if p is not None and str(p) != STDIN]
            if not files:
                raise UsageError(
                    "with --out - give --report FILE or --receipt FILE: the signed receipt "
                    "is written to a file"
                )
            receipt = receipt_path_for(files[0])
        if str(receipt) == STDIN:
            raise UsageError("--receipt must be a file, not standard output")
        named = {"--out": out, "--report": report, "--receipt": receipt}
        written = {o: Path(p) for o, p in named.items() if p is not None and str(p) != STDIN}
        for option, path in written.items():
            _require_directory(option, path)
        if str(input_path) != STDIN:
            for option, path in written.items():
                if _same(Path(input_path), path):
                    raise UsageError(f"{option} {path} is the input file; name another file")
        options = list(written)
        for i, first in enumerate(options):
            for second in options[i + 1 :]:
                if _same(written[first], written[second]):
                    raise UsageError(
                        f"{first} and {second} name the same file ({written[first]}); "
                        "each needs its own"
                    )
        return cls(out, report, Path(receipt))


def _same(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _require_directory(option: str, path: Path) -> None:
    directory = path.parent
    if not directory.is_dir() or not os.access(directory, os.W_OK):
        raise UsageError(
            f"{option} {path}: directory {directory} does not exist or is not writable"
        )


def build(check: FileCheck, purpose: str) -> dict[str, Any]:
    tally = check.classified.tally
    outcome = check.classified.outcome
    summary = outcome.summary
    invalid = tally.invalid
    return {
        "mode": check.mode,
        "purpose": purpose,
        "request_id": summary.request_id if summary else "",
        "register": {"version": outcome.register_version, "count": outcome.register_count},
        "input": {
            "path": str(check.cohort.path),
            "format": check.cohort.format.value,
            "column": check.cohort.column_name,
            "encoding": check.cohort.encoding,
        },
        "output": str(check.out),
        "rows": tally.rows,
        "blank_lines": tally.blank,
        "valid": tally.valid,
        "invalid": {
            "count": invalid.count,
            "by_reason": dict(invalid.by_reason),
            "rows": [{"line": row.line, "reason": row.reason} for row in invalid.listed],
            "rows_listed": len(invalid.listed),
        },
        "float_exports": tally.float_exports,
        "duplicates": tally.duplicates,
        "unique_checked": tally.unique,
        "opted_out": tally.opted_out_rows,
        "opted_out_unique": tally.opted_out_unique,
        "cleared": tally.cleared,
        "cohort_opt_out_rate": tally.opt_out_rate,
        "register_national_count": outcome.register_count,
        "timings_s": {name: round(seconds, 3) for name, seconds in check.timings.items()},
    }


def write(report: dict[str, Any], path: Path | str) -> None:
    if str(path) == STDIN:
        try:
            sys.stdout.write(json.dumps(report, indent=2) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            raise  # the reader went away: main() ends quietly
        except OSError as exc:
            raise InputError(
                f"cannot write the report to standard output: {exc.strerror or exc}"
            ) from None
        return
    write_json_atomically(report, Path(path), "report")


def save(check: FileCheck, purpose: str, paths: OutputPaths) -> dict[str, Any]:
    """Write the signed receipt and the report; returns the report, naming the receipt's path."""
    result = build(check, purpose)
    summary = check.classified.outcome.summary
    if summary is not None and summary.HasField("receipt"):
        receipts.write(summary.receipt, paths.receipt)
        result["receipt"] = str(paths.receipt)
    if paths.report is not None:
        write(result, paths.report)
    return result


def warnings(report: dict[str, Any]) -> list[str]:
    """What a person must not miss: most rows invalid, decimals taken for numbers."""
    lines = []
    rows, invalid = report["rows"], report["invalid"]["count"]
    if rows and invalid / rows > MOSTLY_INVALID:
        lines.append(
            f"WARNING: {invalid / rows:.0%} of the rows ({invalid:,} of {rows:,}) are not valid "
            "NHS numbers; is --column the NHS number column, and is this the right file? "
            "(--max-invalid-rate makes this an error)"
        )
    if report["float_exports"]:
        lines.append(
            f"note: {report['float_exports']:,} numbers were written as decimals "
            "(NNNNNNNNNN.0, a spreadsheet or pandas export) and were read as their ten digits"
        )
    return lines


def summary_lines(report: dict[str, Any]) -> list[str]:
    rate = report["cohort_opt_out_rate"] * 100
    return [
        f"mode {report['mode']}, register version {report['register']['version']} "
        f"({report['register']['count']:,} opted out nationally)",
        f"rows {report['rows']:,}: valid {report['valid']:,}, "
        f"invalid {report['invalid']['count']:,}, duplicates {report['duplicates']:,}",
        f"opted out {report['opted_out']:,} ({rate:.2f}% of unique numbers), "
        f"cleared {report['cleared']:,} -> {report['output']}",
        f"took {report['timings_s']['total_s']:.2f} s",
    ]
