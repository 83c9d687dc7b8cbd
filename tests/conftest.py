"""Fixtures shared by the tests: a real register store and a real server on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ndop_server import keys as keyfile
from ndop_server.keys import RegisterKeys
from ndop_server.register import Publisher
from ndop_server.server import RunningServer, start_server
from ndop_server.store import Store
from ndop_server.synthetic import valid_numbers


@dataclass
class Register:
    """A store with one published snapshot, and the synthetic numbers behind it."""

    keys_path: Path
    store_path: Path
    keys: RegisterKeys
    opted_out: np.ndarray
    not_opted_out: np.ndarray

    def publisher(self, store: Store) -> Publisher:
        return Publisher(store, self.keys, workers=2)


def write_numbers(path: Path, values: np.ndarray | list[int], suffix: str = ",") -> Path:
    path.write_text("".join(f"{int(v):010d}{suffix}\n" for v in values))
    return path


@pytest.fixture
def register(tmp_path: Path) -> Register:
    numbers = valid_numbers(3000, "999", seed=11)
    opted_out, not_opted_out = numbers[:1000], numbers[1000:]
    keys_path = tmp_path / "keys.json"
    store_path = tmp_path / "register.sqlite3"
    keys = keyfile.write_new(keys_path)
    snapshot = write_numbers(tmp_path / "snapshot.dat", opted_out)
    with Store(store_path, create=True) as store:
        Publisher(store, keys, workers=2).load_snapshot(snapshot)
    return Register(keys_path, store_path, keys, opted_out, not_opted_out)


@pytest.fixture
def server(register: Register) -> Iterator[RunningServer]:
    running = start_server(
        register.store_path,
        register.keys,
        "127.0.0.1:0",
        tls=None,
        insecure=True,
        poll_seconds=0.1,
    )
    try:
        yield running
    finally:
        running.stop(grace=1)


@pytest.fixture
def address(server: RunningServer) -> str:
    return f"127.0.0.1:{server.port}"
