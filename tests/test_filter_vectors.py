"""The published filter, "pybloom-live-v1", against its test vectors and the real server code.

The vectors in tests/vectors/filter/ were made with pybloom-live by
scripts/make_filter_vectors.py: the client's reader (ndop_core.filter) must reproduce every
key's bit positions and membership, the server's builder must rebuild every filter byte for
byte, and a register published by the server must give a filter the reader parses correctly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pybloom_live import BloomFilter as ReferenceBloomFilter
from pybloom_live.pybloom import make_hashfuncs

from ndop_client import Client
from ndop_client.filter_cache import _require_usable
from ndop_core import filter as published
from ndop_core import filter_delta
from ndop_core.crypto import oprf
from ndop_core.errors import IntegrityError, NdopError, UnsupportedServer
from ndop_core.hashing import CANONICAL_SIZE
from ndop_core.nhs_number import canonical_bytes
from ndop_core.packing import split
from ndop_core.proto import ndop_pb2
from ndop_server import filter_builder, version_build
from ndop_server.filter_counts import BitCounts
from ndop_server.register import FILTER_ARTIFACT
from ndop_server.store import Store
from ndop_server.synthetic import valid_numbers
from tests.conftest import Register, make_register
from tests.relay import Hooks, relay
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


def _raw_keys(entries: list[Vector]) -> bytes:
    return b"".join(bytes.fromhex(entry["key"]) for entry in entries)


def _serialize(reference: ReferenceBloomFilter) -> bytes:
    buffer = io.BytesIO()
    reference.tofile(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("name", FILTERS)
def test_server_builder_rebuilds_the_filter(name: str) -> None:
    """The NumPy builder, from the vector's parameters, writes pybloom-live's file exactly."""
    vector = _vector(name)
    params = _params(vector)
    if vector["error_rate"] == published.FALSE_POSITIVE_RATE:
        assert filter_builder.parameters(vector["capacity"], vector["count"]) == params
    values = filter_builder.slice_values(params, _raw_keys(vector["keys_in"]))
    _, bits = BitCounts.from_slice_values(params, values)
    assert filter_builder.file_bytes(params, bits) == _filter_data(vector)


@pytest.mark.parametrize("name", FILTERS)
def test_derived_filter_rebuilds_the_filter(name: str) -> None:
    """A filter derived from another (keys counted in and out) is the vector's file exactly,
    and so is a build in shards, as the publisher's workers make it."""
    vector = _vector(name)
    params = _params(vector)
    keys_in, keys_out = vector["keys_in"], vector["keys_out"]
    # The base holds all but the last three keys, and two keys that will be withdrawn.
    base_keys = _raw_keys(keys_in[:-3] + keys_out[:2])
    base_params = dataclasses.replace(params, count=len(keys_in) - 1)
    counts, bits = BitCounts.from_slice_values(
        base_params, filter_builder.slice_values(base_params, base_keys)
    )
    base = filter_builder.file_bytes(base_params, bits)
    derived = version_build.filter_changed(
        params,
        base,
        counts.encode(),
        filter_builder.slice_values(params, _raw_keys(keys_in[-3:])),
        filter_builder.slice_values(params, _raw_keys(keys_out[:2])),
    )
    assert derived.filter == _filter_data(vector)
    assert derived.delta is not None
    assert filter_delta.apply(base, derived.delta) == derived.filter
    raw = _raw_keys(keys_in)
    shard = 7 * published.KEY_BYTES
    shards = [
        filter_builder.slice_values(params, raw[i : i + shard]) for i in range(0, len(raw), shard)
    ]
    whole = version_build.filter_whole(params, np.concatenate(shards, axis=1), base)
    assert whole == derived


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
    assert bloom.params.count == 300
    assert bloom.params.capacity == filter_builder.capacity_for(300, None) == 300 + 64

    def keys(values: np.ndarray) -> list[bytes]:
        blob = canonical_bytes(values)
        outputs = oprf.evaluate_input_batch(register.keys.oprf_key, split(blob, CANONICAL_SIZE))
        return [published.filter_key(output) for output in outputs]

    assert bloom.contains(keys(register.opted_out)).all()
    assert not bloom.contains(keys(register.not_opted_out)).any()


# --- (e) filters this client must refuse ----------------------------------------------------


def _example_data() -> bytes:
    return _filter_data(_vector(EXAMPLE))


def _with_header(data: bytes, **fields: Any) -> bytes:
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


def test_k_times_m_wrapping_uint64_is_refused() -> None:
    """k = 2^61 + 30, m = 8: k*m = 2^64 + 240, which a reader with wrapping 64-bit integers
    would take for the 240 bits of a 70-byte file (and t = 8*k*c for 480, SHA-512)."""
    k, m = 2**61 + 30, 8
    assert (k * m) % 2**64 == 240
    data = _with_header(_example_data(), num_slices=k, bits_per_slice=m)[:40] + bytes(30)
    assert len(data) == 40 + ((k * m) % 2**64) // 8
    with pytest.raises(IntegrityError):
        published.BloomFilter(data)
    assert k > 8 * (len(data) - 40) // m  # the comparison docs/protocol.md asks for refuses it


def _zero_filter(num_slices: int, bits_per_slice: int) -> bytes:
    """A filter of k slices of m bits with no bit set."""
    params = published.FilterParameters(1e-9, num_slices, bits_per_slice, 1, 0)
    return params.header() + bytes(params.size - published.HEADER.size)


def test_slice_count_is_bounded_by_what_pybloom_live_can_make() -> None:
    # 1/p is a finite binary64 below 2^1024, so k = ceil(log2(1/p)) <= 1024.
    assert math.ceil(math.log(1.0 / 5.56268464626801e-309, 2)) == published.MAX_SLICES
    bloom = published.BloomFilter(_zero_filter(published.MAX_SLICES, 1))
    assert not bloom.contains([b"0" * 64]).any()
    with pytest.raises(IntegrityError, match="slices"):
        published.BloomFilter(_zero_filter(published.MAX_SLICES + 1, 1))
    with pytest.raises(IntegrityError, match="slices"):
        published.KeyHasher(published.FilterParameters(1e-9, 2**32, 1, 1, 0))


def test_positions_beyond_64_bits_are_refused() -> None:
    published.KeyHasher(published.FilterParameters(1e-9, 16, 2**60, 1, 0))  # k*m = 2^64
    with pytest.raises(IntegrityError, match="64-bit"):
        published.KeyHasher(published.FilterParameters(1e-9, 17, 2**60, 1, 0))


@pytest.mark.parametrize("error_rate", [0.0, 1.0, -1e-9, 1.5, math.inf, -math.inf, math.nan])
def test_error_rate_that_is_no_probability_is_refused(error_rate: float) -> None:
    with pytest.raises(IntegrityError, match="error rate"):
        published.BloomFilter(_with_header(_example_data(), error_rate=error_rate))


def test_padding_bits_must_be_zero() -> None:
    data = _example_data()
    params = published.FilterParameters.from_header(data)
    assert params.num_bits == 150  # array bits 150 and 151 are bits 6 and 7 of the last byte
    assert published.BloomFilter(data[:-1] + bytes([data[-1] | 0x20])).params == params
    for padding_bit in (0x40, 0x80):
        with pytest.raises(IntegrityError, match="padding"):
            published.BloomFilter(data[:-1] + bytes([data[-1] | padding_bit]))
    # Without padding (k*m a multiple of 8) every bit of the last byte is the array's.
    demo = _filter_data(_vector("demo-capacity-100.json"))
    assert published.FilterParameters.from_header(demo).num_bits % 8 == 0
    published.BloomFilter(demo[:-1] + b"\xff")


def test_count_and_capacity_are_informative() -> None:
    """count may exceed capacity (pybloom-live's own files can hold capacity + 1 keys)."""
    reference = ReferenceBloomFilter(capacity=3, error_rate=1e-9)
    for number in range(4):
        reference.add(f"{number:064x}")
    assert reference.count == reference.capacity + 1
    data = _serialize(reference)
    bloom = published.BloomFilter(data)
    assert bloom.contains([f"{number:064x}".encode("ascii") for number in range(4)]).all()
    published.BloomFilter(_with_header(_example_data(), count=10**9, capacity=0))


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


# --- (f) the client refuses a download whose header disagrees with its FilterHeader --------


def _announced(data: bytes, **fields: Any) -> ndop_pb2.FilterHeader:
    params = published.FilterParameters.from_header(data)
    header = ndop_pb2.FilterHeader(
        register_version=1,
        count=params.count,
        key_id="0123456789abcdef",
        filter_scheme=published.SCHEME,
        size=len(data),
        sha256=hashlib.sha256(data).digest(),
        false_positive_rate=params.error_rate,
    )
    for name, value in fields.items():
        setattr(header, name, value)
    return header


def test_client_accepts_a_filter_its_header_describes() -> None:
    for name in FILTERS:
        data = _filter_data(_vector(name))
        _require_usable(_announced(data), data[: 1 << 20])


@pytest.mark.parametrize(
    ("fields", "first_data", "error"),
    [
        pytest.param({"count": 2}, None, IntegrityError, id="count"),
        pytest.param({"false_positive_rate": 1e-6}, None, IntegrityError, id="error-rate"),
        pytest.param({"size": 60}, None, IntegrityError, id="size"),
        pytest.param({"size": 70}, "wraps", IntegrityError, id="k-times-m-wraps-uint64"),
        pytest.param({}, "no-probability", IntegrityError, id="error-rate-not-probability"),
        pytest.param({}, "header-cut", IntegrityError, id="header-cut"),
        pytest.param({"filter_scheme": "cuckoo-v1"}, None, UnsupportedServer, id="scheme"),
        pytest.param({"size": 45}, "xxh3", UnsupportedServer, id="xxh3"),
    ],
)
def test_client_refuses_a_filter_header_before_downloading(
    fields: dict[str, Any], first_data: str | None, error: type[Exception]
) -> None:
    data = _example_data()
    if first_data == "wraps":
        data = _with_header(data, num_slices=2**61 + 30, bits_per_slice=8)[:40] + bytes(30)
    elif first_data == "no-probability":
        data = _with_header(data, error_rate=math.nan)
    elif first_data == "header-cut":
        data = data[:39]
    elif first_data == "xxh3":
        data = _zero_filter(8, 5)
    header = _announced(data if len(data) >= 40 else _example_data(), **fields)
    with pytest.raises(error):
        _require_usable(header, data)


def test_client_refuses_a_download_announcing_another_count(
    register: Register,
    address: str,
    auth_metadata: tuple[tuple[str, str], ...],
    token: str,
    tmp_path: Path,
) -> None:
    def other_count(chunk: ndop_pb2.FilterChunk) -> None:
        if chunk.HasField("header"):
            chunk.header.count += 1

    numbers = [f"{int(v):010d}" for v in register.opted_out[:3].tolist()]
    cache = tmp_path / "filters"
    with (
        relay(address, auth_metadata, Hooks(filter_chunk=other_count)) as relayed,
        Client(
            relayed, insecure=True, token=token, purpose="research", workers=1, cache_dir=cache
        ) as client,
        pytest.raises(IntegrityError, match="entries"),
    ):
        client.check(numbers, mode="private")
    assert not list(cache.rglob("*.bloom")), "nothing was cached"


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
