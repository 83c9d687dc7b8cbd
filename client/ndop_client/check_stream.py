"""The one stream of a check, as hashed mode, private mode and a Spark check run it.

Each mode says what it sends (digests or blinded elements) and what an answer means; this
keeps the rest: the running SHA-256 of what was sent, an exception raised while making the
requests, the stall watch, the summary set aside from the batches, cancelling the call on any
error, and at the end the checks that every batch was answered and that the receipt is true.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import InitVar, dataclass, field
from typing import Any, TypeVar

import numpy as np

from ndop_client.matching import (
    ExpectedReceipt,
    MatchOutcome,
    require_complete,
    require_truthful_receipt,
)
from ndop_client.progress import Progress
from ndop_client.stall import StallPolicy, StallWatch
from ndop_core.errors import RequestRejected
from ndop_core.proto import ndop_pb2

Request = TypeVar("Request")


@dataclass
class CheckStream:
    """One check of `items` numbers in `bounds` batches (None: as many as are sent, for a
    caller that learns its batches as it goes), in `mode`, under `context`."""

    mode: str
    register_id: str
    context: ndop_pb2.CheckContext
    items: int
    bounds: Sequence[tuple[int, int]] | None
    stall: InitVar[StallPolicy]
    progress: Progress
    _watch: StallWatch = field(init=False)
    _submitted: hashlib._Hash = field(init=False, default_factory=hashlib.sha256)
    _request_error: list[BaseException] = field(init=False, default_factory=list)
    _batches_sent: int = field(init=False, default=0)
    _answered: int = field(init=False, default=0)
    _summary: ndop_pb2.CheckSummary | None = field(init=False, default=None)

    def __post_init__(self, stall: StallPolicy) -> None:
        self._watch = stall.watch("the check")

    def requests(
        self,
        opening: Request,
        batches: Iterable[tuple[int, bytes]],
        request: Callable[[int, bytes], Request],
    ) -> Iterator[Request]:
        """`opening`, then `request(batch id, payload)` for each of `batches`, each payload
        counted into what the receipt must cover and owed an answer."""
        # gRPC reports an exception raised here only as "Exception iterating requests";
        # keep it so the caller sees what really went wrong.
        try:
            yield opening
            for batch_id, payload in batches:
                self._submitted.update(payload)
                self._batches_sent += 1
                self._watch.expect()
                yield request(batch_id, payload)
            self._watch.expect()  # the summary
        except Exception as exc:
            self._request_error.append(exc)
            raise

    @contextmanager
    def answers(
        self,
        rpc: Callable[..., Any],
        requests: Iterator[Any],
        metadata: tuple[tuple[str, str], ...],
    ) -> Iterator[Iterator[Any]]:
        """Calls `rpc` with `requests` and gives the batches it answers (the summary is kept
        for `outcome`); on any error the call is cancelled, and an exception raised while
        making the requests is raised in place of gRPC's own."""
        self.progress.start(self.items, "checking")
        call = rpc(requests, metadata=metadata)
        try:
            with self._watch.guarding(call):
                yield self._batches(call)
        except BaseException:
            call.cancel()
            if self._request_error:
                raise self._request_error[0] from None
            raise
        finally:
            self.progress.finish()

    def _batches(self, call: Iterable[Any]) -> Iterator[Any]:
        for response in call:
            self._watch.received()
            if response.HasField("summary"):
                self._summary = response.summary
                continue
            yield response.batch
            self._answered += 1

    def outcome(
        self,
        opted_out: np.ndarray,
        answered_from: int | None,
        register_count: int | None = None,
    ) -> MatchOutcome:
        """`opted_out` as answered by register version `answered_from` (None: no batch said,
        so the summary's) of `register_count` numbers (None: as the summary says), once every
        batch was answered and the receipt describes this check truthfully."""
        summary = self.summary(answered_from)
        return MatchOutcome(
            opted_out=opted_out,
            register_version=summary.register_version,  # the receipt check held it to answered_from
            register_count=summary.register_count if register_count is None else register_count,
            summary=summary,
        )

    def summary(
        self, answered_from: int | None, incomplete: str | None = None
    ) -> ndop_pb2.CheckSummary:
        """The summary, once every batch was answered (RequestRejected saying `incomplete`
        if not, or require_complete's words) and the receipt describes this check truthfully
        as answered by register version `answered_from` (None: the summary's)."""
        batches = self._batches_sent if self.bounds is None else len(self.bounds)
        if incomplete is not None and (self._answered != batches or self._summary is None):
            raise RequestRejected(incomplete)
        summary = require_complete(self._answered, batches, self._summary)
        require_truthful_receipt(
            summary,
            ExpectedReceipt(
                register_id=self.register_id,
                register_version=(
                    summary.register_version if answered_from is None else answered_from
                ),
                mode=self.mode,
                request_id=self.context.request_id,
                items=self.items,
                submitted_sha256=self._submitted.digest(),
            ),
        )
        return summary
