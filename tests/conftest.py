"""Fixtures shared by the tests: a real register store and a real server on a loopback port.

The `server` fixture also creates an organisation and exports its token as NDOP_TOKEN, so SDK
and CLI calls authenticate; raw stub calls pass `auth_metadata`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ndop_server import keys as keyfile
from ndop_server.accounts import Accounts, Limits
from ndop_server.keys import RegisterKeys
from ndop_server.register import Publisher
from ndop_server.server import RunningServer, start_server
from ndop_server.store import Store
from ndop_server.synthetic import valid_numbers
from tests.postgres_server import PostgresServer

GENEROUS = Limits(
    daily_quota=50_000_000,
    rate_per_second=0,
    daily_checks=1_000_000,
    daily_filter_downloads=1_000_000,
)
"""Limits no functional test reaches; the limits themselves are tested on their own."""


@dataclass
class Register:
    """A store with one published snapshot, and the synthetic numbers behind it."""

    keys_path: Path
    store_path: Path
    keys: RegisterKeys
    opted_out: np.ndarray
    not_opted_out: np.ndarray
    url: str | None = None
    """The PostgreSQL store, when the register lives in one (store_path is then unused)."""

    @property
    def location(self) -> str:
        """Where the store is, as `--store` takes it: the URL, or the SQLite path."""
        return self.url or str(self.store_path)

    def publisher(self, store: Store) -> Publisher:
        return Publisher(store, self.keys, workers=2)


def write_numbers(path: Path, values: np.ndarray | list[int], suffix: str = ",") -> Path:
    path.write_text("".join(f"{int(v):010d}{suffix}\n" for v in values))
    return path


def make_register(
    directory: Path,
    total: int = 3000,
    opted_out: int = 1000,
    seed: int = 11,
    url: str | None = None,
) -> Register:
    """Keys and a store (SQLite in `directory`, or the PostgreSQL database at `url`) with one
    published snapshot of synthetic numbers."""
    numbers = valid_numbers(total, "999", seed=seed)
    keys_path = directory / "keys.json"
    store_path = directory / "register.sqlite3"
    keys = keyfile.write_new(keys_path)
    snapshot = write_numbers(directory / "snapshot.dat", numbers[:opted_out])
    with Store(url or store_path, create=True) as store:
        Publisher(store, keys, workers=2).load_snapshot(snapshot)
    return Register(keys_path, store_path, keys, numbers[:opted_out], numbers[opted_out:], url=url)


@pytest.fixture
def register(tmp_path: Path) -> Register:
    return make_register(tmp_path)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (started by the tests, see postgres_server)."""
    server = PostgresServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty store location in each backend: the contract holds for both."""
    if request.param == "sqlite":
        return str(tmp_path / "contract.sqlite3")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()


@pytest.fixture
def token(register: Register, monkeypatch: pytest.MonkeyPatch) -> str:
    """An organisation's API token, also exported as NDOP_TOKEN for the SDK and the CLI."""
    with Accounts(register.store_path) as accounts:
        issued = accounts.add("test-org", GENEROUS)
    monkeypatch.setenv("NDOP_TOKEN", issued)
    return issued


@pytest.fixture
def auth_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """gRPC metadata that authenticates raw stub calls as the test organisation."""
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
def server(register: Register, token: str) -> Iterator[RunningServer]:
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
