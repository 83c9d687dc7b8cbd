"""The filter reader written from docs/protocol.md alone (tests/filter_from_spec.py), checked
against the vectors of tests/vectors/filter/, the worked example printed in the document, and a
real server's published filter.

Only synthetic 999-range numbers are used.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from ndop_core.crypto.oprf import evaluate_input
from ndop_core.proto import ndop_pb2, ndop_pb2_grpc
from ndop_server.server import RunningServer
from tests.conftest import Register
from tests.filter_from_spec import (
    HEADER_SIZE,
    SCHEME,
    Filter,
    FilterFormatError,
    KeyHashing,
    key_of,
    parse_header,
)

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors" / "filter"
PROTOCOL = ROOT / "docs" / "protocol.md"
TIMEOUT = 30.0


def load(name: str) -> dict[str, Any]:
    vector = json.loads((VECTORS / name).read_text())
    assert isinstance(vector, dict)
    return vector


INDEX: list[dict[str, str]] = json.loads((VECTORS / "index.json").read_text())
ALL = [entry["file"] for entry in INDEX]
FILTERS = [entry["file"] for entry in INDEX if entry["kind"] == "filter"]
POSITIONS = [entry["file"] for entry in INDEX if entry["kind"] == "positions"]


def example_bytes() -> bytes:
    return (VECTORS / "example-capacity-3.bloom").read_bytes()


def test_index_lists_every_vector() -> None:
    on_disk = {p.name for p in VECTORS.glob("*.json")} - {"index.json"}
    assert set(ALL) == on_disk
    assert FILTERS and POSITIONS


# (a) vectors -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_vector_positions(name: str) -> None:
    """Chunk width, hash row, salts, digests, slice values and positions of every key."""
    vector = load(name)
    assert vector["scheme"] == SCHEME
    hashing = KeyHashing.for_parameters(vector["num_slices"], vector["bits_per_slice"])
    assert hashing.chunk_bytes == vector["chunk_bytes"]
    assert hashing.hash_name == vector["hash"]
    assert [salt.hex() for salt in hashing.salts] == vector["salts"]
    keys = vector["keys_in"] + vector["keys_out"]
    assert keys
    for entry in keys:
        assert key_of(bytes.fromhex(entry["oprf_output"])) == entry["key"].encode("ascii")
        assert [d.hex() for d in hashing.digests(entry["key"])] == entry["digests"]
        assert hashing.slice_values(entry["key"]) == entry["slice_values"]
        assert hashing.positions(entry["key"]) == entry["positions"], entry["nhs_number"]


@pytest.mark.parametrize("name", POSITIONS)
def test_positions_vector_membership_over_its_own_keys(name: str) -> None:
    """No file exists for these; a set of keys_in's bits holds keys_in and misses keys_out."""
    vector = load(name)
    hashing = KeyHashing.for_parameters(vector["num_slices"], vector["bits_per_slice"])
    bits = {p for entry in vector["keys_in"] for p in hashing.positions(entry["key"])}
    for entry in vector["keys_in"]:
        assert all(p in bits for p in hashing.positions(entry["key"]))
    for entry in vector["keys_out"]:
        assert not all(p in bits for p in hashing.positions(entry["key"]))


@pytest.mark.parametrize("name", FILTERS)
def test_vector_filter_file(name: str) -> None:
    """The stored .bloom is accepted (size and SHA-256 as published), its header matches the
    vector, every keys_in member is found and no keys_out member is."""
    vector = load(name)
    data = (VECTORS / vector["filter_file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == vector["filter_sha256"]
    bloom = Filter.parse(
        data,
        expected_size=vector["filter_size"],
        expected_sha256=bytes.fromhex(vector["filter_sha256"]),
        scheme=vector["scheme"],
    )
    header = bloom.header
    assert header.error_rate == vector["error_rate"]
    assert header.num_slices == vector["num_slices"]
    assert header.bits_per_slice == vector["bits_per_slice"]
    assert header.capacity == vector["capacity"]
    assert header.count == vector["count"] == len(vector["keys_in"])
    assert len(data) == vector["filter_size"] == header.file_size
    for entry in vector["keys_in"]:
        assert bloom.contains(entry["key"]), entry["nhs_number"]
        assert entry["key"] in bloom
    for entry in vector["keys_out"]:
        assert not bloom.contains(entry["key"]), entry["nhs_number"]
    # The array holds exactly the bits of keys_in: nothing else is set.
    set_bits = {n for n in range(header.num_slices * header.bits_per_slice) if bloom.bit(n)}
    assert set_bits == {p for e in vector["keys_in"] for p in bloom.hashing.positions(e["key"])}


# The worked example as printed in docs/protocol.md ----------------------------------------


def worked_example() -> str:
    text = PROTOCOL.read_text()
    start = text.index("### Worked example")
    return text[start : text.index("\n### ", start + 1)]


def test_worked_example_in_the_document_matches_the_vector() -> None:
    section = worked_example()
    data = example_bytes()
    dump = section[section.index("```\n") + 4 :]
    dump = dump[: dump.index("```")]
    printed = bytes.fromhex("".join(line.split(None, 1)[1] for line in dump.splitlines()))
    assert printed == data
    assert f"SHA-256 `{hashlib.sha256(data).hexdigest()}`" in section
    assert f"({len(data)} bytes;" in section

    vector = load("example-capacity-3.json")
    [entry] = vector["keys_in"]
    assert f"`{entry['oprf_output']}`" in section
    assert f"`{entry['key']}`" in section
    assert f"`{vector['salts'][0]}`" in section
    assert f"`{entry['digests'][0]}`" in section

    rows = re.findall(
        r"^\| (\d+) \| `([0-9a-f]{4})` \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|$",
        section,
        re.MULTILINE,
    )
    assert len(rows) == 30
    bloom = Filter.parse(data)
    positions = bloom.hashing.positions(entry["key"])
    digest = bytes.fromhex(entry["digests"][0])
    for j, chunk, value, v, bit, byte, in_byte in rows:
        j_ = int(j)
        assert bytes.fromhex(chunk) == digest[2 * j_ : 2 * j_ + 2]
        assert int(value) == struct.unpack("<H", bytes.fromhex(chunk))[0]
        assert int(v) == int(value) % 5
        assert int(bit) == positions[j_] == 5 * j_ + int(v)
        assert (int(byte), int(in_byte)) == divmod(positions[j_], 8)
        assert bloom.bit(positions[j_])
    [first_out, *_] = vector["keys_out"]
    assert bloom.hashing.slice_values(first_out["key"])[0] == 3
    assert not bloom.bit(3)


def test_parameter_derivation_quoted_by_the_document() -> None:
    """'For reference' numbers in docs/protocol.md: k and m from error rate and capacity."""

    def derive(error_rate: float, capacity: int) -> tuple[int, int]:
        k = math.ceil(math.log2(1 / error_rate))
        return k, math.ceil(capacity * abs(math.log(error_rate)) / (k * math.log(2) ** 2))

    assert derive(1e-9, 1) == (30, 2)
    assert derive(1e-9, 3) == (30, 5)
    assert derive(1e-9, 22_790) == (30, 32_767)
    assert derive(1e-9, 22_791) == (30, 32_768)
    assert derive(1e-9, 1_493_632_806) == (30, 2**31 - 2)
    assert derive(1e-9, 1_493_632_807) == (30, 2**31)
    assert derive(1e-9, 3_500_000) == (30, 5_032_156)
    for name in FILTERS:
        vector = load(name)
        assert derive(vector["error_rate"], vector["capacity"]) == (
            vector["num_slices"],
            vector["bits_per_slice"],
        )


# (b) a real server's published filter -----------------------------------------------------


@pytest.fixture
def channel(address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(address, options=[("grpc.enable_retries", 0)]) as opened:
        yield opened


def download(
    stub: Any, metadata: tuple[tuple[str, str], ...], version: int = 0
) -> tuple[ndop_pb2.FilterHeader, bytes]:
    """GetFilter: chunks in order without gap or overlap; the first carries the header."""
    header: ndop_pb2.FilterHeader | None = None
    data = bytearray()
    for index, chunk in enumerate(
        stub.GetFilter(
            ndop_pb2.GetFilterRequest(version=version), metadata=metadata, timeout=TIMEOUT
        )
    ):
        assert isinstance(chunk, ndop_pb2.FilterChunk)
        if index == 0:
            assert chunk.HasField("header")
            header = chunk.header
        assert chunk.offset == len(data), "chunks out of order, with a gap or an overlap"
        data += chunk.data
    assert header is not None
    return header, bytes(data)


def test_real_server_filter(
    server: RunningServer,
    channel: grpc.Channel,
    register: Register,
    auth_metadata: tuple[tuple[str, str], ...],
) -> None:
    stub = ndop_pb2_grpc.OptOutRegisterStub(channel)
    info = stub.GetRegisterInfo(
        ndop_pb2.GetRegisterInfoRequest(), metadata=auth_metadata, timeout=TIMEOUT
    )
    assert info.private_mode.filter_scheme == SCHEME
    header, data = download(stub, auth_metadata)

    # "Before using a filter", every check a client makes on the download.
    assert header.filter_scheme == SCHEME
    assert header.register_version == info.version.number >= 1
    assert header.key_id == info.private_mode.key_id
    assert header.sha256 == info.private_mode.filter_sha256
    assert header.size == info.private_mode.filter_size == len(data)
    bloom = Filter.parse(
        data,
        expected_size=header.size,
        expected_sha256=header.sha256,
        scheme=header.filter_scheme,
    )

    # What the document says the server publishes.
    loaded = [f"{int(n):010d}".encode("ascii") for n in register.opted_out]
    assert bloom.header.error_rate == 1e-9
    assert bloom.header.num_slices == 30
    assert bloom.header.count == header.count == info.version.count == len(loaded)
    # "Capacity": a first version's is its count plus max(count // 64, 64).
    assert bloom.header.capacity == len(loaded) + max(len(loaded) // 64, 64)
    assert bloom.hashing.hash_name == "sha512"

    for number in loaded:
        key = key_of(evaluate_input(register.keys.oprf_key, number))
        assert bloom.contains(key), number
    absent = [f"{int(n):010d}".encode("ascii") for n in register.not_opted_out]
    assert len(absent) >= 1000
    assert not set(loaded) & set(absent)
    for number in absent:
        key = key_of(evaluate_input(register.keys.oprf_key, number))
        assert not bloom.contains(key), number

    # The same download under a SHA-256 or size it does not have is refused.
    with pytest.raises(FilterFormatError):
        Filter.parse(data, expected_sha256=hashlib.sha256(b"other").digest())
    with pytest.raises(FilterFormatError):
        Filter.parse(data[:-1], expected_size=header.size)


# (c) refusals ------------------------------------------------------------------------------


def with_header(
    data: bytes,
    *,
    num_slices: int | None = None,
    bits_per_slice: int | None = None,
) -> bytes:
    error_rate, k, m, capacity, count = struct.unpack_from("<dQQQQ", data)
    k = k if num_slices is None else num_slices
    m = m if bits_per_slice is None else bits_per_slice
    return struct.pack("<dQQQQ", error_rate, k, m, capacity, count) + data[HEADER_SIZE:]


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda d: d[:-1], id="one-byte-short"),
        pytest.param(lambda d: d + b"\x00", id="one-byte-long"),
        pytest.param(lambda d: d[:HEADER_SIZE], id="header-only"),
        pytest.param(lambda d: with_header(d, bits_per_slice=6), id="m-too-large"),
        pytest.param(lambda d: with_header(d, bits_per_slice=4), id="m-too-small"),
        pytest.param(lambda d: with_header(d, num_slices=31), id="k-too-large"),
        pytest.param(lambda d: with_header(d, bits_per_slice=2**64 - 1), id="m-huge"),
        # k*m = 2^64 wraps to 0 in uint64: the pseudocode's length check would then pass.
        pytest.param(
            lambda d: with_header(d, num_slices=2**61, bits_per_slice=8)[:HEADER_SIZE],
            id="k-times-m-wraps-uint64",
        ),
    ],
)
def test_length_disagreeing_with_header_is_refused(mangle: Any) -> None:
    data = mangle(example_bytes())
    assert isinstance(data, bytes)
    header = parse_header(data)
    assert len(data) != header.file_size
    with pytest.raises(FilterFormatError, match="header"):
        Filter.parse(data)


def test_other_refusals() -> None:
    data = example_bytes()
    Filter.parse(data)
    with pytest.raises(FilterFormatError, match="at least 40"):
        Filter.parse(data[:39])
    for k, m in [(0, 5), (30, 0), (0, 0)]:
        with pytest.raises(FilterFormatError, match="at least 1"):
            Filter.parse(with_header(data, num_slices=k, bits_per_slice=m)[:HEADER_SIZE])
    with pytest.raises(FilterFormatError, match="scheme"):
        Filter.parse(data, scheme="pybloom-live-v2")
    with pytest.raises(FilterFormatError, match="download header"):
        Filter.parse(data, expected_size=len(data) + 1)
    with pytest.raises(FilterFormatError, match="SHA-256"):
        Filter.parse(data, expected_sha256=bytes(32))
    # A padding bit (array bits 150 and 151 are bits 6 and 7 of the last byte) set.
    with pytest.raises(FilterFormatError, match="padding"):
        Filter.parse(data[:-1] + bytes([data[-1] | 0x80]))
    # XXH3-128 row: k = 8 slices of 2-byte chunks is t = 128 bits.
    xxh3 = struct.pack("<dQQQQ", 0.01, 8, 5, 1, 0) + bytes(5)
    with pytest.raises(FilterFormatError, match="XXH3"):
        Filter.parse(xxh3)
    # The SHA-1 row starts right above it.
    assert Filter.parse(struct.pack("<dQQQQ", 0.01, 9, 5, 1, 0) + bytes(6)).hashing.hash_name == (
        "sha1"
    )


def test_keys_must_be_lowercase_hex_text() -> None:
    bloom = Filter.parse(example_bytes())
    [entry] = load("example-capacity-3.json")["keys_in"]
    assert bloom.contains(entry["key"])
    assert bloom.contains(entry["key"].encode("ascii"))
    for bad in [entry["key"].upper(), entry["key"][:63], bytes.fromhex(entry["key"])]:
        with pytest.raises(FilterFormatError):
            bloom.contains(bad)
    assert 42 not in bloom
