"""What every matching mode answers, and the checks both modes make on a server's stream."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from google.protobuf.message import DecodeError

from ndop_core.errors import IntegrityError, RequestRejected
from ndop_core.proto import ndop_pb2

HASHED_BATCH_ITEMS: Final = 32768
"""Digests per hashed-mode message (1 MiB): larger batches cut per-message overhead."""
PRIVATE_BATCH_ITEMS: Final = 2048
"""Elements per private-mode message: small enough to keep every core busy in the pipeline."""


@dataclass
class MatchOutcome:
    """Membership of each unique number checked, and which register version answered."""

    opted_out: np.ndarray
    register_version: int
    register_count: int
    summary: ndop_pb2.CheckSummary | None


def batch_bounds(total: int, batch_items: int) -> list[tuple[int, int]]:
    return [(start, min(start + batch_items, total)) for start in range(0, total, batch_items)]


def expect_batch(batch_id: int, bounds: Sequence[tuple[int, int]], count: int) -> tuple[int, int]:
    """The slice a server answer covers; refuses answers out of order or of the wrong size."""
    if batch_id >= len(bounds):
        raise RequestRejected("the server answered a batch that was never sent")
    start, end = bounds[batch_id]
    if count != end - start:
        raise RequestRejected("the server answered a batch with the wrong number of items")
    return start, end


def require_complete(
    answered: int, batches: int, summary: ndop_pb2.CheckSummary | None
) -> ndop_pb2.CheckSummary:
    """The summary of a stream in which all `batches` were answered; RequestRejected otherwise."""
    if answered != batches:
        raise RequestRejected("the server did not answer every batch")
    if summary is None:
        raise RequestRejected("the server ended the check without a summary")
    return summary


@dataclass(frozen=True)
class ExpectedReceipt:
    """What the client knows a truthful receipt for its check must say."""

    register_id: str
    register_version: int
    mode: str
    request_id: str
    items: int
    submitted_sha256: bytes


def require_truthful_receipt(summary: ndop_pb2.CheckSummary, expected: ExpectedReceipt) -> None:
    """IntegrityError unless the summary and its signed receipt name the version every answer
    came from and describe exactly what this client sent."""
    try:
        body = ndop_pb2.ReceiptBody.FromString(summary.receipt.body)
    except DecodeError:
        raise IntegrityError(
            "the server's receipt is not a receipt; the check was discarded"
        ) from None
    if summary.register_version != expected.register_version or (
        body.register_version != expected.register_version
    ):
        raise IntegrityError(
            f"the server's receipt names register version {body.register_version} but the answers "
            f"came from version {expected.register_version}; the check was discarded"
        )
    stated = (body.register_id, body.mode, body.request_id, body.items_checked)
    if stated != (expected.register_id, expected.mode, expected.request_id, expected.items) or (
        summary.items_checked != expected.items
    ):
        raise IntegrityError(
            "the server's receipt does not describe this check (register, mode, request id or "
            "count differ); the check was discarded"
        )
    if body.submitted_sha256 != expected.submitted_sha256:
        raise IntegrityError(
            "the server's receipt does not cover what this client sent; the check was discarded"
        )
