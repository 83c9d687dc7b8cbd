"""`ndop serve` safety: plaintext only on loopback unless explicitly allowed, listen addresses
that name their port, a port in use refused instead of shared, and private (0600) store and
keys files, including SQLite's -wal and -shm side files.

Real servers and real `ndop` processes on loopback; only synthetic 999-range numbers. File
modes are read from st_mode: the tests run as root, for whom access checks always pass.
"""

from __future__ import annotations

import json
import queue
import signal
import sqlite3
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ndop_server.errors import ConfigurationError
from ndop_server.listen import is_loopback, parse_listen
from ndop_server.server import RunningServer, start_server
from ndop_server.synthetic import valid_numbers
from tests.conftest import Register, write_numbers
from tests.test_tls import NDOP, cli_env, one_sentence

STARTUP_SECONDS = 30.0
SIDE_FILES = ("-wal", "-shm")


# --- helpers -----------------------------------------------------------------------------------


def ndop(root: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """`ndop ARGS` with umask 0, so a file is private only because ndop asked for 0600."""
    return subprocess.run(
        [*NDOP, *map(str, args)],
        cwd=root,
        env=cli_env(root),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        umask=0,
    )


def serve_args(register: Register, listen: str, *extra: str) -> list[str | Path]:
    return [
        "serve",
        "--store",
        register.store_path,
        "--keys",
        register.keys_path,
        "--listen",
        listen,
        *extra,
    ]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_private(path: Path) -> None:
    assert path.exists(), path
    assert mode(path) == 0o600, (path, oct(mode(path)))


@dataclass
class Served:
    """An `ndop serve` process and its JSON log events so far."""

    process: subprocess.Popen[str]
    events: list[dict[str, Any]] = field(default_factory=list)
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def wait_for(self, event: str) -> dict[str, Any]:
        deadline = time.monotonic() + STARTUP_SECONDS
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            try:
                record: dict[str, Any] = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.events.append(record)
            if record.get("event") == event:
                return record
        pytest.fail(f"no {event} log line; exit {self.process.poll()}, events {self.events}")

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=STARTUP_SECONDS)


@contextmanager
def serving(root: Path, *args: str | Path) -> Iterator[Served]:
    process = subprocess.Popen(
        [*NDOP, *map(str, args), "--log-format", "json"],
        cwd=root,
        env=cli_env(root),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        umask=0,
    )
    served = Served(process)

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            served.lines.put(line)
        served.lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield served
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=STARTUP_SECONDS)
        reader.join(timeout=STARTUP_SECONDS)


def health_status(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
    return int(reply.status)


@pytest.fixture
def running(register: Register) -> Iterator[RunningServer]:
    server = start_server(
        register.store_path, register.keys, "127.0.0.1:0", tls=None, insecure=True
    )
    try:
        yield server
    finally:
        server.stop(grace=1)


# --- plaintext only on loopback ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
        ("10.0.0.5", False),
        ("fe80::1", False),
        ("128.0.0.1", False),
        ("localhost.example.org", False),
        ("ndop-server", False),
    ],
)
def test_loopback_is_127_0_0_0_8_and_ipv6_1_and_localhost(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0"])
def test_serve_insecure_refuses_an_address_beyond_loopback(
    register: Register, tmp_path: Path, listen: str
) -> None:
    result = ndop(tmp_path, *serve_args(register, listen, "--insecure"))
    assert result.returncode == 2, (result.returncode, result.stderr)
    line = one_sentence(result.stderr)
    assert "loopback" in line and "--insecure-any-address" in line, line


def test_serve_insecure_any_address_listens_warns_and_stops_on_sigterm(
    register: Register, tmp_path: Path
) -> None:
    args = serve_args(register, "0.0.0.0:0", "--insecure", "--insecure-any-address")
    with serving(tmp_path, *args) as served:
        started = served.wait_for("server.started")
        warnings = [e for e in served.events if e.get("event") == "server.insecure_non_loopback"]
        assert len(warnings) == 1 and warnings[0]["level"] == "warning", served.events
        assert health_status(int(started["port"])) == health_pb2.HealthCheckResponse.SERVING
        assert served.terminate() == 0


def test_insecure_any_address_without_insecure_is_refused(
    register: Register, tmp_path: Path
) -> None:
    result = ndop(tmp_path, *serve_args(register, "127.0.0.1:0", "--insecure-any-address"))
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "--insecure-any-address only goes with --insecure" in one_sentence(result.stderr)


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0", "ndop-server:0"])
def test_start_server_refuses_plaintext_beyond_loopback(register: Register, listen: str) -> None:
    with pytest.raises(ConfigurationError, match="--insecure-any-address"):
        start_server(register.store_path, register.keys, listen, tls=None, insecure=True)


def test_start_server_allows_plaintext_beyond_loopback_when_asked(register: Register) -> None:
    server = start_server(
        register.store_path,
        register.keys,
        "0.0.0.0:0",
        tls=None,
        insecure=True,
        allow_insecure_non_loopback=True,
    )
    try:
        assert health_status(server.port) == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(grace=1)


# --- listen addresses --------------------------------------------------------------------------


def test_serve_listen_without_a_port_is_refused(register: Register, tmp_path: Path) -> None:
    result = ndop(tmp_path, *serve_args(register, "127.0.0.1", "--insecure"))
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "needs a port" in one_sentence(result.stderr)


@pytest.mark.parametrize(
    "listen",
    [
        "127.0.0.1",
        "[::1]",
        "::1",
        "127.0.0.1:",
        ":8443",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "127.0.0.1:https",
        "127.0.0.1: 8443",
        "[::1]8443",
    ],
)
def test_listen_addresses_without_a_valid_port_or_host_are_refused(listen: str) -> None:
    with pytest.raises(ConfigurationError, match="listen address"):
        parse_listen(listen)


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("localhost:65535", ("localhost", 65535)),
        ("[::1]:8443", ("::1", 8443)),
        ("[::]:443", ("::", 443)),
        ("0.0.0.0:8443", ("0.0.0.0", 8443)),
    ],
)
def test_listen_addresses_parse_into_host_and_port(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


# --- a port in use -----------------------------------------------------------------------------


def test_second_server_on_a_port_in_use_exits_2_with_one_sentence(
    register: Register, running: RunningServer, tmp_path: Path
) -> None:
    listen = f"127.0.0.1:{running.port}"
    result = ndop(tmp_path, *serve_args(register, listen, "--insecure"))
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert one_sentence(result.stderr) == (
        f"ndop: cannot listen on {listen}: the address is already in use"
    )


def test_start_server_on_a_port_in_use_raises(register: Register, running: RunningServer) -> None:
    listen = f"127.0.0.1:{running.port}"
    with pytest.raises(ConfigurationError) as raised:
        start_server(register.store_path, register.keys, listen, tls=None, insecure=True)
    assert str(raised.value) == f"cannot listen on {listen}: the address is already in use"


def test_a_running_server_does_not_share_its_port_even_with_so_reuseport(
    running: RunningServer,
) -> None:
    # grpc's defaults turn SO_REUSEPORT on; the port can be shared only if both sockets did.
    other = grpc.server(ThreadPoolExecutor(max_workers=1))
    try:
        try:
            bound = other.add_insecure_port(f"127.0.0.1:{running.port}")
        except RuntimeError:
            bound = 0
        assert bound == 0
    finally:
        other.stop(None)


# --- private files -----------------------------------------------------------------------------


def load_register(root: Path) -> tuple[Path, Path]:
    """`ndop keys init` and `ndop register load` into `root`; (keys path, store path)."""
    keys_path, store_path = root / "keys.json", root / "register.sqlite3"
    snapshot = write_numbers(root / "snapshot.dat", valid_numbers(200, "999", seed=5))
    made = ndop(root, "keys", "init", "--keys", keys_path)
    assert made.returncode == 0, made.stderr
    loaded = ndop(
        root,
        "register",
        "load",
        snapshot,
        "--store",
        store_path,
        "--keys",
        keys_path,
        "--workers",
        "1",
        "--log-format",
        "json",
    )
    assert loaded.returncode == 0, loaded.stderr
    return keys_path, store_path


def side_files(store_path: Path) -> list[Path]:
    return [store_path.with_name(store_path.name + suffix) for suffix in SIDE_FILES]


def test_keys_file_is_0600(tmp_path: Path) -> None:
    keys_path = tmp_path / "keys.json"
    made = ndop(tmp_path, "keys", "init", "--keys", keys_path)
    assert made.returncode == 0, made.stderr
    assert_private(keys_path)


def test_store_and_its_side_files_are_0600_after_register_load(tmp_path: Path) -> None:
    _, store_path = load_register(tmp_path)
    assert_private(store_path)
    for leftover in side_files(store_path):
        if leftover.exists():
            assert_private(leftover)
    # SQLite removes -wal and -shm when the last connection closes; a reader brings them back.
    reader = sqlite3.connect(store_path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM versions").fetchone() == (1,)
        for side in side_files(store_path):
            assert_private(side)
        reader.execute("COMMIT")
    finally:
        reader.close()


def test_store_and_its_side_files_are_0600_while_and_after_a_server_runs(
    tmp_path: Path,
) -> None:
    keys_path, store_path = load_register(tmp_path)
    args: list[str | Path] = [
        "serve",
        "--store",
        store_path,
        "--keys",
        keys_path,
        "--listen",
        "127.0.0.1:0",
        "--insecure",
    ]
    with serving(tmp_path, *args) as served:
        started = served.wait_for("server.started")
        assert health_status(int(started["port"])) == health_pb2.HealthCheckResponse.SERVING
        for path in (store_path, *side_files(store_path)):
            assert_private(path)
        assert served.terminate() == 0
    assert_private(store_path)
    for leftover in side_files(store_path):
        if leftover.exists():
            assert_private(leftover)
