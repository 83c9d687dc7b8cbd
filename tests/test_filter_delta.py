"""Filter deltas, "ndop-filter-delta-v1", against their test vectors.

tests/vectors/filter-delta/ was made by scripts/make_filter_delta_vectors.py: both filters by
pybloom-live, the delta by a plain-Python encoder written from docs/protocol.md. ndop's codec
(ndop_core.filter_delta) must encode every vector byte for byte and apply it exactly, and so
must the reader written from the document alone (tests/filter_delta_from_spec.py); every
malformed delta must be refused with an ndop error.
"""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ndop_core import filter as published
from ndop_core import filter_delta
from ndop_core.errors import IntegrityError
from tests import filter_delta_from_spec as spec
from tests.vector_files import load_json, vector_path

NAMES: list[str] = load_json("filter-delta/index.json")
ROOT = Path(__file__).resolve().parents[1]


def _vector(name: str) -> dict[str, Any]:
    found: dict[str, Any] = load_json(f"filter-delta/{name}")
    return found


def _files(vector: dict[str, Any]) -> tuple[bytes, bytes, bytes]:
    def read(name: str) -> bytes:
        return vector_path(f"filter-delta/{name}").read_bytes()

    return read(vector["base"]["file"]), read(vector["target"]["file"]), read(vector["delta_file"])


def test_vectors_cover_what_a_delta_meets() -> None:
    vectors = [_vector(name) for name in NAMES]
    assert {v["low_bits"] for v in vectors} >= {0, 3, 4, 10}
    assert any(not v["flips"] for v in vectors), "a delta with nothing flipped"
    assert any(v["base"]["count"] != v["target"]["count"] for v in vectors), "the count changes"
    assert any(v["delta_size"] >= v["target"]["size"] for v in vectors), "larger than its filter"
    assert {v["num_slices"] for v in vectors} == {20, 30}
    assert {published.chunk_bytes(v["bits_per_slice"]) for v in vectors} == {2, 4}


@pytest.mark.parametrize("name", NAMES)
def test_files_are_what_the_vector_says(name: str) -> None:
    vector = _vector(name)
    base, target, delta = _files(vector)
    for data, fields in ((base, vector["base"]), (target, vector["target"])):
        assert (len(data), hashlib.sha256(data).hexdigest()) == (fields["size"], fields["sha256"])
        assert published.FilterParameters.from_header(data).count == fields["count"]
    assert (len(delta), hashlib.sha256(delta).hexdigest()) == (
        vector["delta_size"],
        vector["delta_sha256"],
    )


@pytest.mark.parametrize("name", NAMES)
def test_ndop_encodes_every_vector_byte_for_byte(name: str) -> None:
    vector = _vector(name)
    base, target, delta = _files(vector)
    flips = filter_delta.flips_between(base[40:], target[40:])
    assert flips.tolist() == vector["flips"]
    assert filter_delta.encode(hashlib.sha256(base).digest(), target[:40], flips) == delta


@pytest.mark.parametrize("name", NAMES)
def test_ndop_decodes_and_applies_every_vector(name: str) -> None:
    vector = _vector(name)
    base, target, delta = _files(vector)
    decoded = filter_delta.decode(delta)
    assert decoded.flips.tolist() == vector["flips"]
    assert decoded.base_sha256 == hashlib.sha256(base).digest()
    assert decoded.target_header == target[:40]
    assert struct.unpack_from("<QQ", delta, 80) == (vector["low_bits"], vector["high_bytes"])
    assert filter_delta.apply(base, delta) == target


@pytest.mark.parametrize("name", NAMES)
def test_the_reader_written_from_the_document_agrees(name: str) -> None:
    vector = _vector(name)
    base, target, delta = _files(vector)
    num_bits = vector["num_slices"] * vector["bits_per_slice"]
    read = spec.read(delta, num_bits)
    assert (read.flips, read.low_bits, read.high_bytes) == (
        vector["flips"],
        vector["low_bits"],
        vector["high_bytes"],
    )
    assert spec.apply(base, delta) == target


def test_composed_deltas_are_the_delta_of_the_ends() -> None:
    """Two vectors of one base chained through a middle filter: the composition of base->middle
    and middle->target is base->target."""
    vector = _vector("demo-capacity-100.json")
    base, target, _ = _files(vector)
    middle_bits = bytearray(base[40:])
    middle_bits[7] ^= 0b1010_0001  # any filter of the same layout will do as a middle
    middle = base[:40] + bytes(middle_bits)
    first = filter_delta.flips_between(base[40:], middle[40:])
    second = filter_delta.flips_between(middle[40:], target[40:])
    composed = filter_delta.compose([first, second])
    assert composed.tolist() == vector["flips"]
    made = filter_delta.encode(hashlib.sha256(base).digest(), target[:40], composed)
    assert filter_delta.apply(base, made) == target


def test_protocol_doc_worked_example_is_the_vector() -> None:
    printed = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_filter_delta_vectors.py"), "--example"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.strip()
    assert printed and printed in (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")


# --- refusals -------------------------------------------------------------------------------


def _example() -> tuple[bytes, bytes, bytes]:
    return _files(_vector("demo-capacity-100.json"))


def _fixed(delta: bytes, **fields: int) -> bytes:
    sha, header, n, r, h = filter_delta.FIXED.unpack_from(delta)
    values = {"n": n, "r": r, "h": h, **fields}
    return (
        filter_delta.FIXED.pack(sha, header, values["n"], values["r"], values["h"])
        + delta[filter_delta.FIXED.size :]
    )


def _other_header(delta: bytes, **fields: Any) -> bytes:
    params = published.FilterParameters.from_header(delta[32:72])
    changed = published.FilterParameters(**{**params.__dict__, **fields})
    return delta[:32] + changed.header() + delta[72:]


REFUSED: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda d: d[:-1],
    "one byte long": lambda d: d + b"\0",
    "header cut": lambda d: d[:95],
    "one flip too many": lambda d: _fixed(d, n=int.from_bytes(d[72:80], "little") + 1),
    "one flip too few": lambda d: _fixed(d, n=int.from_bytes(d[72:80], "little") - 1),
    "low bits beyond 63": lambda d: _fixed(d, r=64),
    "another low width": lambda d: _fixed(d, r=int.from_bytes(d[80:88], "little") + 1),
    "padding in the low section": lambda d: d[:-1] + bytes([d[-1] | 0x80]),
    "another base": lambda d: bytes([d[0] ^ 1]) + d[1:],
    "another slice width": lambda d: _other_header(d, bits_per_slice=145),
    "no probability": lambda d: _other_header(d, error_rate=1.5),
    "empty with sections": lambda d: d[:72] + bytes(8) + d[80:96],
}


@pytest.mark.parametrize("damage", sorted(REFUSED))
def test_malformed_deltas_are_refused(damage: str) -> None:
    base, target, delta = _example()
    with pytest.raises(IntegrityError):
        filter_delta.apply(base, REFUSED[damage](delta))
    assert filter_delta.apply(base, delta) == target


def test_a_flip_beyond_the_filter_is_refused() -> None:
    base, _, _ = _example()
    num_bits = published.FilterParameters.from_header(base).num_bits
    sha = hashlib.sha256(base).digest()
    for positions in ([num_bits], [0, num_bits], [num_bits - 1, num_bits + 5]):
        beyond = filter_delta.encode(sha, base[:40], np.array(positions, dtype=np.uint64))
        with pytest.raises(filter_delta.DeltaRefused, match="beyond"):
            filter_delta.apply(base, beyond)
        with pytest.raises(spec.Refused):
            spec.apply(base, beyond)
    last = filter_delta.encode(sha, base[:40], np.array([num_bits - 1], dtype=np.uint64))
    assert filter_delta.apply(base, last)[-1] == base[-1] ^ 0x80


def test_huge_quotients_cannot_wrap() -> None:
    """A high section claiming 2**64 / 2**r gaps is refused before any shift can wrap."""
    base, _, delta = _example()
    sha, header = delta[:32], delta[32:72]
    high = bytes(1 << 13) + b"\x01"  # one code: 65,536 zero bits, then the one
    crafted = filter_delta.FIXED.pack(sha, header, 1, 63, len(high)) + high + bytes(8)
    with pytest.raises(filter_delta.DeltaRefused):
        filter_delta.apply(base, crafted)


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_raise_only_ndop_errors(seed: int) -> None:
    base, _, delta = _example()
    rng = np.random.default_rng(seed)
    for _ in range(200):
        mutated = bytearray(delta)
        for index in rng.integers(0, len(mutated), size=int(rng.integers(1, 4))):
            mutated[int(index)] = int(rng.integers(0, 256))
        try:
            filter_delta.apply(base, bytes(mutated))
        except IntegrityError:
            continue


def test_vector_json_lists_every_file() -> None:
    listed = {name for name in NAMES}
    on_disk = {path.name for path in (ROOT / "tests" / "vectors" / "filter-delta").glob("*.json")}
    assert on_disk - {"index.json"} == listed
    assert json.loads((ROOT / "tests" / "vectors" / "filter-delta" / "index.json").read_text())
