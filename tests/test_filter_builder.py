"""The server's NumPy filter builder against pybloom-live, the capacity it chooses, and the
per-bit counts that let a version be derived from the one before it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from pybloom_live import BloomFilter as ReferenceBloomFilter

from ndop_core import filter as published
from ndop_core import filter_delta
from ndop_server import filter_builder, version_build
from ndop_server.filter_counts import SATURATED, BitCounts, CountsMismatch


def _raw_keys(count: int, seed: int) -> bytes:
    return np.random.default_rng(seed).bytes(count * published.KEY_BYTES)


def _reference(capacity: int, raw_keys: bytes) -> bytes:
    bloom = ReferenceBloomFilter(capacity=capacity, error_rate=published.FALSE_POSITIVE_RATE)
    for key in filter_builder.hex_keys(raw_keys):
        bloom.add(key.decode("ascii"), skip_check=True)
    buffer = io.BytesIO()
    bloom.tofile(buffer)
    return buffer.getvalue()


def _built(capacity: int, raw_keys: bytes) -> tuple[bytes, BitCounts]:
    params = filter_builder.parameters(capacity, len(raw_keys) // published.KEY_BYTES)
    counts, bits = BitCounts.from_slice_values(
        params, filter_builder.slice_values(params, raw_keys)
    )
    return filter_builder.file_bytes(params, bits), counts


@pytest.mark.parametrize(
    ("capacity", "count"),
    [
        (1, 1),
        (64, 0),
        (64, 10),
        (1064, 1000),
        (22_790, 3_000),  # the last 2-byte-chunk width
        (22_791, 3_000),  # the first 4-byte-chunk width
        (40_000, 40_000),
    ],
)
def test_numpy_builder_writes_what_pybloom_live_writes(capacity: int, count: int) -> None:
    raw = _raw_keys(count, seed=capacity + count)
    built, counts = _built(capacity, raw)
    assert built == _reference(capacity, raw)
    assert counts.bits() == built[published.HEADER.size :]


@pytest.mark.parametrize("capacity", [1, 3, 64, 100, 22_790, 22_791, 1_000_003, 3_554_687])
def test_parameters_are_pybloom_lives(capacity: int) -> None:
    reference = ReferenceBloomFilter(capacity=capacity, error_rate=published.FALSE_POSITIVE_RATE)
    params = filter_builder.parameters(capacity)
    assert (params.num_slices, params.bits_per_slice) == (
        reference.num_slices,
        reference.bits_per_slice,
    )


def test_capacity_keeps_its_band() -> None:
    first = filter_builder.capacity_for(3_500_000, None)
    assert first == 3_500_000 + 3_500_000 // 64
    # Daily changes of a few thousand either way keep it, so bit positions survive them.
    for count in (3_500_000 - 40_000, 3_490_000, 3_500_000, 3_510_000, first):
        assert filter_builder.capacity_for(count, first) == first
    # Past the band either way: a new capacity with slack again.
    assert filter_builder.capacity_for(first + 1, first) == first + 1 + (first + 1) // 64
    shrunk = 3_300_000
    assert filter_builder.capacity_for(shrunk, first) == shrunk + shrunk // 64
    # Small registers get a slack of at least 64 entries; the empty one, capacity 64.
    assert filter_builder.capacity_for(0, None) == 64
    assert filter_builder.capacity_for(1000, None) == 1064
    assert filter_builder.capacity_for(950, 1064) == 1064
    assert filter_builder.capacity_for(935, 1064) == 935 + 64


def test_counts_saturate_and_stay_exact() -> None:
    """Bits set by 15 or more keys are counted exactly beside the 4-bit counts, through an
    artifact round trip and through changes in and out of saturation."""
    params = filter_builder.parameters(64, 0)
    rng = np.random.default_rng(7)
    random_keys = rng.integers(0, params.bits_per_slice, size=(params.num_slices, 40))
    same_key = np.tile(random_keys[:, :1], (1, 20))  # 21 keys on exactly the same bits
    values = np.concatenate([same_key, random_keys], axis=1).astype(np.uint16)
    counts, _ = BitCounts.from_slice_values(params, values)
    hot = filter_builder.positions(params, values[:, :1])
    assert (counts.at(hot) >= 21).all()
    stored = BitCounts.decode(counts.encode(), params.num_bits)
    assert np.array_equal(stored.at(hot), counts.at(hot))

    # Withdraw 10 of the 21: still saturated; then 8 more: below 15, back in 4 bits.
    flips = stored.change(np.empty(0, np.uint64), filter_builder.positions(params, values[:, :10]))
    assert len(flips) == 0 and (stored.at(hot) >= 11).all()
    stored.change(np.empty(0, np.uint64), filter_builder.positions(params, values[:, 10:18]))
    remaining = values[:, 18:]
    expected, expected_bits = BitCounts.from_slice_values(params, remaining)
    assert stored.bits() == expected_bits
    every = np.arange(params.num_bits, dtype=np.uint64)
    assert np.array_equal(stored.at(every), expected.at(every))
    assert stored.encode() == expected.encode()
    assert (stored.at(hot) < SATURATED).all()


def test_withdrawing_more_than_was_counted_is_a_mismatch() -> None:
    params = filter_builder.parameters(64, 0)
    values = np.random.default_rng(8).integers(0, params.bits_per_slice, size=(30, 5))
    counts, _ = BitCounts.from_slice_values(params, values.astype(np.uint16))
    stranger = filter_builder.positions(params, (values[:, :1] + 1) % params.bits_per_slice)
    with pytest.raises(CountsMismatch):
        counts.change(np.empty(0, np.uint64), np.concatenate([stranger, stranger]))


@pytest.mark.parametrize(
    "damage",
    [lambda d: d[:-1], lambda d: d + b"\0", lambda d: b"ndopcnt2" + d[8:], lambda d: d[:10]],
)
def test_counts_of_another_filter_are_refused(damage: object) -> None:
    params = filter_builder.parameters(64, 0)
    counts, _ = BitCounts.from_slice_values(params, np.zeros((30, 1), dtype=np.uint16))
    data = counts.encode()
    assert callable(damage)
    with pytest.raises(CountsMismatch):
        BitCounts.decode(damage(data), params.num_bits)
    with pytest.raises(CountsMismatch):
        BitCounts.decode(data, params.num_bits + 1)


def test_derived_filter_and_index_equal_whole_builds() -> None:
    """Many keys in and out, at a size with 4-byte chunks: derived = whole, byte for byte."""
    capacity = 50_000
    raw = _raw_keys(48_000, seed=11)
    params = filter_builder.parameters(capacity, 48_000)
    values = filter_builder.slice_values(params, raw)
    counts, bits = BitCounts.from_slice_values(params, values)
    base = filter_builder.file_bytes(params, bits)
    added = _raw_keys(1_500, seed=12)
    size = published.KEY_BYTES
    kept = raw[2_000 * size :]
    new_params = filter_builder.parameters(capacity, 46_000 + 1_500)
    derived = version_build.filter_changed(
        new_params,
        base,
        counts.encode(),
        filter_builder.slice_values(new_params, added),
        values[:, :2_000],
    )
    whole = version_build.filter_whole(
        new_params, filter_builder.slice_values(new_params, kept + added), base
    )
    assert derived == whole
    assert derived.filter == _reference(capacity, kept + added)
    assert derived.delta is not None
    assert filter_delta.apply(base, derived.delta) == derived.filter

    tokens = _raw_keys(48_000, seed=13)[: 48_000 * 16]
    new_tokens = _raw_keys(1_500, seed=14)[: 1_500 * 16]
    index = version_build.index_whole(tokens)
    changed = version_build.index_changed(index, new_tokens, tokens[: 2_000 * 16])
    assert changed == version_build.index_whole(tokens[2_000 * 16 :] + new_tokens)
    with pytest.raises(version_build.BaseMismatch):
        version_build.index_changed(index, b"", new_tokens[:16])
