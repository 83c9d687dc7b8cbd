"""The floors a check is measured against, on the same machine in the same run.

- hashed: a bare Python loop that reads the cohort file and SHA-256s each line, run as its own
  process the way `ndop check` is (interpreter start included on both sides);
- private: the three scalar multiplications per number and the hashing around them (blind:
  hash to the group, a random scalar, a multiplication; evaluate: a multiplication; finalize:
  one inversion per batch, a multiplication, SHA-512) on every core, in worker processes
  started and warmed before the clock starts, with nothing else: no file, no network, no
  filter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Final

import numpy as np

from ndop_client.matching import PRIVATE_BATCH_ITEMS
from ndop_core.crypto import oprf
from ndop_core.hashing import CANONICAL_SIZE
from ndop_core.nhs_number import canonical_bytes
from ndop_core.packing import split
from ndop_core.worker_pool import WorkerPool

HASHED_FLOOR_LOOP: Final = (
    "import hashlib, sys\n"
    "with open(sys.argv[1], 'rb') as cohort:\n"
    "    for line in cohort:\n"
    "        hashlib.sha256(line).digest()\n"
)


def hashed_floor(cohort: Path) -> float:
    """Wall seconds of `python -c HASHED_FLOOR_LOOP COHORT`."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", HASHED_FLOOR_LOOP, str(cohort)], check=True)
    return time.perf_counter() - started


def three_multiplications(key: bytes, canonical_blob: bytes) -> int:
    """Blind, evaluate and finalize every number of a batch; how many."""
    inputs = split(canonical_blob, CANONICAL_SIZE)
    blinds, blinded = oprf.blind_batch(inputs)
    evaluated = oprf.evaluate_batch(key, blinded)
    return len(oprf.finalize_batch(inputs, blinds, evaluated))


def private_floor(values: np.ndarray, workers: int | None = None) -> float:
    """Wall seconds of `three_multiplications` over `values` on `workers` processes (every
    core by default), in private mode's batches."""
    processes = workers or os.cpu_count() or 1
    key = oprf.generate_secret_key()
    with WorkerPool(processes) as pool:
        pool.start(preload=("benchmarks.floors",))
        sample = canonical_bytes(values[:64])
        for future in [
            pool.submit(three_multiplications, key, sample) for _ in range(2 * processes)
        ]:
            future.result()
        started = time.perf_counter()
        batches: list[Future[int]] = [
            pool.submit(
                three_multiplications,
                key,
                canonical_bytes(values[start : start + PRIVATE_BATCH_ITEMS]),
            )
            for start in range(0, len(values), PRIVATE_BATCH_ITEMS)
        ]
        done = sum(batch.result() for batch in batches)
        seconds = time.perf_counter() - started
    if done != len(values):
        raise RuntimeError(f"the private floor evaluated {done:,} of {len(values):,} numbers")
    return seconds
