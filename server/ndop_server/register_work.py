"""What the publisher's worker processes do: evaluate the OPRF of new entries and hash filter
keys to their slice values. Module-level functions of light imports, so that a worker starts
quickly and pickles little."""

from __future__ import annotations

import numpy as np

from ndop_core import filter as published
from ndop_core.crypto import oprf
from ndop_core.hashing import CANONICAL_SIZE
from ndop_core.packing import split
from ndop_server import filter_builder


def evaluate(
    oprf_key: bytes, canonical_blob: bytes, params: published.FilterParameters
) -> tuple[bytes, np.ndarray]:
    """The filter keys (first 32 bytes of F_k(x)) of concatenated canonical numbers, and their
    slice values for `params` (by slice)."""
    outputs = oprf.evaluate_input_batch(oprf_key, split(canonical_blob, CANONICAL_SIZE))
    keys = b"".join(output[: published.KEY_BYTES] for output in outputs)
    return keys, filter_builder.slice_values(params, keys)


def slice_values(params: published.FilterParameters, keys: bytes) -> np.ndarray:
    """The slice values (by slice) of concatenated filter keys."""
    return filter_builder.slice_values(params, keys)
