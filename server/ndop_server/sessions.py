"""One check, from its first message to its receipt: purpose, quota, audit and signing.

The servicer creates a CheckSession per stream and tells it what happens; the session decides
whether a batch may be answered (quota), keeps the hash of everything submitted, writes the
audit record however the check ends, and signs the receipt when it completes.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from ndop_core.proto import ndop_pb2
from ndop_core.purposes import PURPOSES
from ndop_core.receipts import FORMAT as RECEIPT_FORMAT
from ndop_server.accounts import (
    Accounts,
    AuditRecord,
    Mode,
    Organisation,
    QuotaExhausted,
    next_reset,
    today,
)
from ndop_server.receipts import ReceiptSigner


class CheckRefused(Exception):
    """The check cannot go on; the message is safe for the client and the log."""


class PurposeInvalid(CheckRefused):
    pass


class VersionNotHeld(Exception):
    """The version a check names is not served here; the message is safe to send and log."""


@dataclass(frozen=True)
class Served:
    """The register version a check was answered from."""

    version: int
    count: int


class CheckSession:
    def __init__(
        self,
        accounts: Accounts,
        signer: ReceiptSigner,
        register_id: str,
        organisation: Organisation,
        mode: Mode,
    ) -> None:
        self._accounts = accounts
        self._signer = signer
        self._register_id = register_id
        self.organisation = organisation
        self.mode = mode
        self.purpose = ""
        self.request_id = ""
        self.items = 0
        self.opted_out = 0
        self._submitted = hashlib.sha256()
        self._ended = False

    def begin(self, context: ndop_pb2.CheckContext) -> None:
        """Read the first message's context; refuse a missing purpose or a check too big."""
        self.request_id = context.request_id[:64] or str(uuid.uuid4())
        if context.purpose not in PURPOSES:
            raise PurposeInvalid(f"the purpose must be one of: {', '.join(PURPOSES)}")
        self.purpose = context.purpose
        remaining = self._accounts.remaining(self.organisation, self.mode)
        if context.expected_items > remaining:
            raise QuotaExhausted(self.mode, remaining, next_reset(today()))

    def charge(self, items: int, payload: bytes) -> None:
        """Count a batch against the quota before it is answered; all or nothing."""
        self._accounts.charge(self.organisation, self.mode, items)
        self._submitted.update(payload)
        self.items += items

    def receipt(self, served: Served) -> ndop_pb2.Receipt:
        """The signed statement of what this check did, answered from `served`."""
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
                register_version=served.version,
                register_count=served.count,
                items_checked=self.items,
                submitted_sha256=self._submitted.digest(),
            )
        )

    def end(self, served: Served, outcome: str) -> None:
        """Write the audit record, once, however the check ended."""
        if self._ended:
            return
        self._ended = True
        self._accounts.record(
            AuditRecord(
                at=datetime.now(UTC).isoformat(timespec="milliseconds"),
                organisation=self.organisation.name,
                request_id=self.request_id or "-",
                mode=self.mode,
                purpose=self.purpose or "-",
                items_checked=self.items,
                items_opted_out=self.opted_out if self.mode == "hashed" else None,
                register_version=served.version,
                outcome=outcome,
            )
        )
