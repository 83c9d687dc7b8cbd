"""The floor benchmarks/changes.py prints beside each filter delta: ceil(log2 C(m, d) / 8)
bytes plus the delta's 96-byte header, the fewest an exact delta of d flipped bits among a
filter's m can take (docs/protocol.md, "Filter deltas, exactly")."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from benchmarks.changes import ChangeFigure, Run, delta_floor_bytes, log2_binomial, table
from ndop_core import filter_delta
from ndop_core.filter import FilterParameters

HEADER_BYTES = 96


def _bytes_to_name_one_of(count: int) -> int:
    """Whole bytes enough to give each of `count` things its own number."""
    return -(-(count - 1).bit_length() // 8)


def test_the_delta_header_is_96_bytes() -> None:
    assert filter_delta.FIXED.size == HEADER_BYTES


@pytest.mark.parametrize("m", range(17))
def test_floor_matches_a_brute_force_count_of_flip_sets(m: int) -> None:
    subsets = Counter(mask.bit_count() for mask in range(2**m))  # every flip set of m bits
    for d in range(m + 1):
        assert log2_binomial(m, d) == pytest.approx(math.log2(subsets[d]), abs=1e-9)
        assert delta_floor_bytes(m, d) == HEADER_BYTES + _bytes_to_name_one_of(subsets[d])


@pytest.mark.parametrize(
    ("m", "d"),
    [(256, 1), (2**16, 1), (2**16, 2**16 - 1), (1000, 500), (4096, 37), (100_000, 3000)],
)
def test_floor_matches_exact_binomials_on_byte_boundaries_and_beyond(m: int, d: int) -> None:
    assert delta_floor_bytes(m, d) == HEADER_BYTES + _bytes_to_name_one_of(math.comb(m, d))


def test_no_flip_set_of_nothing() -> None:
    with pytest.raises(ValueError):
        log2_binomial(10, 11)
    with pytest.raises(ValueError):
        log2_binomial(10, -1)


@pytest.mark.parametrize("flipped", [1_000, 10_000, 50_000])
def test_a_real_delta_of_random_flips_is_within_a_few_percent_above_the_floor(
    flipped: int,
) -> None:
    target = FilterParameters(0.001, 10, 500_000, 350_000, 350_000)
    rng = np.random.default_rng(flipped)
    flips = np.sort(rng.choice(target.num_bits, size=flipped, replace=False)).astype(np.uint64)
    delta = filter_delta.encode(bytes(32), target.header(), flips)
    assert len(filter_delta.decode(delta).flips) == flipped
    floor = delta_floor_bytes(target.num_bits, flipped)
    assert floor <= len(delta) <= 1.03 * floor


def test_the_table_shows_the_floor_beside_the_delta() -> None:
    figure = ChangeFigure(
        size=10_000,
        version=2,
        apply_seconds=1.5,
        stages={},
        filter_bytes=1_000_040,
        delta_bytes=20_700,
        filter_bits=8_000_000,
        flipped_bits=15_000,
        delta_floor_bytes=20_500,
        update_seconds=0.1,
        update_received=20_700,
        update_from=1,
        whole_download_seconds=0.2,
        disturbed="",
    )
    header, row = table(Run(200_000, [10_000], 2, changes=[figure])).splitlines()[1:3]
    columns = ["delta B", "delta %", "floor B", "floor %", "/floor"]
    assert [header.index(c) for c in columns] == sorted(header.index(c) for c in columns)
    assert row.split()[4:9] == ["20,700", "2.07", "20,500", "2.05", "1.01x"]
