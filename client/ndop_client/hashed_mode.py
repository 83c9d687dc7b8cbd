"""Hashed mode: stream salted digests, read back packed membership from one register version.

With a pool of worker processes, the workers hash batches alongside the stream's own thread,
each batch sent as soon as it is hashed, whoever hashed it (answers name their batch, so the
order does not matter): hashing is most of a hashed check's work, and the server's share is
small enough to leave the cores to the client.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait

import numpy as np

from ndop_client.check_stream import CheckStream
from ndop_client.compatibility import require_hashed
from ndop_client.matching import HASHED_BATCH_ITEMS, MatchOutcome, batch_bounds, expect_batch
from ndop_client.progress import Progress
from ndop_client.register_info import RegisterInfo
from ndop_client.stall import StallPolicy
from ndop_core import hashing
from ndop_core.errors import RequestRejected
from ndop_core.hashing import Hasher
from ndop_core.nhs_number import canonical_bytes
from ndop_core.packing import unpack_bits
from ndop_core.proto import ndop_pb2, ndop_pb2_grpc


def match_hashed(
    stub: ndop_pb2_grpc.OptOutRegisterStub,
    info: RegisterInfo,
    values: np.ndarray,
    context: ndop_pb2.CheckContext,
    metadata: tuple[tuple[str, str], ...],
    progress: Progress,
    stall: StallPolicy,
    pool: Executor | None = None,
    workers: int = 1,
) -> MatchOutcome:
    """Check `values` in hashed mode; with `pool`, its `workers` processes hash most batches."""
    require_hashed(info)
    bounds = batch_bounds(
        len(values), min(HASHED_BATCH_ITEMS, info.max_batch_items or HASHED_BATCH_ITEMS)
    )
    stream = CheckStream("hashed", info.register_id, context, len(values), bounds, stall, progress)
    requests = stream.requests(
        ndop_pb2.HashedCheckRequest(context=context),
        _digests(info, values, bounds, pool, workers),
        _request,
    )
    opted_out = np.zeros(len(values), dtype=bool)
    version: int | None = None
    with stream.answers(stub.CheckHashed, requests, metadata) as batches:
        for batch in batches:
            if version is None:
                version = batch.register_version
            elif batch.register_version != version:
                raise RequestRejected("the server mixed register versions within one check")
            start, end = expect_batch(batch.batch_id, bounds, batch.count)
            opted_out[start:end] = unpack_bits(batch.opted_out, end - start)
            progress.advance(end - start)
    return stream.outcome(opted_out, version)


def _request(batch_id: int, digests: bytes) -> ndop_pb2.HashedCheckRequest:
    return ndop_pb2.HashedCheckRequest(batch_id=batch_id, digests=digests)


def _digests(
    info: RegisterInfo,
    values: np.ndarray,
    bounds: list[tuple[int, int]],
    pool: Executor | None,
    workers: int,
) -> Iterator[tuple[int, bytes]]:
    """(batch id, digests) of every batch, each as soon as it is ready. With a pool of
    `workers` processes, the pool hashes batches from the front and this thread from the
    back, so that a pool still starting up only means this thread does more of them."""
    hasher = Hasher(info.salt, info.hashed_scheme)

    def here(batch_id: int) -> tuple[int, bytes]:
        start, end = bounds[batch_id]
        return batch_id, hasher.digest_packed(canonical_bytes(values[start:end]))

    waiting = deque(range(len(bounds)))
    if pool is None:
        yield from map(here, waiting)
        return
    ahead: dict[Future[bytes], int] = {}
    while waiting or ahead:
        while waiting and len(ahead) < 2 * workers:
            start, end = bounds[waiting[0]]
            blob = canonical_bytes(values[start:end])
            ahead[pool.submit(hashing.digests, info.salt, info.hashed_scheme, blob)] = (
                waiting.popleft()
            )
        for future in [future for future in ahead if future.done()]:
            yield ahead.pop(future), future.result()
        if waiting:
            yield here(waiting.pop())
        elif ahead:
            oldest = next(iter(ahead))
            if oldest.cancel():
                yield here(ahead.pop(oldest))
            else:
                wait(ahead, return_when=FIRST_COMPLETED)
