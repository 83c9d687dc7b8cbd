"""One row of the audit log: an event in the life of a check, a filter download or a refusal.

A check writes `started` when it opens, `answered` for every batch before the batch is
answered (with the numbers charged for it), and one closing row (`completed`, `cancelled`,
`aborted`, or the refusal's status) with its totals, so a check cut off at any moment still
shows what was answered. Rows hold counts, versions and names; never an identifier, digest,
element or token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

STARTED: Final = "started"
ANSWERED: Final = "answered"
COMPLETED: Final = "completed"
CANCELLED: Final = "cancelled"
ABORTED: Final = "aborted"
IDLE_TIMEOUT: Final = "idle-timeout"
FILTER_DOWNLOAD: Final = "filter-download"
AUTH_FAILED: Final = "auth-failed"
DUPLICATE_REQUEST: Final = "already-exists"
"""The closing row of a check refused for reusing a request id (the gRPC status's name)."""


@dataclass(frozen=True)
class AuditRecord:
    at: str
    organisation: str
    request_id: str
    mode: str
    purpose: str
    items_checked: int
    items_opted_out: int | None
    register_version: int
    outcome: str
