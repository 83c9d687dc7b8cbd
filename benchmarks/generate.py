"""Synthetic benchmark data from the 9 range (900 000 0000 - 999 999 9999) only.

Two CfNDO `.dat` files (lines `NNNNNNNNNN,` ending CRLF):
- a register snapshot of `register_size` distinct valid numbers;
- a cohort of `cohort_size` distinct valid numbers, of which about `member_fraction` (5%) are
  register members and the rest are valid numbers that are not in the register.

Every number comes from one call of `ndop_server.synthetic.valid_numbers(n, "9", seed)`. Files go
under benchmarks/data/ (gitignored) with a manifest; a later run with the same sizes and seed
reuses them.

    python -m benchmarks.generate --register 200000 --cohort 100000
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

import numpy as np

from ndop_server.synthetic import valid_numbers

DATA_DIR: Final = Path(__file__).resolve().parent / "data"
DEFAULT_SEED: Final = 20180525
MEMBER_FRACTION: Final = 0.05
FORMAT: Final = "ndop-benchmark-data-v1"
LINE_BYTES: Final = 13
"""Ten digits, a comma, CR, LF."""
RANGE_LOW: Final = 9_000_000_000
RANGE_HIGH: Final = 9_999_999_999
_POWERS: Final = 10 ** np.arange(9, -1, -1, dtype=np.int64)

Log = Callable[[str], None]


@dataclass(frozen=True)
class Dataset:
    directory: Path
    register_path: Path
    cohort_path: Path
    register_size: int
    cohort_size: int
    members_in_cohort: int
    """How many cohort rows are register members: known by construction, not from ndop."""
    seed: int

    def summary(self) -> dict[str, object]:
        fields = asdict(self)
        return {
            key: str(value) if isinstance(value, Path) else value for key, value in fields.items()
        }


def members_for(cohort_size: int, register_size: int, fraction: float = MEMBER_FRACTION) -> int:
    return min(round(cohort_size * fraction), register_size)


def dataset_dir(register_size: int, cohort_size: int, seed: int, data_dir: Path = DATA_DIR) -> Path:
    return data_dir / f"r{register_size}-c{cohort_size}-s{seed}"


def generate(
    register_size: int,
    cohort_size: int,
    seed: int = DEFAULT_SEED,
    data_dir: Path = DATA_DIR,
    log: Log = print,
) -> Dataset:
    """The dataset for these sizes and seed, written now or reused from an earlier run."""
    if register_size < 1 or cohort_size < 1:
        raise ValueError("register and cohort sizes must be at least 1")
    members = members_for(cohort_size, register_size)
    directory = dataset_dir(register_size, cohort_size, seed, data_dir)
    dataset = Dataset(
        directory=directory,
        register_path=directory / "register.dat",
        cohort_path=directory / "cohort.dat",
        register_size=register_size,
        cohort_size=cohort_size,
        members_in_cohort=members,
        seed=seed,
    )
    manifest_path = directory / "manifest.json"
    expected = _manifest(dataset)
    if _reusable(dataset, manifest_path, expected):
        log(f"reusing data in {directory}")
        return dataset

    log(
        f"generating {register_size:,} register and {cohort_size:,} cohort numbers "
        f"(9 range, seed {seed}) in {directory}"
    )
    directory.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)
    outsiders = cohort_size - members
    every = valid_numbers(register_size + outsiders, "9", seed)
    register = every[:register_size]
    rng = np.random.default_rng([seed, 1])
    chosen = rng.choice(register_size, size=members, replace=False)
    cohort = np.concatenate([register[chosen], every[register_size:]])
    cohort = cohort[rng.permutation(len(cohort))]
    write_dat(dataset.register_path, register)
    write_dat(dataset.cohort_path, cohort)
    _write_atomically(manifest_path, json.dumps(expected, indent=2) + "\n")
    return dataset


@dataclass(frozen=True)
class Cohort:
    """Another cohort against a dataset's register, for checks of other sizes."""

    path: Path
    size: int
    members: int
    """How many rows are register members: known by construction, not from ndop."""


def larger_cohort(dataset: Dataset, register: np.ndarray, size: int, log: Log = print) -> Cohort:
    """A cohort of `size` distinct valid numbers against `dataset`'s register (its numbers, as
    the caller has read them), 5% of them members, written once beside the dataset and
    reused."""
    members = members_for(size, dataset.register_size)
    path = dataset.directory / f"cohort-{size}.dat"
    cohort = Cohort(path, size, members)
    if path.exists() and path.stat().st_size == size * LINE_BYTES:
        return cohort
    log(f"generating a cohort of {size:,} numbers against the {dataset.register_size:,} register")
    rng = np.random.default_rng([dataset.seed, size])
    outsiders = np.empty(0, dtype=np.int64)
    draw = 0
    while len(outsiders) < size - members:
        draw += 1
        found = valid_numbers(2 * size + 1000, "9", dataset.seed + draw)
        outsiders = np.union1d(outsiders, found[~np.isin(found, register)])
    chosen = register[rng.choice(len(register), size=members, replace=False)]
    picked = rng.choice(len(outsiders), size=size - members, replace=False)
    values = np.concatenate([chosen, outsiders[picked]])
    write_dat(path, values[rng.permutation(size)])
    return cohort


def _manifest(dataset: Dataset) -> dict[str, object]:
    return {
        "format": FORMAT,
        "range": "9",
        "seed": dataset.seed,
        "register_size": dataset.register_size,
        "cohort_size": dataset.cohort_size,
        "members_in_cohort": dataset.members_in_cohort,
        "register_bytes": dataset.register_size * LINE_BYTES,
        "cohort_bytes": dataset.cohort_size * LINE_BYTES,
    }


def _reusable(dataset: Dataset, manifest_path: Path, expected: dict[str, object]) -> bool:
    try:
        found = json.loads(manifest_path.read_text())
        return bool(
            found == expected
            and dataset.register_path.stat().st_size == expected["register_bytes"]
            and dataset.cohort_path.stat().st_size == expected["cohort_bytes"]
        )
    except (OSError, ValueError):
        return False


def _check_range(values: np.ndarray) -> None:
    if len(values) and (values.min() < RANGE_LOW or values.max() > RANGE_HIGH):
        raise ValueError("benchmark data must come from the 9 range only")


def dat_bytes(values: np.ndarray) -> bytes:
    """CfNDO lines `NNNNNNNNNN,` + CRLF for int64 NHS numbers."""
    _check_range(values)
    lines = np.empty((len(values), LINE_BYTES), dtype=np.uint8)
    lines[:, :10] = (values[:, None] // _POWERS) % 10 + ord("0")
    lines[:, 10] = ord(",")
    lines[:, 11] = ord("\r")
    lines[:, 12] = ord("\n")
    return lines.tobytes()


def write_dat(path: Path, values: np.ndarray) -> None:
    _write_atomically(path, dat_bytes(values))


def read_dat(path: Path) -> np.ndarray:
    """The numbers of a `.dat` file written by `write_dat` (fixed 13-byte lines), as int64."""
    data = path.read_bytes()
    if len(data) % LINE_BYTES:
        raise ValueError(f"{path} is not a benchmark .dat file (fixed {LINE_BYTES}-byte lines)")
    lines = np.frombuffer(data, dtype=np.uint8).reshape(-1, LINE_BYTES)
    tails = lines[:, 10:]
    if len(lines) and not (tails == np.frombuffer(b",\r\n", dtype=np.uint8)).all():
        raise ValueError(f"{path} is not a benchmark .dat file (lines must end ',\\r\\n')")
    values = np.asarray((lines[:, :10].astype(np.int64) - ord("0")) @ _POWERS, dtype=np.int64)
    _check_range(values)
    return values


def as_strings(values: np.ndarray) -> list[str]:
    """Ten-digit strings, for libraries that take text items (OpenMined PSI)."""
    text = dat_bytes(values).decode("ascii")
    return [text[i : i + 10] for i in range(0, len(text), LINE_BYTES)]


def _write_atomically(path: Path, data: str | bytes) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    if isinstance(data, str):
        temp.write_text(data)
    else:
        temp.write_bytes(data)
    os.replace(temp, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--register", type=int, default=200_000)
    parser.add_argument("--cohort", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    args = parser.parse_args()
    dataset = generate(args.register, args.cohort, args.seed, args.data_dir)
    print(json.dumps(dataset.summary(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
