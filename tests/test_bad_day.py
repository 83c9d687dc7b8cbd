"""The client on a bad day, with real processes and real signals: a plain script without a
`__main__` guard, worker processes that die with `ndop check`, `register load` and
`register apply` whatever kills them, a server frozen with SIGSTOP, TLS set up wrong, and a
missing token. Each failure is one sentence with the right exit code.

Only synthetic 999-range numbers are used.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ndop_core.worker_pool import WorkerFailed, WorkerPool
from ndop_server.server import RunningServer
from ndop_server.synthetic import valid_numbers
from tests.conftest import Register, write_numbers

NDOP = [sys.executable, "-m", "ndop_client"]
PURPOSE = ("--purpose", "research")


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(condition: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def one_sentence(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ndop: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


# --- worker pool ---------------------------------------------------------------------------------


def test_a_killed_worker_is_one_sentence_and_the_pool_refuses_more() -> None:
    pool = WorkerPool(1)
    try:
        assert pool.submit(pow, 2, 10).result(timeout=30) == 1024
        (pid,) = pool.pids
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerFailed, match="killed by signal 9"):
            pool.submit(pow, 2, 3).result(timeout=30)
        with pytest.raises(WorkerFailed):
            pool.submit(pow, 2, 3).result(timeout=30)
    finally:
        pool.shutdown()


def test_worker_exceptions_come_back_as_they_were() -> None:
    with WorkerPool(2) as pool:
        with pytest.raises(ZeroDivisionError):
            pool.submit(divmod, 1, 0).result(timeout=30)
        assert list(pool.map(divmod, [7, 9], [2, 4])) == [(3, 1), (2, 1)]


def test_a_plain_script_without_a_main_guard_checks_in_private_mode(
    register: Register, server: RunningServer, address: str, token: str, tmp_path: Path
) -> None:
    script = tmp_path / "plain.py"
    opted = [f"{int(v):010d}" for v in register.opted_out[:20]]
    kept = [f"{int(v):010d}" for v in register.not_opted_out[:30]]
    script.write_text(
        textwrap.dedent(
            f"""
            import ndop_client
            client = ndop_client.Client({address!r}, insecure=True, purpose="research",
                                        workers=2, cache_dir={str(tmp_path / "cache")!r})
            result = client.check({opted + kept!r})
            print(result.tally.opted_out_rows, result.tally.cleared)
            client.close()
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["20", "30"]
    assert "Traceback" not in done.stderr


# --- workers die with their parent ---------------------------------------------------------------


def _busy_then_killed(
    command: list[str], cwd: Path, sig: signal.Signals, env: dict[str, str]
) -> None:
    """Start `command`, wait until it has worker processes, send `sig`, and require every worker
    to be gone within seconds."""
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        assert wait_for(lambda: len(children_of(process.pid)) >= 2, 60), "no workers started"
        time.sleep(0.5)
        workers = children_of(process.pid)
        assert process.poll() is None, "finished before it could be killed; make it bigger"
        process.send_signal(sig)
        process.wait(timeout=30)
        assert wait_for(lambda: not any(alive(pid) for pid in workers), 10), (
            f"workers outlived their parent after {sig.name}: "
            f"{[pid for pid in workers if alive(pid)]}"
        )
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_ndop_check_workers_die_with_it(
    register: Register, server: RunningServer, address: str, tmp_path: Path, sig: signal.Signals
) -> None:
    cohort = write_numbers(tmp_path / "big.dat", valid_numbers(150_000, "999", seed=5))
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    command = [*NDOP, "check", str(cohort), "--server", address, "--insecure", *PURPOSE]
    command += ["--out", str(tmp_path / "out.dat"), "--workers", "2"]
    _busy_then_killed(command, tmp_path, sig, env)
    assert not (tmp_path / "out.dat").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("action", "sig"),
    [("load", signal.SIGTERM), ("load", signal.SIGKILL), ("apply", signal.SIGTERM)],
)
def test_register_workers_die_with_it(
    register: Register, tmp_path: Path, action: str, sig: signal.Signals
) -> None:
    numbers = write_numbers(tmp_path / "many.dat", valid_numbers(120_000, "999", seed=6))
    store = ["--store", str(register.store_path), "--keys", str(register.keys_path)]
    if action == "load":
        command = [*NDOP, "register", "load", str(numbers), *store, "--workers", "2"]
    else:
        command = [*NDOP, "register", "apply", "--add", str(numbers), *store, "--workers", "2"]
    _busy_then_killed(command, tmp_path, sig, dict(os.environ))


# --- a frozen server ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def frozen_server(register: Register, token: str, tmp_path: Path) -> Iterator[str]:
    """An `ndop serve` process, stopped with SIGSTOP once it answers."""
    port = _free_port()
    command: list[str | Path] = [*NDOP, "serve", "--store", register.store_path]
    command += ["--keys", register.keys_path, "--listen", f"127.0.0.1:{port}", "--insecure"]
    serve = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = f"127.0.0.1:{port}"
    try:
        assert wait_for(lambda: _answers(address, tmp_path), 30), "ndop serve never answered"
        serve.send_signal(signal.SIGSTOP)
        yield address
    finally:
        serve.kill()
        serve.wait(timeout=30)


def _answers(address: str, tmp_path: Path) -> bool:
    command: list[str | Path] = [*NDOP, "check", "-", "--server", address, "--insecure"]
    command += [*PURPOSE, "--out", "-", "--receipt", tmp_path / "ready.receipt.json"]
    done = subprocess.run(
        [*command, "--mode", "hashed"],
        input=b"",
        capture_output=True,
        timeout=60,
        check=False,
    )
    return done.returncode == 0


@pytest.mark.parametrize("mode", ["hashed", "private"])
def test_a_frozen_server_ends_the_check_with_one_sentence(
    register: Register, frozen_server: str, tmp_path: Path, mode: str
) -> None:
    cohort = write_numbers(tmp_path / "c.dat", register.not_opted_out[:10])
    started = time.monotonic()
    command: list[str | Path] = [*NDOP, "check", cohort, "--server", frozen_server]
    command += ["--insecure", *PURPOSE, "--out", tmp_path / "out.dat", "--mode", mode]
    done = subprocess.run(
        [*command, "--stall-timeout", "3"],
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    took = time.monotonic() - started
    assert done.returncode == 3, done.stderr
    line = one_sentence(done.stderr)
    assert "did not answer within 3 s" in line or "stopped answering" in line
    assert took < 20, f"took {took:.1f} s"
    assert not (tmp_path / "out.dat").exists()


def test_a_server_frozen_mid_check_ends_it_with_one_sentence(
    register: Register, server: RunningServer, address: str, token: str, tmp_path: Path
) -> None:
    """A relay that stops passing answers on after the first batch: the stall deadline, not
    the unary timeout, ends the check."""
    from ndop_client import Client, ServerUnavailable
    from tests.relay import Hooks, relay

    frozen = {"after": 1}

    def freeze(response: object) -> None:
        frozen["after"] -= 1
        if frozen["after"] < 0:
            time.sleep(8)

    numbers = [f"{int(v):010d}" for v in valid_numbers(70_000, "999", seed=9)]
    metadata = (("authorization", f"Bearer {token}"),)
    with (
        relay(address, metadata, Hooks(hashed=freeze)) as relayed,
        Client(relayed, insecure=True, purpose="research", stall_timeout=2) as client,
    ):
        started = time.monotonic()
        with pytest.raises(ServerUnavailable, match="stopped answering during the check"):
            client.check(numbers, mode="hashed")
        assert time.monotonic() - started < 15


# --- TLS and credentials -------------------------------------------------------------------------


def test_a_tls_client_on_a_plaintext_server_is_told_to_use_insecure(
    server: RunningServer, address: str, tmp_path: Path
) -> None:
    cohort = write_numbers(tmp_path / "c.dat", [9990000018])
    done = subprocess.run(
        [*NDOP, "check", str(cohort), "--server", address, *PURPOSE, "--out", "o.dat"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3
    line = one_sentence(done.stderr)
    assert "does not speak TLS" in line and "--insecure" in line


def test_an_unknown_ca_is_told_to_use_ca_file(register: Register, tmp_path: Path) -> None:
    from ndop_server.server import ServerTls, start_server

    made = subprocess.run(
        [*NDOP, "dev-certs", str(tmp_path / "certs"), "--org", "x"],
        capture_output=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    running = start_server(
        register.store_path,
        register.keys,
        "127.0.0.1:0",
        tls=ServerTls(tmp_path / "certs" / "server.pem", tmp_path / "certs" / "server-key.pem"),
    )
    try:
        cohort = write_numbers(tmp_path / "c.dat", [9990000018])
        args = [*NDOP, "check", str(cohort), "--server", f"127.0.0.1:{running.port}", *PURPOSE]
        done = subprocess.run(
            [*args, "--out", "o.dat"], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        plain = subprocess.run(
            [*args, "--out", "o.dat", "--insecure"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        running.stop(grace=1)
    assert done.returncode == 3
    line = one_sentence(done.stderr)
    assert "not signed by a CA this client trusts" in line and "--ca-file" in line
    assert "OPENSSL" not in line and "SSL_ERROR" not in line
    assert plain.returncode == 3
    assert "leave out --insecure" in one_sentence(plain.stderr)


def test_a_missing_token_names_token_and_ndop_token(
    server: RunningServer, address: str, tmp_path: Path
) -> None:
    cohort = write_numbers(tmp_path / "c.dat", [9990000018])
    env = {k: v for k, v in os.environ.items() if k != "NDOP_TOKEN"}
    done = subprocess.run(
        [*NDOP, "check", str(cohort), "--server", address, "--insecure", *PURPOSE, "--out", "o"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3
    line = one_sentence(done.stderr)
    assert "NDOP_TOKEN" in line and "--token" in line


def test_a_private_check_leaves_nothing_in_the_temporary_directory(
    register: Register, server: RunningServer, address: str, tmp_path: Path
) -> None:
    """rbcl copies its 2.8 MB libsodium into TMPDIR in every process that imports it; ndop
    removes the copy once loaded, in the command and in each worker, or every check would
    leave three behind until the disk filled."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    cohort = write_numbers(tmp_path / "c.dat", register.not_opted_out[:50])
    env = {**os.environ, "TMPDIR": str(scratch), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    command = [*NDOP, "check", str(cohort), "--server", address, "--insecure", *PURPOSE]
    done = subprocess.run(
        [*command, "--out", str(tmp_path / "out.dat"), "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in scratch.iterdir()) == []
