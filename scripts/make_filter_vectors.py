"""Generate tests/vectors/filter/: test vectors for the published filter, "pybloom-live-v1".

The reference is pybloom-live itself (its BloomFilter, `tofile` and `make_hashfuncs`), never
ndop_core.filter, which the vectors exist to check. Keys are made end to end: synthetic NHS
numbers from the 999 test range, a fixed test OPRF key derived with RFC 9497 DeriveKeyPair,
F_k(number), and the filter key (hex of the output's first 32 bytes).

Two kinds of vector:
- "filter": BloomFilter(capacity, error_rate) with keys_in added, written beside the JSON as
  NAME.bloom exactly as `tofile` writes it;
- "positions": the bit positions pybloom-live's make_hashfuncs(num_slices, bits_per_slice)
  gives each key, for parameters whose filter would be too large to store (or that no capacity
  yields); no filter file.

Usage:
    .venv/bin/python scripts/make_filter_vectors.py [OUTPUT_DIR]
    .venv/bin/python scripts/make_filter_vectors.py --example [OUTPUT_DIR]
The second prints the worked example of docs/protocol.md from the generated vectors.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pybloom_live import BloomFilter
from pybloom_live.pybloom import make_hashfuncs

from ndop_core.crypto import oprf
from ndop_server.synthetic import valid_numbers

ROOT: Final = Path(__file__).resolve().parents[1]
DEFAULT_OUT: Final = ROOT / "tests" / "vectors" / "filter"
SCHEME: Final = "pybloom-live-v1"
KEY_BYTES: Final = 32
HEADER_SIZE: Final = 40
OPRF_SEED: Final = b"ndop filter test vector seed 001"
OPRF_INFO: Final = b"ndop filter test vectors"
EXAMPLE: Final = "example-capacity-3"

JsonObject = dict[str, Any]
Row = tuple[str, bytes, str]  # canonical number, F_k(number), filter key


@dataclass(frozen=True)
class FilterSpec:
    """A whole filter: pybloom-live's BloomFilter(capacity, error_rate) holding keys_in."""

    name: str
    description: str
    capacity: int
    error_rate: float
    keys_in: int
    keys_out: int
    seed: int


@dataclass(frozen=True)
class PositionsSpec:
    """Bit positions only, from make_hashfuncs(num_slices, bits_per_slice)."""

    name: str
    description: str
    num_slices: int
    bits_per_slice: int
    error_rate: float
    keys_in: int
    keys_out: int
    seed: int


Spec = FilterSpec | PositionsSpec

SPECS: Final[tuple[Spec, ...]] = (
    FilterSpec(EXAMPLE, "the worked example of docs/protocol.md", 3, 1e-9, 1, 2, 101),
    FilterSpec("demo-capacity-100", "a full demo-sized register", 100, 1e-9, 100, 20, 102),
    FilterSpec(
        "bits-per-slice-32767", "largest 2-byte-chunk slice at 1e-9", 22790, 1e-9, 64, 16, 103
    ),
    FilterSpec(
        "bits-per-slice-32768", "smallest 4-byte-chunk slice at 1e-9", 22791, 1e-9, 64, 16, 104
    ),
    FilterSpec("sha384-chunk-2", "20 slices of 2 bytes: SHA-384", 50, 1e-6, 50, 20, 105),
    FilterSpec("sha256-chunk-2", "12 slices of 2 bytes: SHA-256", 50, 3e-4, 50, 20, 106),
    FilterSpec("sha1-chunk-2", "10 slices of 2 bytes: SHA-1", 50, 1e-3, 50, 20, 107),
    PositionsSpec(
        "bits-per-slice-2147483647", "largest 4-byte-chunk slice", 30, 2**31 - 1, 1e-9, 8, 8, 108
    ),
    PositionsSpec(
        "bits-per-slice-2147483648", "smallest 8-byte-chunk slice", 30, 2**31, 1e-9, 8, 8, 109
    ),
    PositionsSpec(
        "sha384-chunk-4", "10 slices of 4 bytes: SHA-384", 10, 1_000_003, 2**-10, 8, 8, 110
    ),
    PositionsSpec("sha256-chunk-4", "6 slices of 4 bytes: SHA-256", 6, 1_000_003, 2**-6, 8, 8, 111),
    PositionsSpec("sha1-chunk-4", "5 slices of 4 bytes: SHA-1", 5, 2**15, 2**-5, 8, 8, 112),
    PositionsSpec(
        "sha384-chunk-8", "5 slices of 8 bytes: SHA-384", 5, 10**12 + 39, 2**-5, 8, 8, 113
    ),
    PositionsSpec("sha256-chunk-8", "3 slices of 8 bytes: SHA-256", 3, 2**40, 2**-3, 8, 8, 114),
)


@dataclass(frozen=True)
class Hashing:
    """What pybloom-live's make_hashfuncs chose, read from the function it returns."""

    make_hashes: Callable[[str], Iterator[int]]
    hash_name: str
    chunk_bytes: int
    salt_states: tuple[Any, ...]


def hashing(num_slices: int, bits_per_slice: int) -> Hashing:
    make_hashes, hashfn = make_hashfuncs(num_slices, bits_per_slice)
    # The chunk format and the salts are locals of make_hashfuncs, captured by the function it
    # returns; reading them records pybloom-live's own choice rather than a re-derivation.
    captured = dict(
        zip(
            make_hashes.__code__.co_freevars,
            (c.cell_contents for c in make_hashes.__closure__),
            strict=True,
        )
    )
    return Hashing(
        make_hashes=make_hashes,
        hash_name=hashfn().name,
        chunk_bytes=struct.calcsize(captured["fmt"][0]),
        salt_states=tuple(captured["salts"]),
    )


def salt_digests(spec_hashing: Hashing) -> list[bytes]:
    """H(uint32_le(i)) for each salt; checked against the hash state pybloom-live keeps."""
    new = getattr(hashlib, spec_hashing.hash_name)
    digests = [new(struct.pack("<I", i)).digest() for i in range(len(spec_hashing.salt_states))]
    for digest, state in zip(digests, spec_hashing.salt_states, strict=True):
        if new(digest).digest() != state.copy().digest():
            raise SystemExit("pybloom-live's salts are not H(H(uint32_le(i)))")
    return digests


def oprf_key() -> tuple[bytes, bytes]:
    return oprf.derive_key_pair(OPRF_SEED, OPRF_INFO)


def keyed_numbers(count: int, seed: int, secret_key: bytes) -> list[Row]:
    """(canonical number, F_k(number), filter key) for synthetic numbers of the 999 range."""
    rows = []
    for value in valid_numbers(count, "999", seed=seed):
        number = f"{int(value):010d}"
        output = oprf.evaluate_input(secret_key, number.encode("ascii"))
        rows.append((number, output, output[:KEY_BYTES].hex()))
    return rows


def key_entry(number: str, output: bytes, key: str, spec_hashing: Hashing, bps: int) -> JsonObject:
    digests = []
    for state in spec_hashing.salt_states:
        keyed = state.copy()
        keyed.update(key.encode("ascii"))
        digests.append(keyed.digest().hex())
    values = list(spec_hashing.make_hashes(key))
    return {
        "nhs_number": number,
        "oprf_output": output.hex(),
        "key": key,
        "digests": digests,
        "slice_values": values,
        "positions": [j * bps + value for j, value in enumerate(values)],
    }


def common_fields(
    spec: Spec, num_slices: int, bits_per_slice: int, spec_hashing: Hashing
) -> JsonObject:
    secret_key, public_key = oprf_key()
    return {
        "name": spec.name,
        "description": spec.description,
        "scheme": SCHEME,
        "error_rate": spec.error_rate,
        "num_slices": num_slices,
        "bits_per_slice": bits_per_slice,
        "hash": spec_hashing.hash_name,
        "chunk_bytes": spec_hashing.chunk_bytes,
        "salts": [digest.hex() for digest in salt_digests(spec_hashing)],
        "oprf": {
            "suite": oprf.SUITE_NAME,
            "seed": OPRF_SEED.hex(),
            "info": OPRF_INFO.hex(),
            "secret_key": secret_key.hex(),
            "public_key": public_key.hex(),
        },
        "numbers": {
            "generator": "ndop_server.synthetic.valid_numbers",
            "range": "999",
            "seed": spec.seed,
            "count": drawn(spec),
        },
    }


def drawn(spec: Spec) -> int:
    """How many numbers a vector draws: keys_in, then candidates for keys_out."""
    return spec.keys_in + 4 * spec.keys_out


def candidates(spec: Spec) -> tuple[list[Row], list[Row]]:
    """The keys_in, and more rows than keys_out needs (a few may be false positives)."""
    secret_key, _ = oprf_key()
    rows = keyed_numbers(drawn(spec), spec.seed, secret_key)
    return rows[: spec.keys_in], rows[spec.keys_in :]


def absent(spec: Spec, rows: list[Row], is_member: Callable[[str], bool]) -> list[Row]:
    """keys_out: the first rows whose keys the reference finds absent."""
    found = [row for row in rows if not is_member(row[2])]
    if len(found) < spec.keys_out:
        raise SystemExit(f"{spec.name}: too few absent keys; enlarge the filter")
    return found[: spec.keys_out]


def file_bytes(bloom: BloomFilter) -> bytes:
    """The filter's file, exactly as pybloom-live's `tofile` writes it."""
    buffer = io.BytesIO()
    bloom.tofile(buffer)
    return buffer.getvalue()


def filter_vector(spec: FilterSpec, out_dir: Path) -> JsonObject:
    bloom = BloomFilter(capacity=spec.capacity, error_rate=spec.error_rate)
    keys_in, others = candidates(spec)
    for _, _, key in keys_in:
        bloom.add(key, skip_check=True)
    keys_out = absent(spec, others, lambda key: key in bloom)
    data = file_bytes(bloom)
    file_name = f"{spec.name}.bloom"
    (out_dir / file_name).write_bytes(data)
    spec_hashing = hashing(bloom.num_slices, bloom.bits_per_slice)
    bps = bloom.bits_per_slice
    return {
        "kind": "filter",
        **common_fields(spec, bloom.num_slices, bps, spec_hashing),
        "capacity": bloom.capacity,
        "count": bloom.count,
        "filter_file": file_name,
        "filter_size": len(data),
        "filter_sha256": hashlib.sha256(data).hexdigest(),
        "keys_in": [key_entry(*row, spec_hashing, bps) for row in keys_in],
        "keys_out": [key_entry(*row, spec_hashing, bps) for row in keys_out],
    }


def positions_vector(spec: PositionsSpec) -> JsonObject:
    spec_hashing = hashing(spec.num_slices, spec.bits_per_slice)
    bps = spec.bits_per_slice
    keys_in, others = candidates(spec)
    set_bits = {
        j * bps + value
        for _, _, key in keys_in
        for j, value in enumerate(spec_hashing.make_hashes(key))
    }

    def is_member(key: str) -> bool:
        return all(j * bps + v in set_bits for j, v in enumerate(spec_hashing.make_hashes(key)))

    keys_out = absent(spec, others, is_member)
    return {
        "kind": "positions",
        **common_fields(spec, spec.num_slices, bps, spec_hashing),
        "capacity": None,
        "count": spec.keys_in,
        "keys_in": [key_entry(*row, spec_hashing, bps) for row in keys_in],
        "keys_out": [key_entry(*row, spec_hashing, bps) for row in keys_out],
    }


def to_json(vector: JsonObject) -> str:
    """Indented JSON with each list of integers on one line."""
    text = json.dumps(vector, indent=1)
    return re.sub(
        r"\[([\d,\s]+)\]", lambda m: "[" + ", ".join(re.findall(r"\d+", m.group(1))) + "]", text
    )


def require_little_endian() -> None:
    if sys.byteorder != "little":
        raise SystemExit(
            "pybloom-live writes native byte order: run this on a little-endian machine"
        )


def generate(out_dir: Path) -> None:
    require_little_endian()
    out_dir.mkdir(parents=True, exist_ok=True)
    index = []
    for spec in SPECS:
        if isinstance(spec, FilterSpec):
            vector = filter_vector(spec, out_dir)
        else:
            vector = positions_vector(spec)
        file_name = f"{spec.name}.json"
        (out_dir / file_name).write_text(to_json(vector) + "\n", encoding="utf-8")
        index.append({"file": file_name, "kind": vector["kind"]})
    (out_dir / "index.json").write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")


HASH_NAMES: Final = {"sha512": "SHA-512", "sha384": "SHA-384", "sha256": "SHA-256", "sha1": "SHA-1"}


def example_markdown(out_dir: Path) -> str:
    """The worked example of docs/protocol.md, from the generated example vector."""
    vector = json.loads((out_dir / f"{EXAMPLE}.json").read_text(encoding="utf-8"))
    data = (out_dir / vector["filter_file"]).read_bytes()
    entry = vector["keys_in"][0]
    num_slices, bps, chunk = vector["num_slices"], vector["bits_per_slice"], vector["chunk_bytes"]
    hash_title = HASH_NAMES[vector["hash"]]
    digest = bytes.fromhex(entry["digests"][0])
    lines = [
        f"- Parameters: capacity {vector['capacity']}, error rate {vector['error_rate']!r}: "
        f"num_slices = {num_slices}, bits_per_slice = {bps}; chunks of {chunk} bytes; "
        f"8 * {num_slices} * {chunk} = {8 * num_slices * chunk} bits, so {hash_title}, "
        f"and one salt (a digest holds {len(digest) // chunk} chunks).",
        f"- NHS number (synthetic, 999 range): `{entry['nhs_number']}`; test OPRF secret key "
        f"`{vector['oprf']['secret_key']}` (DeriveKeyPair, seed = ASCII "
        f'"{bytes.fromhex(vector["oprf"]["seed"]).decode("ascii")}", info = ASCII '
        f'"{bytes.fromhex(vector["oprf"]["info"]).decode("ascii")}").',
        f"- OPRF output F_k(number): `{entry['oprf_output']}`.",
        f"- key, 64 ASCII bytes: `{entry['key']}`.",
        f"- salt 0 = {hash_title}(`00000000`) = `{vector['salts'][0]}`.",
        f"- D = {hash_title}(salt 0 ‖ key) = `{digest.hex()}`.",
        "",
        f"| slice j | chunk bytes | uint16 LE | v = mod {bps} | bit j·{bps}+v | "
        "byte of bit array | bit in byte |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for j, position in enumerate(entry["positions"]):
        raw = digest[j * chunk : (j + 1) * chunk]
        lines.append(
            f"| {j} | `{raw.hex()}` | {int.from_bytes(raw, 'little')} | "
            f"{entry['slice_values'][j]} | {position} | {position >> 3} | {position & 7} |"
        )
    lines += [
        "",
        f"The whole file of a filter holding only this key ({len(data)} bytes; SHA-256 "
        f"`{vector['filter_sha256']}`). Header: error rate `{data[0:8].hex()}` (1e-9 as a "
        f"little-endian binary64), num_slices `{data[8:16].hex()}`, bits_per_slice "
        f"`{data[16:24].hex()}`, capacity `{data[24:32].hex()}`, count `{data[32:40].hex()}`; "
        f"then {len(data) - HEADER_SIZE} bytes of bit array, bit n of the array being bit n mod 8 "
        "of byte 40 + n div 8 of the file:",
        "",
        "```",
        *(f"{at:04x}  {data[at : at + 20].hex(' ')}" for at in range(0, len(data), 20)),
        "```",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    example = "--example" in argv
    paths = [arg for arg in argv if arg != "--example"]
    out_dir = Path(paths[0]) if paths else DEFAULT_OUT
    if example:
        print(example_markdown(out_dir))
    else:
        generate(out_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
