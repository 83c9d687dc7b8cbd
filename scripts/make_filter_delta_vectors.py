"""Generate tests/vectors/filter-delta/: test vectors for filter deltas, "ndop-filter-delta-v1".

Nothing here uses ndop_core.filter_delta, which the vectors exist to check. Both filters of a
vector are made by pybloom-live (BloomFilter(capacity, error_rate), keys added, `tofile`), the
flipped bits are read by comparing pybloom-live's two bit arrays bit by bit, and the delta is
encoded by the plain-Python encoder below, written from docs/protocol.md ("Filter deltas,
exactly"). Keys come from synthetic numbers of the 999 test range through the same test OPRF key
as tests/vectors/filter/ (see scripts/make_filter_vectors.py).

Usage:
    .venv/bin/python scripts/make_filter_delta_vectors.py [OUTPUT_DIR]
    .venv/bin/python scripts/make_filter_delta_vectors.py --example [OUTPUT_DIR]
The second prints the worked example of docs/protocol.md from the generated vectors.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from make_filter_vectors import (
    OPRF_INFO,
    OPRF_SEED,
    ROOT,
    JsonObject,
    file_bytes,
    keyed_numbers,
    oprf_key,
    require_little_endian,
)
from make_filter_vectors import SCHEME as FILTER_SCHEME
from pybloom_live import BloomFilter

DEFAULT_OUT: Final = ROOT / "tests" / "vectors" / "filter-delta"
SCHEME: Final = "ndop-filter-delta-v1"
EXAMPLE: Final = "example-capacity-10"


@dataclass(frozen=True)
class Spec:
    """Base: the first `base` numbers drawn. Target: the base without the `withdraw` numbers at
    its start, plus the next `add` numbers drawn."""

    name: str
    description: str
    capacity: int
    error_rate: float
    base: int
    withdraw: int
    add: int
    seed: int


SPECS: Final = (
    Spec(EXAMPLE, "the worked example of docs/protocol.md", 10, 1e-9, 10, 1, 1, 201),
    Spec("demo-capacity-100", "10 withdrawn and 10 added", 100, 1e-9, 100, 10, 10, 202),
    Spec("count-changes", "the count falls, the capacity stays", 100, 1e-9, 95, 10, 5, 203),
    Spec("bits-per-slice-32768", "sparse: 4-byte chunks", 22791, 1e-9, 64, 8, 8, 204),
    Spec("sha384-chunk-2", "20 slices of 2 bytes: SHA-384", 50, 1e-6, 50, 5, 5, 205),
    Spec("no-change", "a filter to itself: no flip", 100, 1e-9, 100, 0, 0, 206),
    Spec("replaced", "every key replaced: dense flips", 100, 1e-9, 100, 100, 100, 207),
)


def pybloom_filter(capacity: int, error_rate: float, filter_keys: list[str]) -> BloomFilter:
    bloom = BloomFilter(capacity=capacity, error_rate=error_rate)
    for key in filter_keys:
        bloom.add(key, skip_check=True)
    return bloom


def encode(base_sha256: bytes, target_header: bytes, flips: list[int]) -> tuple[bytes, int, int]:
    """The delta, its low_bits r and high_bytes h, bit by bit as docs/protocol.md says."""
    gaps = [p - (flips[i - 1] + 1 if i else 0) for i, p in enumerate(flips)]
    best_r, best_size = 0, None
    for r in range(max(gaps, default=0).bit_length() + 1):
        high_bits = sum(g >> r for g in gaps) + len(gaps)
        size = (high_bits + 7) // 8 + (len(gaps) * r + 7) // 8
        if best_size is None or size < best_size:
            best_r, best_size = r, size
    high: list[int] = []
    low: list[int] = []
    for gap in gaps:
        high += [0] * (gap >> best_r) + [1]
        low += [(gap >> b) & 1 for b in range(best_r)]
    high_bytes, low_bytes = pack(high), pack(low)
    fixed = struct.pack(
        "<32s40sQQQ", base_sha256, target_header, len(flips), best_r, len(high_bytes)
    )
    return fixed + high_bytes + low_bytes, best_r, len(high_bytes)


def pack(bits: list[int]) -> bytes:
    """Bits, least-significant first within each byte; the last byte padded with zeros."""
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        out[i // 8] |= bit << (i % 8)
    return bytes(out)


def vector(spec: Spec, out_dir: Path) -> JsonObject:
    secret_key, public_key = oprf_key()
    drawn = keyed_numbers(spec.base + spec.add, spec.seed, secret_key)
    base_rows = drawn[: spec.base]
    target_rows = base_rows[spec.withdraw :] + drawn[spec.base :]
    base = pybloom_filter(spec.capacity, spec.error_rate, [key for _, _, key in base_rows])
    target = pybloom_filter(spec.capacity, spec.error_rate, [key for _, _, key in target_rows])
    flips = [i for i in range(base.num_bits) if base.bitarray[i] != target.bitarray[i]]
    base_data, target_data = file_bytes(base), file_bytes(target)
    delta, low_bits, high_bytes = encode(
        hashlib.sha256(base_data).digest(), target_data[:40], flips
    )
    names = {"base": f"{spec.name}.base.bloom", "target": f"{spec.name}.target.bloom"}
    (out_dir / names["base"]).write_bytes(base_data)
    (out_dir / names["target"]).write_bytes(target_data)
    (out_dir / f"{spec.name}.delta").write_bytes(delta)
    return {
        "name": spec.name,
        "description": spec.description,
        "scheme": SCHEME,
        "filter_scheme": FILTER_SCHEME,
        "error_rate": spec.error_rate,
        "capacity": spec.capacity,
        "num_slices": base.num_slices,
        "bits_per_slice": base.bits_per_slice,
        "oprf": {
            "seed": OPRF_SEED.hex(),
            "info": OPRF_INFO.hex(),
            "secret_key": secret_key.hex(),
            "public_key": public_key.hex(),
        },
        "numbers": {"range": "999", "seed": spec.seed, "count": spec.base + spec.add},
        "withdrawn": [number for number, _, _ in base_rows[: spec.withdraw]],
        "added": [number for number, _, _ in drawn[spec.base :]],
        "base": file_fields(names["base"], base_data, base.count),
        "target": file_fields(names["target"], target_data, target.count),
        "flips": flips,
        "low_bits": low_bits,
        "high_bytes": high_bytes,
        "delta_file": f"{spec.name}.delta",
        "delta_size": len(delta),
        "delta_sha256": hashlib.sha256(delta).hexdigest(),
    }


def file_fields(name: str, data: bytes, count: int) -> JsonObject:
    return {
        "file": name,
        "count": count,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def generate(out_dir: Path) -> None:
    require_little_endian()
    out_dir.mkdir(parents=True, exist_ok=True)
    index = []
    for spec in SPECS:
        made = vector(spec, out_dir)
        text = json.dumps(made, indent=1)
        (out_dir / f"{spec.name}.json").write_text(text + "\n", encoding="utf-8")
        index.append(f"{spec.name}.json")
    (out_dir / "index.json").write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")


def example_markdown(out_dir: Path) -> str:
    """The worked example of docs/protocol.md, from the generated example vector."""
    made = json.loads((out_dir / f"{EXAMPLE}.json").read_text(encoding="utf-8"))
    delta = (out_dir / made["delta_file"]).read_bytes()
    flips = made["flips"]
    r = made["low_bits"]
    gaps = [p - (flips[i - 1] + 1 if i else 0) for i, p in enumerate(flips)]
    lines = [
        f"- Base: a filter of capacity {made['capacity']} ({made['num_slices']} slices of "
        f"{made['bits_per_slice']} bits) holding {made['base']['count']} keys (SHA-256 "
        f"`{made['base']['sha256']}`). Target: `{made['withdrawn'][0]}` withdrawn and "
        f"`{made['added'][0]}` added, {made['target']['count']} keys.",
        f"- The bit arrays differ at {len(flips)} positions: {', '.join(map(str, flips))}.",
        f"- Gaps: {', '.join(map(str, gaps))}. With r = {r} low bits the two sections take "
        f"{made['high_bytes']} + {(len(flips) * r + 7) // 8} bytes, fewer than with any other r.",
        f"- The delta, {len(delta)} bytes (SHA-256 `{made['delta_sha256']}`): 32 bytes of base "
        f"digest, the target's 40-byte header, n = {len(flips)}, r = {r}, "
        f"h = {made['high_bytes']}, then the sections:",
        "",
        "```",
        *hexdump(delta),
        "```",
    ]
    return "\n".join(lines)


def hexdump(data: bytes) -> list[str]:
    return [
        f"{offset:04x}  " + " ".join(f"{b:02x}" for b in data[offset : offset + 24])
        for offset in range(0, len(data), 24)
    ]


def main(argv: list[str]) -> int:
    example = "--example" in argv
    rest = [a for a in argv if a != "--example"]
    out_dir = Path(rest[0]) if rest else DEFAULT_OUT
    if example:
        print(example_markdown(out_dir))
    else:
        generate(out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
