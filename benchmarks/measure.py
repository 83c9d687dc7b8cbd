"""Measuring subprocesses: wall time, CPU time, resident memory; and describing the machine."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import psutil

MB = 1024 * 1024
RESULTS_DIR = Path(__file__).resolve().parent / "results"
"""Where the benchmarks write their JSON results by default (--out)."""

_began = time.perf_counter()


class BenchmarkFailed(Exception):
    """A step failed or gave a wrong answer: the figures of this run must not be used."""


def say(message: str) -> None:
    """A progress line, stamped with the seconds since the benchmark began."""
    print(f"[{time.perf_counter() - _began:7.1f} s] {message}", flush=True)


def ndop_command() -> list[str]:
    """The `ndop` console script of this environment, else the module behind it."""
    script = Path(sys.executable).with_name("ndop")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "ndop_client.cli.main"]


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def children_cpu_seconds() -> float:
    """CPU time of every descendant of this process that has been waited for, so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return float(usage.ru_utime + usage.ru_stime)


def tree_rss(process: Any) -> int:
    """Resident bytes of a process and all its descendants (0 once it has gone)."""
    total = 0
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0
    for member in members:
        try:
            total += int(member.memory_info().rss)
        except psutil.Error:
            continue
    return total


class PeakSampler:
    """Samples the resident memory of a process tree in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self._process = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, tree_rss(self._process))
            if self._stop.wait(self._interval):
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


@dataclass
class Timed:
    """One finished command: wall seconds, CPU seconds of its whole tree, peak tree RSS."""

    command: list[str]
    seconds: float
    cpu_seconds: float
    peak_rss: int
    returncode: int
    log: Path
    started_at: datetime
    """Wall-clock (UTC) time of the start, to line up with the command's own log timestamps."""

    @property
    def cores_used(self) -> float:
        return self.cpu_seconds / self.seconds if self.seconds else 0.0


def start(
    command: Sequence[str], log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    handle: IO[bytes] = open(log, "wb")  # noqa: SIM115 - closed by the child's end below
    try:
        return subprocess.Popen(
            list(command),
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
        )
    finally:
        handle.close()


def run_timed(
    command: Sequence[str],
    log: Path,
    env: Mapping[str, str] | None = None,
    *,
    check: bool = True,
) -> Timed:
    """Run a command to the end, measuring it; a non-zero exit raises BenchmarkFailed."""
    cpu_before = children_cpu_seconds()
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    process = start(command, log, env)
    sampler = PeakSampler(process.pid)
    returncode = process.wait()
    seconds = time.perf_counter() - started
    peak = sampler.stop()
    timed = Timed(
        list(command),
        seconds,
        children_cpu_seconds() - cpu_before,
        peak,
        returncode,
        log,
        started_at,
    )
    if check and returncode != 0:
        raise BenchmarkFailed(
            f"{' '.join(command[-8:])} exited {returncode}; last lines of {log}:\n{tail(log)}"
        )
    return timed


def process_memory(pid: int) -> dict[str, int]:
    """RSS, USS (when the platform gives it) and peak RSS (VmHWM) of one process, in bytes."""
    process = psutil.Process(pid)
    figures: dict[str, int] = {}
    try:
        full = process.memory_full_info()
        figures["rss"] = int(full.rss)
        if hasattr(full, "uss"):
            figures["uss"] = int(full.uss)
    except psutil.AccessDenied:
        figures["rss"] = int(process.memory_info().rss)
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                figures["peak_rss"] = int(line.split()[1]) * 1024
    return figures


def process_cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def byte_compile_ndop() -> int:
    """Byte-compile ndop's own modules, as `pip install` does for an installed package: a
    development checkout run with PYTHONDONTWRITEBYTECODE (or a fresh one) would otherwise
    compile them from source at every start, some 30 ms a command, which is not what a user's
    installation does. How many packages were compiled."""
    import compileall
    import importlib

    packages = ("ndop_core", "ndop_client", "ndop_server")
    for name in packages:
        for directory in importlib.import_module(name).__path__:
            if not compileall.compile_dir(directory, quiet=1):
                raise RuntimeError(f"cannot byte-compile {directory}")
    return len(packages)


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    versions: dict[str, str] = {}
    for package in (
        "ndop",
        "grpcio",
        "protobuf",
        "numpy",
        "rbcl",
        "pybloom-live",
        "openmined.psi",
        "psutil",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_bytes": int(psutil.virtual_memory().total),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "packages": versions,
    }


def server_events(log: Path, event: str) -> list[dict[str, Any]]:
    """JSON log lines of one event from a server started with --log-format json."""
    found: list[dict[str, Any]] = []
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return found
    for line in lines:
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            found.append(record)
    return found


def _busy_and_steal() -> tuple[float, float]:
    times = psutil.cpu_times()
    busy = sum(
        float(getattr(times, name, 0.0)) for name in ("user", "nice", "system", "irq", "softirq")
    )
    return busy, float(getattr(times, "steal", 0.0))


@dataclass
class CpuUsage:
    """CPU seconds over one step: this benchmark's processes, and the whole machine's."""

    ours: float
    busy: float
    steal: float

    @property
    def others(self) -> float:
        """CPU seconds other processes on the machine used meanwhile (they slow the step)."""
        return max(self.busy - self.ours, 0.0)

    def as_dict(self) -> dict[str, float]:
        return {
            "ours": self.ours,
            "machine_busy": self.busy,
            "others": self.others,
            "steal": self.steal,
        }

    def note(self, seconds: float) -> str:
        """A warning for the table when other processes took a noticeable share of the CPUs."""
        limit = max(0.1 * seconds, 0.25)
        if self.others > limit or self.steal > limit:
            return f"other load {self.others:.1f} cpu-s, steal {self.steal:.1f} s: figure disturbed"
        return ""


class CpuWatch:
    """Measures one step's CPU: this process, its waited-for children, and a running server."""

    def __init__(self, server_pid: int | None = None) -> None:
        self._server_pid = server_pid
        self._own = self._own_seconds()
        self._children = children_cpu_seconds()
        self._server = process_cpu_seconds(server_pid) if server_pid else 0.0
        self._busy, self._steal = _busy_and_steal()

    @staticmethod
    def _own_seconds() -> float:
        times = psutil.Process().cpu_times()
        return float(times.user + times.system)

    def stop(self) -> CpuUsage:
        busy, steal = _busy_and_steal()
        ours = (self._own_seconds() - self._own) + (children_cpu_seconds() - self._children)
        if self._server_pid:
            with contextlib.suppress(psutil.Error):
                ours += process_cpu_seconds(self._server_pid) - self._server
        return CpuUsage(ours, busy - self._busy, steal - self._steal)


def wait_for_quiet(limit_seconds: float, threshold_percent: float = 20.0) -> tuple[float, float]:
    """Wait (at most `limit_seconds`) until the machine's CPUs are mostly idle, so that a step
    does not start while other work (a test run, a build) is using them. Returns the busy
    percentage last seen and the seconds waited."""
    began = time.monotonic()
    busy = float(psutil.cpu_percent(interval=0.5))
    while busy >= threshold_percent and time.monotonic() - began < limit_seconds:
        busy = float(psutil.cpu_percent(interval=1.0))
    return busy, time.monotonic() - began
