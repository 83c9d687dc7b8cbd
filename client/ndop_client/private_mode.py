"""Private mode: blind locally, let the server evaluate, unblind and test against the filter.

The pipeline keeps every core busy: worker processes blind batch i+1.. while the server
evaluates batch i and other workers unblind batch i-1. The result is always computed against
the one filter version downloaded at the start, whatever the server publishes meanwhile.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from ndop_client import private_workers
from ndop_client.check_stream import CheckStream
from ndop_client.compatibility import require_private
from ndop_client.filter_cache import filter_for
from ndop_client.matching import PRIVATE_BATCH_ITEMS, MatchOutcome, batch_bounds, expect_batch
from ndop_client.progress import Progress
from ndop_client.register_info import RegisterInfo
from ndop_client.stall import StallPolicy
from ndop_core.crypto import oprf
from ndop_core.errors import FilterOutdated, IntegrityError, RequestRejected
from ndop_core.nhs_number import canonical_bytes
from ndop_core.proto import ndop_pb2, ndop_pb2_grpc


@dataclass(frozen=True)
class PrivateResources:
    """What private mode works with beside the server: worker processes, the filter cache,
    and the stall deadline."""

    pool: Executor
    workers: int
    cache_dir: Path
    stall: StallPolicy


def match_private(
    stub: ndop_pb2_grpc.OptOutRegisterStub,
    info: RegisterInfo,
    values: np.ndarray,
    context: ndop_pb2.CheckContext,
    metadata: tuple[tuple[str, str], ...],
    progress: Progress,
    resources: PrivateResources,
) -> MatchOutcome:
    require_private(info)
    pool, workers = resources.pool, resources.workers
    cached = filter_for(stub, resources.cache_dir, info, metadata, resources.stall)
    context.register_version = cached.register_version
    batch_items = min(PRIVATE_BATCH_ITEMS, info.max_batch_items or PRIVATE_BATCH_ITEMS)
    bounds = batch_bounds(len(values), batch_items)
    window = 2 * workers + 2
    stream = CheckStream(
        "private", info.register_id, context, len(values), bounds, resources.stall, progress
    )
    blinds: dict[int, bytes] = {}

    def blind(batch_id: int) -> Future[tuple[bytes, bytes]]:
        start, end = bounds[batch_id]
        return pool.submit(private_workers.blind, canonical_bytes(values[start:end]))

    def blinded() -> Iterator[tuple[int, bytes]]:
        pending: deque[Future[tuple[bytes, bytes]]] = deque()
        blinding = 0
        for batch_id in range(len(bounds)):
            while blinding < len(bounds) and len(pending) < window:
                pending.append(blind(blinding))
                blinding += 1
            batch_blinds, elements = pending.popleft().result()
            blinds[batch_id] = batch_blinds
            yield batch_id, elements

    requests = stream.requests(
        ndop_pb2.EvaluateRequest(context=context), blinded(), evaluate_request
    )
    opted_out = np.zeros(len(values), dtype=bool)
    finishing: deque[tuple[int, int, Future[bytes]]] = deque()

    def collect_oldest() -> None:
        start, end, future = finishing.popleft()
        opted_out[start:end] = np.frombuffer(future.result(), dtype=np.uint8).astype(bool)
        progress.advance(end - start)

    try:
        with stream.answers(stub.Evaluate, requests, metadata) as batches:
            for batch in batches:
                if batch.register_version != cached.register_version:
                    raise IntegrityError(
                        "the server answered from another register version than the filter's; "
                        "the check was discarded"
                    )
                if batch.key_id != cached.key_id:
                    raise IntegrityError(
                        "the server's OPRF key changed during the check; run the check again"
                    )
                start, end = expect_batch(batch.batch_id, bounds, batch.count)
                if len(batch.evaluated_elements) != (end - start) * oprf.ELEMENT_SIZE:
                    raise RequestRejected("the server answered a batch of the wrong size")
                finishing.append(
                    (
                        start,
                        end,
                        pool.submit(
                            private_workers.unblind_and_test,
                            cached.path,
                            canonical_bytes(values[start:end]),
                            blinds.pop(batch.batch_id),
                            batch.evaluated_elements,
                        ),
                    )
                )
                while len(finishing) > window:
                    collect_oldest()
            while finishing:
                collect_oldest()
    except grpc.RpcError as exc:
        if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
            raise FilterOutdated(f"the server refused the check: {exc.details()}") from None
        raise
    return stream.outcome(opted_out, cached.register_version, cached.count)


def evaluate_request(batch_id: int, blinded: bytes) -> ndop_pb2.EvaluateRequest:
    return ndop_pb2.EvaluateRequest(batch_id=batch_id, blinded_elements=blinded)
