"""One check, from its first message to its receipt: purpose, request id, limits, audit and
signing.

The servicer creates a CheckSession per stream and tells it what happens; the session decides
whether a batch may be answered (the organisation still active, the numbers within today's
budget, charged before any work), writes an audit row for the opening, every batch and the
close in the same transaction as the charge, and signs the receipt when the check completes.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from ndop_core.proto import ndop_pb2
from ndop_core.purposes import PURPOSES
from ndop_core.receipts import FORMAT as RECEIPT_FORMAT
from ndop_server import audit_record
from ndop_server.accounts import Accounts, Mode, Organisation, now, today
from ndop_server.audit_record import AuditRecord
from ndop_server.limits import RateLimiter
from ndop_server.receipts import ReceiptSigner


class CheckRefused(Exception):
    """The check cannot go on; the message is safe for the client and the log."""


class PurposeInvalid(CheckRefused):
    pass


class VersionNotHeld(Exception):
    """The version a check names is not served here; the message is safe to send and log."""


@dataclass(frozen=True)
class Served:
    """The register version a check is answered from."""

    version: int
    count: int


def request_id_from(text: str) -> str:
    """The canonical form of a client's UUID, or a new one when it sent none."""
    if not text:
        return str(uuid.uuid4())
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        raise CheckRefused("request_id must be a UUID such as 2f1e0c9a-…") from None
    if str(parsed) != text.lower():
        raise CheckRefused("request_id must be a UUID in its usual 36-character form")
    return str(parsed)


class OpenChecks:
    """The sessions open in this server, so that shutdown can wait for them and audit any it
    has to cut off as aborted before the store is closed."""

    def __init__(self) -> None:
        self._open: set[CheckSession] = set()
        self._lock = threading.Condition()
        self.draining = False

    def add(self, session: CheckSession) -> None:
        with self._lock:
            self._open.add(session)

    def remove(self, session: CheckSession) -> None:
        with self._lock:
            self._open.discard(session)
            self._lock.notify_all()

    def wait_closed(self, timeout: float) -> list[CheckSession]:
        """Wait up to `timeout` seconds for every session to end; those still open."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._open and (left := deadline - time.monotonic()) > 0:
                self._lock.wait(left)
            return list(self._open)


class CheckSession:
    def __init__(
        self,
        accounts: Accounts,
        signer: ReceiptSigner,
        register_id: str,
        organisation: Organisation,
        mode: Mode,
        rates: RateLimiter,
        open_checks: OpenChecks,
    ) -> None:
        self._accounts = accounts
        self._signer = signer
        self._register_id = register_id
        self._rates = rates
        self._open_checks = open_checks
        self.organisation = organisation
        self.mode = mode
        self.purpose = ""
        self.request_id = ""
        self.served = Served(0, 0)
        self.items = 0
        self.opted_out = 0
        self._reserved = 0
        self._reserved_on = today()
        self._opened = False
        self._submitted = hashlib.sha256()
        self._ended = False
        self._end_lock = threading.Lock()

    def begin(self, context: ndop_pb2.CheckContext, served: Served) -> None:
        """Read the first message's context; refuse a bad purpose or request id, a check
        the day's limits cannot hold, or a revoked organisation; then audit the opening."""
        self.served = served
        # Keep whichever of the two is valid, so the audit row of a refusal names it.
        if context.purpose in PURPOSES:
            self.purpose = context.purpose
        self.request_id = request_id_from(context.request_id)
        if not self.purpose:
            raise PurposeInvalid(f"the purpose must be one of: {', '.join(PURPOSES)}")
        self._open_checks.add(self)
        reserve = int(context.expected_items)
        self._reserved_on = today()
        self._accounts.open_check(self._record(audit_record.STARTED, reserve, None), reserve)
        self._opened = True
        self._reserved = reserve

    def charge(self, items: int, payload: bytes) -> None:
        """Count a batch before any work on it, all or nothing, and audit it as answered;
        then wait for the organisation's rate."""
        if not self._opened:
            raise CheckRefused("a check must open with its context: purpose and request id")
        from_reservation = min(items, self._reserved)
        limits = self._accounts.answer_batch(
            self._record(audit_record.ANSWERED, items, None), items - from_reservation
        )
        self._reserved -= from_reservation
        self._submitted.update(payload)
        self.items += items
        self._rates.wait(self.organisation.name, limits.rate_per_second, items)

    def receipt(self) -> ndop_pb2.Receipt:
        """The signed statement of what this check did, answered from its one version."""
        issued = Timestamp()
        issued.FromDatetime(datetime.now(UTC))
        return self._signer.sign(
            ndop_pb2.ReceiptBody(
                format=RECEIPT_FORMAT,
                organisation=self.organisation.name,
                request_id=self.request_id,
                issued_at=issued,
                mode=self.mode,
                purpose=self.purpose,
                register_id=self._register_id,
                register_version=self.served.version,
                register_count=self.served.count,
                items_checked=self.items,
                submitted_sha256=self._submitted.digest(),
            )
        )

    def end(self, outcome: str) -> None:
        """Write the closing audit row, once, however the check ended."""
        with self._end_lock:
            if self._ended:
                return
            self._ended = True
        try:
            if self._opened:
                if outcome == audit_record.CANCELLED and self._open_checks.draining:
                    outcome = audit_record.ABORTED
                opted_out = self.opted_out if self.mode == "hashed" else None
                self._accounts.close_check(
                    self._record(outcome, self.items, opted_out), self._reserved, self._reserved_on
                )
            else:
                self._accounts.record(self._record(outcome, 0, None))
        finally:
            self._open_checks.remove(self)

    def _record(self, outcome: str, items: int, opted_out: int | None) -> AuditRecord:
        return AuditRecord(
            at=now(),
            organisation=self.organisation.name,
            request_id=self.request_id or "-",
            mode=self.mode,
            purpose=self.purpose or "-",
            items_checked=items,
            items_opted_out=opted_out,
            register_version=self.served.version,
            outcome=outcome,
        )
