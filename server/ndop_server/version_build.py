"""The artifacts of a new register version, derived from its base version's or built whole.

Either way the result is the same bytes: the index is the sorted 64-bit prefixes of every
member's token, the filter is the pybloom-live-v1 file of every member's filter key for the
chosen parameters (tests build both ways and compare). Deriving touches only the entries that
change, so a daily change set costs milliseconds of computing however large the register.

When base and new filter share their slices (same k and m) the version also gets a delta from
the base's filter (ndop-filter-delta-v1), which clients use instead of downloading it whole.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ndop_core import filter as published
from ndop_core import filter_delta
from ndop_server import filter_builder
from ndop_server.errors import StoreError
from ndop_server.filter_counts import BitCounts
from ndop_server.tokens import index_keys


class BaseMismatch(StoreError):
    """The base version's artifacts disagree with its entries; build the version whole."""


@dataclass(frozen=True)
class FilterArtifacts:
    filter: bytes
    counts: bytes
    delta: bytes | None


def index_whole(tokens: bytes) -> bytes:
    """The index of the members with these (concatenated) tokens."""
    return np.sort(index_keys(tokens)).astype("<u8").tobytes()


def index_changed(base_index: bytes, added_tokens: bytes, withdrawn_tokens: bytes) -> bytes:
    """The base's index with one key removed per withdrawn token and one inserted per added
    token: the same sorted array index_whole() makes of the new members."""
    base = np.frombuffer(base_index, dtype="<u8")
    withdrawn = np.sort(index_keys(withdrawn_tokens))
    if len(withdrawn):
        # Equal keys (64-bit prefixes can collide) each take the next equal slot of the base.
        rank = np.arange(len(withdrawn)) - np.searchsorted(withdrawn, withdrawn, side="left")
        where = np.searchsorted(base, withdrawn, side="left") + rank
        if (where >= len(base)).any() or (
            base[np.minimum(where, len(base) - 1)] != withdrawn
        ).any():
            raise BaseMismatch("the base version's index lacks entries being withdrawn")
        base = np.delete(base, where)
    added = np.sort(index_keys(added_tokens))
    merged = np.insert(base, np.searchsorted(base, added), added)
    return merged.astype("<u8").tobytes()


def filter_whole(
    params: published.FilterParameters, values: np.ndarray, base_filter: bytes | None
) -> FilterArtifacts:
    """The filter of keys with these slice values (every member's, by slice), its counts, and
    the delta from `base_filter` when that has the same slices."""
    counts, bits = BitCounts.from_slice_values(params, values)
    data = filter_builder.file_bytes(params, bits)
    delta = None
    if base_filter is not None and same_slices(base_filter, params):
        flips = filter_delta.flips_between(base_filter[published.HEADER.size :], bits)
        delta = _delta(base_filter, params, flips)
    return FilterArtifacts(data, counts.encode(), delta)


def filter_changed(
    params: published.FilterParameters,
    base_filter: bytes,
    base_counts: bytes,
    added: np.ndarray,
    withdrawn: np.ndarray,
) -> FilterArtifacts:
    """The base's filter with the added keys' bits counted in and the withdrawn keys' out
    (slice values, by slice); BaseMismatch if the base cannot be derived from."""
    if not same_slices(base_filter, params):
        raise BaseMismatch("the base version's filter has other slices")
    try:
        counts = BitCounts.decode(base_counts, params.num_bits)
        flips = counts.change(
            filter_builder.positions(params, added), filter_builder.positions(params, withdrawn)
        )
    except StoreError as exc:
        raise BaseMismatch(str(exc)) from None
    delta = _delta(base_filter, params, flips)
    return FilterArtifacts(filter_delta.apply(base_filter, delta), counts.encode(), delta)


def same_slices(base_filter: bytes, params: published.FilterParameters) -> bool:
    base = published.FilterParameters.from_header(base_filter)
    return (base.num_slices, base.bits_per_slice) == (params.num_slices, params.bits_per_slice)


def _delta(base_filter: bytes, params: published.FilterParameters, flips: np.ndarray) -> bytes:
    return filter_delta.encode(hashlib.sha256(base_filter).digest(), params.header(), flips)
