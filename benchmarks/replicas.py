"""Checks per second with 1, 2 and 3 `ndop serve` replicas on one PostgreSQL store, with K
concurrent clients: `python -m benchmarks.replicas [--register N] [--cohort N] [--clients K]
[--seconds S] [--mode hashed|private]`.

Everything runs on this machine: the PostgreSQL server (started by the benchmark, as the tests
start it), the replicas and the clients share its cores, so the figure shows how throughput
holds as replicas are added on one machine, and the per-core costs it prints are what
docs/scaling.md extrapolates from. Client i talks to replica i mod n. Each client checks the
same cohort of synthetic 9-range numbers over and over for S seconds and every answer is
checked against the known register members; a wrong answer fails the run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np

from benchmarks.generate import write_dat
from benchmarks.measure import RESULTS_DIR, BenchmarkFailed, machine, process_cpu_seconds
from ndop_client import Client, Status
from ndop_server import keys as keyfile
from ndop_server.accounts import Accounts, Limits
from ndop_server.audit_chain import audit_key
from ndop_server.register import Publisher
from ndop_server.store import Store
from ndop_server.synthetic import valid_numbers
from tests.postgres_server import PostgresServer
from tests.serve_process import ServeProcess, start_serve

UNLIMITED: Final = Limits(
    daily_quota=10**12, rate_per_second=0, daily_checks=10**9, daily_filter_downloads=10**6
)
"""As benchmarks.changes has it; not imported from there, which the clients (spawned inside
the timed window, importing this module) would then import too."""


@dataclass
class Figure:
    replicas: int
    clients: int
    mode: str
    seconds: float
    checks: int
    numbers: int
    checks_per_second: float
    numbers_per_second: float
    server_cpu_seconds: float


def _start_replica(store: str, keys_path: Path) -> ServeProcess:
    replica = start_serve(store, keys_path, "--max-checks-per-org", "64", "--drain-seconds", "1")
    replica.keep_reading_log()
    return replica


def _client_loop(
    address: str,
    token: str,
    cohort: list[str],
    expected: list[Status],
    mode: str,
    seconds: float,
    cache: str,
    results: Any,
) -> None:
    checks = 0
    with Client(
        address, insecure=True, token=token, purpose="research", workers=1, cache_dir=cache
    ) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            result = client.check(cohort, mode=mode)  # type: ignore[arg-type]
            if result.statuses != expected:
                results.put(("wrong", address))
                return
            checks += 1
    results.put(("ok", checks))


def measure(
    store: str,
    keys_path: Path,
    token: str,
    replicas: int,
    clients: int,
    mode: str,
    seconds: float,
    cohort: list[str],
    expected: list[Status],
    work: Path,
) -> Figure:
    servers = [_start_replica(store, keys_path) for _ in range(replicas)]
    try:
        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        before = sum(process_cpu_seconds(s.process.pid) for s in servers)
        workers = [
            context.Process(
                target=_client_loop,
                args=(
                    servers[i % replicas].address,
                    token,
                    cohort,
                    expected,
                    mode,
                    seconds,
                    str(work / f"cache-{i}"),
                    results,
                ),
            )
            for i in range(clients)
        ]
        started = time.monotonic()
        for worker in workers:
            worker.start()
        outcomes = [results.get(timeout=seconds + 300) for _ in workers]
        elapsed = time.monotonic() - started
        for worker in workers:
            worker.join()
        used = sum(process_cpu_seconds(s.process.pid) for s in servers) - before
    finally:
        for server in servers:
            server.stop()
    if any(kind != "ok" for kind, _ in outcomes):
        raise BenchmarkFailed(f"a client got a wrong answer: {outcomes}")
    checks = sum(count for _, count in outcomes)
    return Figure(
        replicas,
        clients,
        mode,
        round(elapsed, 2),
        checks,
        checks * len(cohort),
        round(checks / elapsed, 2),
        round(checks * len(cohort) / elapsed),
        round(used, 2),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replicas")
    parser.add_argument("--register", type=int, default=200_000)
    parser.add_argument("--cohort", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--mode", choices=("hashed", "private"), default="hashed")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="ndop-replicas-"))
    postgres = PostgresServer()
    try:
        url = postgres.new_database()
        numbers = valid_numbers(args.register + args.cohort, "9", seed=5)
        register, others = numbers[: args.register], numbers[args.register :]
        members = args.cohort // 20
        cohort_values = np.concatenate([register[:members], others[: args.cohort - members]])
        cohort = [f"{int(v):010d}" for v in cohort_values]
        expected = [Status.OPTED_OUT] * members + [Status.CLEARED] * (args.cohort - members)
        keys_path = work / "keys.json"
        keys = keyfile.write_new(keys_path)
        snapshot = work / "register.dat"
        write_dat(snapshot, register)
        print(f"loading {args.register:,} entries into PostgreSQL", file=sys.stderr)
        with Store(url, create=True) as store:
            Publisher(store, keys).load_snapshot(snapshot)
        with Accounts(url, audit_key(keys.store_key)) as accounts:
            token = accounts.add("bench", UNLIMITED)
        figures = [
            measure(
                url,
                keys_path,
                token,
                n,
                args.clients,
                args.mode,
                args.seconds,
                cohort,
                expected,
                work,
            )
            for n in (1, 2, 3)
        ]
    finally:
        postgres.close()
    print(
        f"\n{args.mode} checks of {args.cohort:,} numbers against {args.register:,} entries, "
        f"{args.clients} concurrent clients, {args.seconds:g} s each, on "
        f"{os.cpu_count()} cores (PostgreSQL, replicas and clients on this one machine)\n"
    )
    print(f"{'replicas':>8} {'checks':>8} {'checks/s':>9} {'numbers/s':>11} {'server CPU-s':>13}")
    for f in figures:
        print(
            f"{f.replicas:>8} {f.checks:>8,} {f.checks_per_second:>9.2f} "
            f"{f.numbers_per_second:>11,} {f.server_cpu_seconds:>13.2f}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"replicas-{stamp}.json"
    path.write_text(
        json.dumps(
            {
                "machine": machine(),
                "arguments": vars(args) | {"out": str(args.out)},
                "figures": [asdict(f) for f in figures],
            },
            indent=2,
        )
    )
    print(f"\nresults -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
