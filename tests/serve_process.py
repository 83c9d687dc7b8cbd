"""`ndop serve` as a real process: started with JSON logs on a free loopback port, found by
its `server.started` line, stopped with SIGTERM. Tests (and benchmarks) that need a server
in another process use this, not a copy of it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NDOP = [sys.executable, "-m", "ndop_client"]
START_SECONDS = 60.0


@dataclass
class ServeProcess:
    process: subprocess.Popen[str]
    address: str
    started: dict[str, Any]

    def rest_of_log(self) -> str:
        """Everything logged after `server.started`, once the process has ended."""
        assert self.process.stderr is not None
        return self.process.stderr.read()

    def keep_reading_log(self) -> None:
        """Drain the log in the background, so a long-running server never blocks on it."""
        assert self.process.stderr is not None
        threading.Thread(target=self.process.stderr.read, daemon=True).start()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_serve(
    store: str | Path,
    keys: Path,
    *options: str,
    environment: Mapping[str, str] | None = None,
) -> ServeProcess:
    """`ndop serve --store STORE --keys KEYS --listen 127.0.0.1:0 --insecure OPTIONS...`."""
    command = [*NDOP, "serve", "--store", str(store), "--keys", str(keys)]
    command += ["--listen", "127.0.0.1:0", "--insecure", "--log-format", "json", *options]
    return watch_serve(
        subprocess.Popen(
            command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=environment
        )
    )


def watch_serve(process: subprocess.Popen[str]) -> ServeProcess:
    """Wait for a started `ndop serve` process to say where it listens."""
    assert process.stderr is not None
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        seen.append(json.loads(line))
        if seen[-1]["event"] == "server.started":
            return ServeProcess(process, f"127.0.0.1:{seen[-1]['port']}", seen[-1])
    process.kill()
    raise AssertionError(f"ndop serve did not start: {seen}")
