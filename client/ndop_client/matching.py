"""What every matching mode answers, and the checks both modes make on a server's stream."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from ndop_core.errors import RequestRejected
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
    answered: int, bounds: Sequence[tuple[int, int]], summary: ndop_pb2.CheckSummary | None
) -> ndop_pb2.CheckSummary:
    """The summary of a stream in which every batch was answered; RequestRejected otherwise."""
    if answered != len(bounds):
        raise RequestRejected("the server did not answer every batch")
    if summary is None:
        raise RequestRejected("the server ended the check without a summary")
    return summary
