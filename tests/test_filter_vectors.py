"""The published filter, "pybloom-live-v1", against its test vectors and the real server code.

The vectors in tests/vectors/filter/ were made with pybloom-live by
scripts/make_filter_vectors.py: the client's reader (ndop_core.filter) must reproduce every
key's bit positions and membership, the server's builder must rebuild every filter byte for
byte, and a register published by the server must give a filter the reader parses correctly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pybloom_live import BloomFilter as ReferenceBloomFilter
from pybloom_live.pybloom import make_hashfuncs

from ndop_core import filter as published
from ndop_core.crypto import oprf
from ndop_core.errors import IntegrityError, NdopError, UnsupportedServer
from ndop_core.hashing import CANONICAL_SIZE
from ndop_core.nhs_number import canonical_bytes
from ndop_core.packing import split
from ndop_server import filter_builder
from ndop_server.register import FILTER_ARTIFACT, _bloom_shard
from ndop_server.store import Store
from ndop_server.synthetic import valid_numbers
from tests.conftest import make_register
from tests.vector_files import load_json, vector_path

Vector = dict[str, Any]

INDEX: list[dict[str, str]] = load_json("filter/index.json")
ALL = [entry["file"] for entry in INDEX]
FILTERS = [entry["file"] for entry in INDEX if entry["kind"] == "filter"]
EXAMPLE = "example-capacity-3.json"
PROTOCOL_DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"


def _vector(file_name: str) -> Vector:
    vector: Vector = load_json(f"filter/{file_name}")
    return vector


def _filter_data(vector: Vector) -> bytes:
    return vector_path(f"filter/{vector['filter_file']}").read_bytes()


def _params(vector: Vector) -> published.FilterParameters:
    return published.FilterParameters(
        vector["error_rate"],
        vector["num_slices"],
        vector["bits_per_slice"],
        vector["capacity"] or 0,
        vector["count"],
    )


def _keys(entries: list[Vector]) -> list[bytes]:
    return [entry["key"].encode("ascii") for entry in entries]


def _positions(entries: list[Vector]) -> np.ndarray:
    return np.array([entry["positions"] for entry in entries], dtype=np.uint64)


def _entries(vector: Vector) -> list[Vector]:
    entries: list[Vector] = vector["keys_in"] + vector["keys_out"]
    return entries


# --- what the vectors cover ---------------------------------------------------------------


def test_vectors_cover_every_boundary_and_hash_row() -> None:
    vectors = [_vector(name) for name in ALL]
    filters = {v["bits_per_slice"] for v in vectors if v["kind"] == "filter"}
    assert {32767, 32768} <= filters
    assert {2**31 - 1, 2**31} <= {v["bits_per_slice"] for v in vectors}
    rows = {(v["hash"], v["chunk_bytes"]) for v in vectors}
    assert rows >= {("sha512", 2), ("sha512", 4), ("sha512", 8)}
    assert rows >= {("sha384", 2), ("sha384", 4), ("sha384", 8)}
    assert rows >= {("sha256", 2), ("sha256", 4), ("sha256", 8), ("sha1", 2), ("sha1", 4)}
    assert all(v["keys_in"] and v["keys_out"] for v in vectors)


# --- (a) the client's reader reproduces the reference -------------------------------------


@pytest.mark.parametrize("name", FILTERS)
def test_filter_file_is_what_its_vector_says(name: str) -> None:
    vector = _vector(name)
    data = _filter_data(vector)
    assert len(data) == vector["filter_size"]
    assert hashlib.sha256(data).hexdigest() == vector["filter_sha256"]
    params = published.FilterParameters.from_header(data)
    assert params == _params(vector)
    assert params.size == len(data)
    assert params.header() == data[: published.HEADER.size]


@pytest.mark.parametrize("name", FILTERS)
def test_reader_finds_keys_in_and_not_keys_out(name: str) -> None:
    vector = _vector(name)
    bloom = published.BloomFilter(_filter_data(vector))
    for entries in (vector["keys_in"], vector["keys_out"]):
        assert np.array_equal(bloom.positions(_keys(entries)), _positions(entries))
    assert bloom.contains(_keys(vector["keys_in"])).all()
    assert not bloom.contains(_keys(vector["keys_out"])).any()


@pytest.mark.parametrize("name", ALL)
def test_positions_from_parameters_alone(name: str) -> None:
    vector = _vector(name)
    params = _params(vector)
    hasher = published.KeyHasher(params)
    assert hasher.hash_name == vector["hash"]
    assert hasher.chunk == vector["chunk_bytes"]
    assert published.hash_name(params.num_slices, params.bits_per_slice) == vector["hash"]
    assert published.chunk_bytes(params.bits_per_slice) == vector["chunk_bytes"]
    entries = _entries(vector)
    assert np.array_equal(hasher.positions(_keys(entries)), _positions(entries))


@pytest.mark.parametrize("name", ALL)
def test_salts_and_digests_are_the_ones_specified(name: str) -> None:
    vector = _vector(name)
    new = getattr(hashlib, vector["hash"])
    salts = [new(struct.pack("<I", i)).digest() for i in range(len(vector["salts"]))]
    assert [salt.hex() for salt in salts] == vector["salts"]
    chunk, bps = vector["chunk_bytes"], vector["bits_per_slice"]
    for entry in _entries(vector):
        digests = b"".join(new(salt + entry["key"].encode("ascii")).digest() for salt in salts)
        assert digests.hex() == "".join(entry["digests"])
        values = [
            int.from_bytes(digests[j * chunk : (j + 1) * chunk], "little") % bps
            for j in range(vector["num_slices"])
        ]
        assert values == entry["slice_values"]


# --- (b) the server's builder rebuilds the reference filters ------------------------------


def _empty_like(vector: Vector) -> Any:
    if vector["error_rate"] == published.FALSE_POSITIVE_RATE:
        return filter_builder.empty(vector["capacity"])
    return ReferenceBloomFilter(capacity=vector["capacity"], error_rate=vector["error_rate"])


@pytest.mark.parametrize("name", FILTERS)
def test_server_builder_rebuilds_the_filter(name: str) -> None:
    vector = _vector(name)
    bloom = _empty_like(vector)
    filter_builder.add_all(bloom, (entry["key"] for entry in vector["keys_in"]))
    assert filter_builder.serialize(bloom) == _filter_data(vector)


@pytest.mark.parametrize(
    "name", [n for n in FILTERS if _vector(n)["error_rate"] == published.FALSE_POSITIVE_RATE]
)
def test_sharded_build_rebuilds_the_filter(name: str) -> None:
    vector = _vector(name)
    raw_keys = b"".join(bytes.fromhex(entry["key"]) for entry in vector["keys_in"])
    combined = filter_builder.empty(vector["capacity"])
    shard_size = 7 * published.KEY_BYTES
    for start in range(0, len(raw_keys), shard_size):
        bits, count = _bloom_shard(vector["capacity"], raw_keys[start : start + shard_size])
        filter_builder.merge(combined, bits, count)
    assert filter_builder.serialize(combined) == _filter_data(vector)


# --- (c) number -> OPRF output -> key ------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_number_to_oprf_output_to_key(name: str) -> None:
    vector = _vector(name)
    setup = vector["oprf"]
    secret_key, public_key = oprf.derive_key_pair(
        bytes.fromhex(setup["seed"]), bytes.fromhex(setup["info"])
    )
    assert (secret_key.hex(), public_key.hex()) == (setup["secret_key"], setup["public_key"])
    for entry in _entries(vector):
        number = entry["nhs_number"].encode("ascii")
        output = oprf.evaluate_input(secret_key, number)
        assert output.hex() == entry["oprf_output"]
        assert published.filter_key(output) == entry["key"].encode("ascii")


@pytest.mark.parametrize("name", ALL)
def test_numbers_are_the_synthetic_ones_of_the_999_range(name: str) -> None:
    vector = _vector(name)
    drawn = vector["numbers"]
    assert drawn["range"] == "999"
    numbers = [f"{int(v):010d}" for v in valid_numbers(drawn["count"], "999", drawn["seed"])]
    keys_in = [entry["nhs_number"] for entry in vector["keys_in"]]
    keys_out = [entry["nhs_number"] for entry in vector["keys_out"]]
    assert keys_in == numbers[: len(keys_in)]
    later = numbers[len(keys_in) :]
    assert keys_out == [n for n in later if n in set(keys_out)]
    assert all(n.startswith("999") for n in keys_in + keys_out)


def test_client_path_gives_the_same_output() -> None:
    """Blind, evaluate, finalize (what a client does) ends at the vector's OPRF output."""
    vector = _vector(EXAMPLE)
    secret_key = bytes.fromhex(vector["oprf"]["secret_key"])
    for entry in _entries(vector):
        number = entry["nhs_number"].encode("ascii")
        blind, blinded = oprf.blind(number)
        output = oprf.finalize(number, blind, oprf.evaluate(secret_key, blinded))
        assert output.hex() == entry["oprf_output"]


# --- (d) a register published by the server -------------------------------------------------


def test_published_register_filter_holds_exactly_its_numbers(tmp_path: Path) -> None:
    register = make_register(tmp_path, total=500, opted_out=300, seed=23)
    with Store(register.store_path) as store:
        record = store.latest()
        assert record is not None
        data = store.artifact(record.version, FILTER_ARTIFACT)
    assert hashlib.sha256(data).digest() == record.filter_sha256
    assert len(data) == record.filter_size
    assert record.key_id == register.keys.oprf_key_id
    bloom = published.BloomFilter(data)
    assert bloom.params.error_rate == published.FALSE_POSITIVE_RATE
    assert bloom.params.num_slices == 30
    assert bloom.params.count == bloom.params.capacity == 300

    def keys(values: np.ndarray) -> list[bytes]:
        blob = canonical_bytes(values)
        outputs = oprf.evaluate_input_batch(register.keys.oprf_key, split(blob, CANONICAL_SIZE))
        return [published.filter_key(output) for output in outputs]

    assert bloom.contains(keys(register.opted_out)).all()
    assert not bloom.contains(keys(register.not_opted_out)).any()


# --- (e) filters this client must refuse ----------------------------------------------------


def _example_data() -> bytes:
    return _filter_data(_vector(EXAMPLE))


def _with_header(data: bytes, **fields: int) -> bytes:
    params = dataclasses.replace(published.FilterParameters.from_header(data), **fields)
    return params.header() + data[published.HEADER.size :]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda d: d[:-1], id="one-byte-short"),
        pytest.param(lambda d: d + b"\0", id="one-byte-long"),
        pytest.param(lambda d: d[:39], id="header-cut"),
        pytest.param(lambda d: b"", id="empty"),
        pytest.param(lambda d: _with_header(d, bits_per_slice=6), id="header-bigger"),
        pytest.param(lambda d: _with_header(d, num_slices=20), id="header-smaller"),
        pytest.param(lambda d: _with_header(d, num_slices=2**64 - 1), id="header-huge"),
        pytest.param(lambda d: _with_header(d, num_slices=0)[:40], id="no-slices"),
        pytest.param(lambda d: _with_header(d, bits_per_slice=0)[:40], id="no-bits"),
    ],
)
def test_filter_disagreeing_with_its_header_is_refused(damage: Callable[[bytes], bytes]) -> None:
    with pytest.raises(IntegrityError):
        published.BloomFilter(damage(_example_data()))


XXH3_PARAMETERS = [(8, 100), (1, 5), (4, 2**15), (2, 2**31)]


@pytest.mark.parametrize(("num_slices", "bits_per_slice"), XXH3_PARAMETERS)
def test_xxh3_parameters_are_refused(num_slices: int, bits_per_slice: int) -> None:
    _, reference_hash = make_hashfuncs(num_slices, bits_per_slice)
    assert reference_hash().name == "XXH3_128"
    params = published.FilterParameters(2**-num_slices, num_slices, bits_per_slice, 1, 0)
    assert published.hash_name(num_slices, bits_per_slice) is None
    with pytest.raises(UnsupportedServer):
        published.KeyHasher(params)
    if params.size < 1 << 20:
        with pytest.raises(UnsupportedServer):
            published.BloomFilter(params.header() + bytes(params.size - published.HEADER.size))


@pytest.mark.parametrize("seed", range(32))
def test_random_bytes_raise_only_ndop_errors(seed: int) -> None:
    data = np.random.default_rng(seed).bytes(seed * 3)
    try:
        published.BloomFilter(data)
    except NdopError:
        return
    pytest.fail("random bytes were accepted as a filter")


# --- the specification shows the example vector ------------------------------------------


def test_protocol_doc_worked_example_is_the_vector() -> None:
    vector = _vector(EXAMPLE)
    entry = vector["keys_in"][0]
    text = PROTOCOL_DOC.read_text(encoding="utf-8")
    for value in (
        entry["nhs_number"],
        entry["oprf_output"],
        entry["key"],
        vector["salts"][0],
        entry["digests"][0],
        vector["filter_sha256"],
        _example_data()[40:].hex(" ")[:40],
    ):
        assert value in text
