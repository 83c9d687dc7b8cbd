"""The audit log's hash chain: each row is bound to the row before it with a key from the keys
file, so editing, deleting, inserting or reordering rows is detected and located.

    chain(row n) = HMAC-SHA256(audit key, chain(row n-1) || canonical(row n))

canonical(row) is compact JSON of the row id and every column, so a row moved to another id
no longer verifies. The chain of the first chained row follows 32 zero bytes. Whoever can
write the store but lacks the keys file cannot make a row that verifies. The store also keeps
the head (last id and chain value written), so rows cut from the end are noticed unless the
head is rewound too; for that case the head is logged as checks end, to compare with.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import astuple, dataclass, field
from typing import Final

from ndop_server.audit_record import AuditRecord

GENESIS: Final = bytes(32)
_LABEL: Final = b"ndop audit chain v1"


def audit_key(store_key: bytes) -> bytes:
    """The chain key, derived from the keys file's store key (never stored in the store)."""
    return hmac.new(store_key, _LABEL, hashlib.sha256).digest()


def link(key: bytes, previous: bytes, row_id: int, record: AuditRecord) -> bytes:
    canonical = json.dumps([row_id, *astuple(record)], separators=(",", ":"), ensure_ascii=True)
    return hmac.new(key, previous + canonical.encode("ascii"), hashlib.sha256).digest()


@dataclass
class ChainReport:
    rows: int = 0
    unchained: int = 0
    """Rows written before this store's audit log was chained (older ndop versions)."""
    last_id: int = 0
    head: bytes = GENESIS
    problems: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems


def verify(
    key: bytes,
    rows: Iterable[tuple[int, AuditRecord, bytes | None]],
    head: tuple[int, bytes] | None = None,
) -> ChainReport:
    """Walk the rows in id order and say where the chain breaks, and how; `head` (the last
    id and chain value the store recorded as written) exposes rows cut from the end."""
    report = ChainReport()
    listed = list(rows)
    previous_chain: bytes | None = None
    previous_id: int | None = None
    broken: list[int] = []
    after_gap: set[int] = set()
    for position, (row_id, record, chain) in enumerate(listed):
        report.rows += 1
        report.last_id = row_id
        if chain is None:
            if previous_chain is None:
                report.unchained += 1
            else:
                report.problems.append(
                    f"row {row_id} carries no chain value: it was not written by ndop"
                )
            continue
        if previous_id is not None and row_id != previous_id + 1:
            after_gap.add(position)
            report.problems.append(
                f"rows {previous_id + 1} to {row_id - 1} are missing: they were deleted"
                if row_id - previous_id > 2
                else f"row {previous_id + 1} is missing: it was deleted"
            )
        expected_previous = previous_chain if previous_chain is not None else GENESIS
        if not hmac.compare_digest(link(key, expected_previous, row_id, record), chain):
            broken.append(position)
        previous_chain, previous_id = chain, row_id
        report.head = chain
    report.problems.extend(_explain(listed, broken, after_gap))
    if head is not None:
        last_id, last_chain = head
        if last_id > report.last_id:
            report.problems.append(
                f"rows {report.last_id + 1} to {last_id} were removed from the end of the log"
                if last_id > report.last_id + 1
                else f"row {last_id} was removed from the end of the log"
            )
        elif last_id == report.last_id and not hmac.compare_digest(last_chain, report.head):
            report.problems.append(f"row {last_id} is not the last row that was written")
    return report


def _explain(
    listed: list[tuple[int, AuditRecord, bytes | None]], broken: list[int], after_gap: set[int]
) -> list[str]:
    """A broken row whose successor still follows it was altered in place, unless rows were
    deleted just before it; a run of broken rows was inserted, reordered or forged."""
    problems = []
    broken_set = set(broken)
    for position in broken:
        row_id = listed[position][0]
        if position in after_gap and position + 1 not in broken_set:
            continue
        if position + 1 in broken_set:
            problems.append(
                f"row {row_id} does not follow the row before it: rows were inserted, reordered "
                "or written without the keys file"
            )
        elif position - 1 in broken_set:
            problems.append(f"row {row_id} does not follow the row before it")
        elif position == len(listed) - 1:
            problems.append(
                f"row {row_id} does not verify: it was altered, or added without the keys file"
            )
        else:
            problems.append(f"row {row_id} was altered after it was written")
    return problems
