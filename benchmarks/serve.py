"""`ndop serve` as a subprocess: start it, wait until it answers, measure it, stop it."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from benchmarks.measure import BenchmarkFailed, process_cpu_seconds, process_memory, start, tail
from ndop_client import Client, RegisterInfo, ServerUnavailable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerProcess:
    """One `ndop serve --insecure` on 127.0.0.1, always stopped with SIGTERM by `stop`."""

    def __init__(
        self,
        ndop: Sequence[str],
        store: Path,
        keys: Path,
        log: Path,
        token: str,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.token = token
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = log
        self._command = [
            *ndop,
            "serve",
            "--store",
            str(store),
            "--keys",
            str(keys),
            "--listen",
            self.address,
            "--insecure",
            "--log-format",
            "json",
        ]
        self._env = env
        self._process: subprocess.Popen[bytes] | None = None
        self.stop_seconds: float | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the server has not been started")
        return self._process.pid

    def start(self, timeout: float = 600.0) -> tuple[float, RegisterInfo]:
        """Start the server; seconds until it answers GetRegisterInfo, and what it answered."""
        started = time.perf_counter()
        self._process = start(self._command, self.log, self._env)
        while True:
            if self._process.poll() is not None:
                raise BenchmarkFailed(
                    f"ndop serve exited {self._process.returncode} while starting; "
                    f"last lines of {self.log}:\n{tail(self.log)}"
                )
            # A fresh channel per attempt: a channel that failed to connect backs off for a
            # second or more, which would be counted as start time. Only "unreachable" means
            # "not up yet"; any other refusal is a failure.
            try:
                with Client(self.address, insecure=True, token=self.token, timeout=5.0) as client:
                    info = client.info()
                return time.perf_counter() - started, info
            except ServerUnavailable:
                pass
            if time.perf_counter() - started > timeout:
                raise BenchmarkFailed(f"ndop serve did not answer within {timeout:.0f} s")
            time.sleep(0.02)

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def require_alive(self) -> None:
        if not self.alive():
            code = self._process.returncode if self._process else None
            raise BenchmarkFailed(
                f"ndop serve is no longer running (exit {code}); last lines of {self.log}:\n"
                f"{tail(self.log)}"
            )

    def memory(self) -> dict[str, int]:
        self.require_alive()
        return process_memory(self.pid)

    def cpu_seconds(self) -> float:
        self.require_alive()
        return process_cpu_seconds(self.pid)

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM, wait for a graceful exit, SIGKILL only if it does not come."""
        process = self._process
        if process is None or process.poll() is not None:
            return process.returncode if process else None
        began = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        self.stop_seconds = time.perf_counter() - began
        return code
