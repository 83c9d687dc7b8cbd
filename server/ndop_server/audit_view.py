"""The audit log as people read it: one line per check, gathered from its rows, and one line
per other event (filter downloads, refused credentials). A line has a row's shape: a check's
line is its `started` row with what was answered and how it ended."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from ndop_server import audit_record as events
from ndop_server.audit_record import AuditRecord

_CHECK_ROWS = {events.STARTED, events.ANSWERED}


def summarise(records: Iterable[AuditRecord]) -> list[AuditRecord]:
    """Checks in the order they opened, each with what was answered and how it ended; a
    check with no closing row was cut off (the server was killed) and reads `interrupted`."""
    lines: list[AuditRecord] = []
    open_checks: dict[str, int] = {}  # request id -> where its check's line is in `lines`
    for record in records:
        index = open_checks.get(record.request_id) if record.request_id != "-" else None
        if record.outcome == events.DUPLICATE_REQUEST:
            # A second check that reused an open check's id: a line of its own.
            lines.append(record)
        elif record.outcome == events.STARTED:
            open_checks[record.request_id] = len(lines)
            lines.append(replace(record, items_checked=0, outcome="interrupted"))
        elif record.outcome == events.ANSWERED and index is not None:
            lines[index] = replace(
                lines[index], items_checked=lines[index].items_checked + record.items_checked
            )
        elif index is not None:
            lines[index] = replace(
                lines[index],
                items_checked=record.items_checked,
                items_opted_out=record.items_opted_out,
                outcome=record.outcome,
            )
            del open_checks[record.request_id]
        elif record.outcome not in _CHECK_ROWS:
            lines.append(record)
    return lines
