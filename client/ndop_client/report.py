"""The JSON report of a file check: counts, invalid rows, register version and timings.

It holds line numbers and reasons, never an NHS number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ndop_client.check import FileCheck
from ndop_core import receipts
from ndop_core.files import write_json_atomically


def build(check: FileCheck, purpose: str) -> dict[str, Any]:
    tally = check.classified.tally
    outcome = check.classified.outcome
    summary = outcome.summary
    return {
        "mode": check.mode,
        "purpose": purpose,
        "request_id": summary.request_id if summary else "",
        "register": {"version": outcome.register_version, "count": outcome.register_count},
        "input": {
            "path": str(check.cohort.path),
            "format": check.cohort.format.value,
            "column": check.cohort.column_name,
        },
        "output": str(check.out),
        "rows": tally.rows,
        "blank_lines": tally.blank,
        "valid": tally.valid,
        "invalid": {
            "count": len(tally.invalid),
            "rows": [{"line": row.line, "reason": row.reason} for row in tally.invalid],
        },
        "duplicates": tally.duplicates,
        "unique_checked": tally.unique,
        "opted_out": tally.opted_out_rows,
        "opted_out_unique": tally.opted_out_unique,
        "cleared": tally.cleared,
        "cohort_opt_out_rate": round(tally.opted_out_unique / tally.unique, 6)
        if tally.unique
        else 0.0,
        "register_national_count": outcome.register_count,
        "timings_s": {name: round(seconds, 3) for name, seconds in check.timings.items()},
    }


def write(report: dict[str, Any], path: Path) -> None:
    write_json_atomically(report, path, "report")


def receipt_path_for(beside: Path) -> Path:
    """report.json -> report.receipt.json; cleared.dat -> cleared.dat.receipt.json"""
    stem = beside.stem if beside.suffix == ".json" else beside.name
    return beside.with_name(f"{stem}.receipt.json")


def save(check: FileCheck, purpose: str, report_path: Path | None) -> dict[str, Any]:
    """Write the signed receipt beside the report (or the cleared file) and the report itself;
    returns the report, naming the receipt's path."""
    result = build(check, purpose)
    summary = check.classified.outcome.summary
    if summary is not None and summary.HasField("receipt"):
        receipt_path = receipt_path_for(report_path or check.out)
        receipts.write(summary.receipt, receipt_path)
        result["receipt"] = str(receipt_path)
    if report_path is not None:
        write(result, report_path)
    return result


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
