"""The audit log as people read it: one line per check, gathered from its rows, and one line
per other event (filter downloads, refused credentials)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ndop_server import audit_record as events
from ndop_server.audit_record import AuditRecord

_CHECK_ROWS = {events.STARTED, events.ANSWERED}


@dataclass
class AuditLine:
    at: str
    organisation: str
    request_id: str
    mode: str
    purpose: str
    items_checked: int
    items_opted_out: int | None
    register_version: int
    outcome: str


def summarise(records: Iterable[AuditRecord]) -> list[AuditLine]:
    """Checks in the order they opened, each with what was answered and how it ended; a
    check with no closing row was cut off (the server was killed) and reads `interrupted`."""
    lines: list[AuditLine] = []
    open_checks: dict[str, AuditLine] = {}
    for record in records:
        line = open_checks.get(record.request_id) if record.request_id != "-" else None
        if record.outcome == events.DUPLICATE_REQUEST:
            # A second check that reused an open check's id: a line of its own.
            lines.append(AuditLine(**vars(record)))
        elif record.outcome == events.STARTED:
            line = AuditLine(**{**vars(record), "items_checked": 0, "outcome": "interrupted"})
            open_checks[record.request_id] = line
            lines.append(line)
        elif record.outcome == events.ANSWERED and line is not None:
            line.items_checked += record.items_checked
        elif line is not None:
            line.items_checked = record.items_checked
            line.items_opted_out = record.items_opted_out
            line.outcome = record.outcome
            del open_checks[record.request_id]
        elif record.outcome not in _CHECK_ROWS:
            lines.append(AuditLine(**vars(record)))
    return lines
