"""The OPRF's own cost: what a register load cannot avoid. Evaluates F_k(x) of canonical
numbers and keeps the filter keys, nothing else, in the same worker processes and batches the
publisher uses; `benchmarks.changes` compares a load's wall time with this."""

from __future__ import annotations

import time

import numpy as np

from ndop_core.crypto import oprf
from ndop_core.hashing import CANONICAL_SIZE
from ndop_core.nhs_number import canonical_bytes
from ndop_core.packing import split
from ndop_core.worker_pool import WorkerPool

BATCH = 4096
"""Numbers per task, as in ndop_server.register."""


def evaluate(oprf_key: bytes, canonical_blob: bytes) -> bytes:
    outputs = oprf.evaluate_input_batch(oprf_key, split(canonical_blob, CANONICAL_SIZE))
    return b"".join(output[:32] for output in outputs)


def seconds(oprf_key: bytes, values: np.ndarray, workers: int) -> float:
    """Wall seconds to evaluate every number on `workers` processes (their start included)."""
    blobs = [canonical_bytes(values[i : i + BATCH]) for i in range(0, len(values), BATCH)]
    started = time.perf_counter()
    with WorkerPool(workers) as pool:
        evaluated = sum(len(keys) for keys in pool.map(evaluate, [oprf_key] * len(blobs), blobs))
    elapsed = time.perf_counter() - started
    if evaluated != 32 * len(values):
        raise RuntimeError("the OPRF reference lost numbers")
    return elapsed
