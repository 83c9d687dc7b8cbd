"""A full disk during `register load` or `register apply` is one sentence; the previous version
stays whole and served, and nothing half-written remains. The disk is "full" for the child
process through RLIMIT_FSIZE (with SIGXFSZ ignored, writes past it fail as on a full disk)."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from pathlib import Path

from ndop_server.store import Store
from ndop_server.synthetic import valid_numbers
from tests.conftest import Register, write_numbers

NDOP = [sys.executable, "-m", "ndop_client"]
# Above what importing the libraries writes (rbcl unpacks libsodium to a temporary file),
# below what 50,000 more entries and their artifacts need.
LIMIT_BYTES = 3_000_000


def _limited() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT_BYTES, LIMIT_BYTES))


def _on_a_full_disk(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NDOP, *map(str, args)],
        preexec_fn=_limited,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


FULL = "the disk is full or cannot be written; nothing was changed"


def test_apply_on_a_full_disk_keeps_the_previous_version(
    register: Register, tmp_path: Path
) -> None:
    more = write_numbers(tmp_path / "more.dat", valid_numbers(50_000, "999", seed=77))
    before = register.store_path.read_bytes()
    done = _on_a_full_disk(
        "register",
        "apply",
        "--add",
        more,
        "--store",
        register.store_path,
        "--keys",
        register.keys_path,
        "--log-format",
        "json",
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith(FULL)
    assert "Traceback" not in done.stderr
    with Store(register.store_path) as store:
        assert store.latest_number() == 1
        assert store.latest() is not None and store.latest().count == 1000  # type: ignore[union-attr]
    assert register.store_path.read_bytes() == before
    assert not Path(f"{register.store_path}-journal").exists()


def test_a_first_load_on_a_full_disk_leaves_no_store(register: Register, tmp_path: Path) -> None:
    snapshot = write_numbers(tmp_path / "big.dat", valid_numbers(50_000, "999", seed=78))
    store = tmp_path / "new.sqlite3"
    done = _on_a_full_disk(
        "register",
        "load",
        snapshot,
        "--store",
        store,
        "--keys",
        register.keys_path,
        "--log-format",
        "json",
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith(FULL)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("new")) == []
