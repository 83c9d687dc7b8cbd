"""Daily change sets against a large register, and what private-mode clients download for them:
`python -m benchmarks.changes [--full] [--register N] [--sizes 1000,10000,100000] [--workers W]
[--skip-oprf] [--skip-growth] [--out DIR] [--seed S] [--quiet-wait SECONDS] [--keep-work]`.

Everything comes from the 9 range (synthetic numbers never issued to patients):
1. `ndop keys init` and `ndop register load` of N numbers (subprocess, every core), with the
   publisher's own breakdown; then the OPRF alone on the same numbers, cores and batches
   (benchmarks.oprf_reference): load time over OPRF time is what everything else costs.
2. `ndop serve`; a client downloads the whole filter once, so its cache holds version 1.
3. For each size s: `ndop register apply --add (s new numbers) --remove (s members)`, timed with
   its breakdown (reading, evaluating, index, filter, writing); the version's delta beside its
   whole filter and beside the floor no exact delta of its flipped bits can go below
   (delta_floor_bytes); the client brings its cached filter up to date (delta download, apply,
   SHA-256 check, save) and, for comparison, downloads the whole filter into an empty cache; a
   private check of a sample (added, withdrawn and unchanged numbers) answered from the updated
   cache must be exactly right.
4. The last change set applied again: nothing changes, and nothing may be published.
5. Growth past the filter's capacity band (additions only): the filter is rebuilt whole.

A wrong answer stops the run with BENCHMARK FAILED (exit 1) and a JSON with "status": "failed".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import grpc
import numpy as np

from benchmarks import oprf_reference
from benchmarks.generate import DATA_DIR, DEFAULT_SEED, write_dat
from benchmarks.measure import (
    RESULTS_DIR,
    BenchmarkFailed,
    CpuWatch,
    Timed,
    machine,
    ndop_command,
    run_timed,
    say,
    server_events,
    wait_for_quiet,
)
from benchmarks.serve import ServerProcess
from ndop_client import Client, Status
from ndop_client.filter_cache import fetch_filter
from ndop_core import filter_delta
from ndop_core.filter import FilterParameters
from ndop_core.proto import ndop_pb2, ndop_pb2_grpc
from ndop_server import keys as keyfile
from ndop_server.accounts import Accounts, Limits
from ndop_server.audit_chain import audit_key
from ndop_server.filter_builder import slack
from ndop_server.register import STAGES
from ndop_server.store import DELTA_ARTIFACT, FILTER_ARTIFACT, Store
from ndop_server.synthetic import valid_numbers

QUICK: Final[tuple[int, tuple[int, ...]]] = (200_000, (1_000, 10_000))
FULL: Final[tuple[int, tuple[int, ...]]] = (3_500_000, (1_000, 10_000, 100_000))
UNLIMITED: Final = Limits(
    daily_quota=10**12, rate_per_second=0, daily_checks=10**9, daily_filter_downloads=10**6
)
SAMPLE: Final = 200
TARGET_APPLY_SECONDS: Final = 10.0
TARGET_DELTA_SHARE: Final = 0.02
TARGET_LOAD_RATIO: Final = 1.2


def log2_binomial(m: int, d: int) -> float:
    """log2 C(m, d), the bits it takes to name one d-subset of m things (math.lgamma, so that
    m may be a filter's hundreds of millions of bits)."""
    if not 0 <= d <= m:
        raise ValueError(f"no {d}-subsets of {m} things")
    return (math.lgamma(m + 1) - math.lgamma(d + 1) - math.lgamma(m - d + 1)) / math.log(2)


def delta_floor_bytes(filter_bits: int, flipped_bits: int) -> int:
    """The fewest bytes an exact delta flipping `flipped_bits` of a filter's `filter_bits` bits
    can take, in the worst case and on average over flip sets (docs/protocol.md, "Filter
    deltas, exactly"): to anyone without the OPRF outputs the flipped positions are a random
    subset, and naming a d-subset of m bits takes log2 C(m, d) bits; so ceil(log2 C(m, d) / 8)
    bytes, plus the delta's fixed header (base digest, target header, n, r, h: 96 bytes)."""
    bits = log2_binomial(filter_bits, flipped_bits)
    nearest = round(bits)
    if abs(bits - nearest) <= 1e-9 * max(1.0, bits):  # an exact power of two, up to rounding
        bits = nearest
    return filter_delta.FIXED.size + math.ceil(bits / 8)


@dataclass
class ChangeFigure:
    size: int
    version: int
    apply_seconds: float
    stages: dict[str, float]
    filter_bytes: int
    delta_bytes: int | None
    filter_bits: int
    """m: the filter's bits (slices x bits per slice)."""
    flipped_bits: int | None
    """d: the bits the delta flips."""
    delta_floor_bytes: int | None
    """What no exact delta of d of m bits can go below: delta_floor_bytes(m, d)."""
    update_seconds: float
    update_received: int
    update_from: int | None
    whole_download_seconds: float
    disturbed: str


@dataclass
class Run:
    register: int
    sizes: list[int]
    workers: int
    figures: dict[str, Any] = field(default_factory=dict)
    changes: list[ChangeFigure] = field(default_factory=list)


@dataclass
class Data:
    register: np.ndarray
    adds: list[np.ndarray]
    removes: list[np.ndarray]
    growth: np.ndarray
    staying: np.ndarray
    """Up to SAMPLE members no change set withdraws, for the private checks of a sample."""


def make_data(register: int, sizes: Sequence[int], seed: int) -> Data:
    """Register members, and per change set new numbers and distinct members to withdraw."""
    growth = slack(register) + 1  # one more than a filter sized at load holds
    every = valid_numbers(register + sum(sizes) + growth, "9", seed)
    members = every[:register]
    rng = np.random.default_rng([seed, 12])
    leaving = members[rng.choice(register, size=sum(sizes), replace=False)]
    adds, removes, start, taken = [], [], register, 0
    for size in sizes:
        adds.append(every[start : start + size])
        removes.append(leaving[taken : taken + size])
        start += size
        taken += size
    staying = members[~np.isin(members, leaving)][:SAMPLE]
    return Data(members, adds, removes, every[start : start + growth], staying)


class ChangeBench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.ndop = ndop_command()
        self.store = work / "register.sqlite3"
        self.keys = work / "keys.json"
        self.workers = args.workers or os.cpu_count() or 1

    def quiet(self) -> None:
        if self.args.quiet_wait > 0:
            busy, waited = wait_for_quiet(self.args.quiet_wait)
            if waited > 1:
                say(f"  waited {waited:.0f} s for the CPUs to settle ({busy:.0f}% busy)")

    def run(self, run: Run, data: Data) -> None:
        self.load(run, data)
        token = self.organisation()
        server = ServerProcess(self.ndop, self.store, self.keys, self.work / "serve.log", token)
        server.start()
        try:
            channel = grpc.insecure_channel(server.address)
            stub = ndop_pb2_grpc.OptOutRegisterStub(channel)
            metadata = (("authorization", f"Bearer {token}"),)
            register_id = keyfile.load(self.keys).register_id
            cache = self.work / "cache"
            started = time.perf_counter()
            first = fetch_filter(stub, cache, register_id, 1, metadata)
            run.figures["first_download_seconds"] = time.perf_counter() - started
            run.figures["first_download_bytes"] = first.received
            say(f"client cached version 1's whole filter: {first.received:,} bytes")
            version = 1
            for position in range(len(run.sizes)):
                version += 1
                changed = self.change(stub, metadata, register_id, cache, data, position, version)
                run.changes.append(changed)
                self.check_sample(server, token, cache, data, position, version)
            self.reapply(data, len(run.sizes) - 1, version, run)
            if not self.args.skip_growth:
                self.grow(run, data, version + 1)
            channel.close()
        finally:
            server.stop()

    def load(self, run: Run, data: Data) -> None:
        snapshot = self.work / "register.dat"
        write_dat(snapshot, data.register)
        run_timed([*self.ndop, "keys", "init", "--keys", str(self.keys)], self.work / "keys.log")
        self.quiet()
        say(f"ndop register load: {len(data.register):,} numbers on {self.workers} workers")
        watch = CpuWatch()
        timed = run_timed(
            [*self.ndop, "register", "load", str(snapshot), *self.common(), "--log-format", "json"],
            self.work / "load.log",
        )
        disturbed = watch.stop().note(timed.seconds)
        stages = _stages(timed)
        run.figures["load"] = {
            "seconds": timed.seconds,
            "cpu_seconds": timed.cpu_seconds,
            "cores": timed.cores_used,
            "peak_rss": timed.peak_rss,
            "stages_seconds": stages,
            "disturbed": disturbed,
        }
        say(f"  {timed.seconds:.1f} s ({_stage_text(stages)}) {disturbed}")
        if self.args.skip_oprf:
            return
        self.quiet()
        say("the OPRF alone on the same numbers, cores and batches")
        watch = CpuWatch()
        oprf_key = keyfile.load(self.keys).oprf_key
        seconds = oprf_reference.seconds(oprf_key, data.register, self.workers)
        usage = watch.stop()
        oprf_disturbed = usage.note(seconds)
        run.figures["oprf_seconds"] = seconds
        run.figures["oprf_cpu_seconds"] = usage.ours
        run.figures["oprf_disturbed"] = oprf_disturbed
        run.figures["load_over_oprf"] = timed.seconds / seconds
        # CPU seconds hardly move when other processes share the machine; wall seconds do.
        run.figures["load_over_oprf_cpu"] = timed.cpu_seconds / usage.ours
        say(
            f"  {seconds:.1f} s: load / OPRF = {timed.seconds / seconds:.3f} wall, "
            f"{timed.cpu_seconds / usage.ours:.3f} CPU ({timed.cpu_seconds:.0f} / "
            f"{usage.ours:.0f} cpu-s) {oprf_disturbed}"
        )

    def common(self) -> list[str]:
        workers = ["--workers", str(self.args.workers)] if self.args.workers else []
        return ["--store", str(self.store), "--keys", str(self.keys), *workers]

    def organisation(self) -> str:
        keys = keyfile.load(self.keys)
        with Accounts(self.store, audit_key(keys.store_key)) as accounts:
            return accounts.add("benchmark", UNLIMITED)

    def apply(self, add: np.ndarray, remove: np.ndarray, name: str) -> Timed:
        paths = []
        for kind, values in (("add", add), ("remove", remove)):
            if len(values):
                path = self.work / f"{name}-{kind}.dat"
                write_dat(path, values)
                paths += [f"--{kind}", str(path)]
        return run_timed(
            [*self.ndop, "register", "apply", *paths, *self.common(), "--log-format", "json"],
            self.work / f"{name}.log",
        )

    def change(
        self,
        stub: ndop_pb2_grpc.OptOutRegisterStub,
        metadata: tuple[tuple[str, str], ...],
        register_id: str,
        cache: Path,
        data: Data,
        position: int,
        version: int,
    ) -> ChangeFigure:
        size = len(data.adds[position])
        self.quiet()
        say(f"ndop register apply: +{size:,} -{size:,}")
        watch = CpuWatch()
        timed = self.apply(data.adds[position], data.removes[position], f"change-{size}")
        disturbed = watch.stop().note(timed.seconds)
        stages = _stages(timed)
        with Store(self.store) as store:
            latest = store.latest()
            if latest is None or latest.version != version or latest.count != len(data.register):
                raise BenchmarkFailed(f"apply of {size:,} did not publish version {version}")
            whole = store.artifact(version, FILTER_ARTIFACT)
            delta = store.artifacts(DELTA_ARTIFACT, version, version).get(version)
        filter_bits = FilterParameters.from_header(whole).num_bits
        flipped, floor = None, None
        if delta is not None:
            flipped = len(filter_delta.decode(delta).flips)
            floor = delta_floor_bytes(filter_bits, flipped)
        say(
            f"  {timed.seconds:.2f} s ({_stage_text(stages)}); delta {_size(delta)} of "
            f"{len(whole):,} bytes"
            + ("" if floor is None else f" ({flipped:,} bits flipped, floor {floor:,} bytes)")
            + f" {disturbed}"
        )
        _wait_for_version(stub, metadata, register_id, version)
        started = time.perf_counter()
        updated = fetch_filter(stub, cache, register_id, version, metadata)
        update_seconds = time.perf_counter() - started
        if updated.path.read_bytes() != whole:
            raise BenchmarkFailed("the client's updated filter differs from the published one")
        started = time.perf_counter()
        fresh = fetch_filter(stub, self.work / f"fresh-{version}", register_id, version, metadata)
        whole_seconds = time.perf_counter() - started
        if fresh.received != len(whole):
            raise BenchmarkFailed("a client with an empty cache did not download the whole filter")
        say(
            f"  client update {update_seconds * 1000:.0f} ms for {updated.received:,} bytes "
            f"(from version {updated.delta_from}); whole download {whole_seconds * 1000:.0f} ms"
        )
        return ChangeFigure(
            size=size,
            version=version,
            apply_seconds=timed.seconds,
            stages=stages,
            filter_bytes=len(whole),
            delta_bytes=None if delta is None else len(delta),
            filter_bits=filter_bits,
            flipped_bits=flipped,
            delta_floor_bytes=floor,
            update_seconds=update_seconds,
            update_received=updated.received,
            update_from=updated.delta_from,
            whole_download_seconds=whole_seconds,
            disturbed=disturbed,
        )

    def check_sample(
        self,
        server: ServerProcess,
        token: str,
        cache: Path,
        data: Data,
        position: int,
        version: int,
    ) -> None:
        """A private check answered from the updated cache must be exactly right."""
        added = data.adds[position][:SAMPLE]
        withdrawn = data.removes[position][:SAMPLE]
        numbers = np.concatenate([added, withdrawn, data.staying])
        expected = [Status.OPTED_OUT] * len(added) + [Status.CLEARED] * len(withdrawn)
        expected += [Status.OPTED_OUT] * len(data.staying)
        with Client(
            server.address, insecure=True, token=token, purpose="research", cache_dir=cache
        ) as client:
            result = client.check([f"{v:010d}" for v in numbers.tolist()], mode="private")
        if result.register_version != version or list(result.statuses) != expected:
            raise BenchmarkFailed(f"a private check against version {version} answered wrongly")

    def reapply(self, data: Data, position: int, version: int, run: Run) -> None:
        say("the last change set again: nothing may be published")
        timed = self.apply(data.adds[position], data.removes[position], "again")
        with Store(self.store) as store:
            latest = store.latest()
        output = timed.log.read_text(errors="replace")
        if latest is None or latest.version != version or "nothing changed" not in output:
            raise BenchmarkFailed("a change set that changes nothing published a version")
        run.figures["unchanged_apply_seconds"] = timed.seconds
        say(f"  {timed.seconds:.2f} s, no version published")

    def grow(self, run: Run, data: Data, version: int) -> None:
        self.quiet()
        say(f"growth past the capacity band: +{len(data.growth):,} (the filter is rebuilt)")
        watch = CpuWatch()
        timed = self.apply(data.growth, np.empty(0, dtype=np.int64), "growth")
        disturbed = watch.stop().note(timed.seconds)
        with Store(self.store) as store:
            delta = store.artifacts(DELTA_ARTIFACT, version, version).get(version)
            latest = store.latest()
        if latest is None or latest.version != version or delta is not None:
            raise BenchmarkFailed("growth past the band should publish a version with no delta")
        stages = _stages(timed)
        run.figures["growth"] = {
            "added": len(data.growth),
            "seconds": timed.seconds,
            "stages_seconds": stages,
            "disturbed": disturbed,
        }
        say(f"  {timed.seconds:.2f} s ({_stage_text(stages)}) {disturbed}")


def _wait_for_version(
    stub: ndop_pb2_grpc.OptOutRegisterStub,
    metadata: tuple[tuple[str, str], ...],
    register_id: str,
    version: int,
    timeout: float = 60.0,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = stub.GetRegisterInfo(ndop_pb2.GetRegisterInfoRequest(), metadata=metadata)
        if info.register_id == register_id and info.version.number == version:
            return
        time.sleep(0.05)
    raise BenchmarkFailed(f"the server did not pick up version {version} within {timeout:.0f} s")


def _stages(timed: Timed) -> dict[str, float]:
    events = server_events(timed.log, "register.timings")
    if not events:
        return {}
    return {name: float(events[-1].get(f"{name}_seconds", 0.0)) for name in STAGES}


def _stage_text(stages: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.2f}" for name, seconds in stages.items())


def _size(delta: bytes | None) -> str:
    return "none" if delta is None else f"{len(delta):,}"


def table(run: Run) -> str:
    lines = [
        f"register {run.register:,} entries, {run.workers} workers",
        f"{'change set':>18} {'apply s':>8} {'filter B':>11} {'delta B':>9} {'delta %':>8} "
        f"{'floor B':>9} {'floor %':>8} {'/floor':>7} "
        f"{'update ms':>10} {'whole ms':>9}  breakdown (s)",
    ]
    for c in run.changes:
        share = f"{100 * c.delta_bytes / c.filter_bytes:.2f}" if c.delta_bytes else "-"
        floor, floor_share, over = "-", "-", "-"
        if c.delta_bytes and c.delta_floor_bytes:
            floor = format(c.delta_floor_bytes, ",")
            floor_share = f"{100 * c.delta_floor_bytes / c.filter_bytes:.2f}"
            over = f"{c.delta_bytes / c.delta_floor_bytes:.2f}x"
        lines.append(
            f"{'+' + format(c.size, ',') + ' -' + format(c.size, ','):>18} "
            f"{c.apply_seconds:8.2f} {c.filter_bytes:11,} {c.delta_bytes or 0:9,} {share:>8} "
            f"{floor:>9} {floor_share:>8} {over:>7} "
            f"{1000 * c.update_seconds:10.0f} {1000 * c.whole_download_seconds:9.0f}  "
            f"{_stage_text(c.stages)}{' ' + c.disturbed if c.disturbed else ''}"
        )
    load = run.figures.get("load")
    if load:
        ratio = run.figures.get("load_over_oprf")
        lines.append(
            f"load {load['seconds']:.1f} s ({_stage_text(load['stages_seconds'])})"
            + (
                f"; OPRF alone {run.figures['oprf_seconds']:.1f} s, ratio {ratio:.3f} "
                f"(CPU {run.figures['load_over_oprf_cpu']:.3f})"
                if ratio
                else ""
            )
        )
    if "growth" in run.figures:
        growth = run.figures["growth"]
        lines.append(f"growth +{growth['added']:,} past the band: {growth['seconds']:.1f} s")
    if "unchanged_apply_seconds" in run.figures:
        lines.append(
            f"unchanged change set: {run.figures['unchanged_apply_seconds']:.2f} s, "
            "nothing published"
        )
    return "\n".join(lines)


def targets(run: Run) -> list[str]:
    """PRODUCT.md and issue 12 at the reference size (3.5M; 10,000 + 10,000)."""
    if run.register != FULL[0]:
        return ["targets apply at 3,500,000 entries: n/a at this size"]
    found = []
    for c in run.changes:
        if c.size == 10_000:
            share = (c.delta_bytes or c.filter_bytes) / c.filter_bytes
            found.append(
                _verdict(
                    "apply 10k+10k under 10 s",
                    c.apply_seconds < TARGET_APPLY_SECONDS,
                    c.apply_seconds,
                )
            )
            verdict = _verdict("delta at most 2% of the filter", share <= TARGET_DELTA_SHARE, share)
            if c.delta_floor_bytes:
                verdict += (
                    f" (floor for its {c.flipped_bits:,} flipped bits: "
                    f"{c.delta_floor_bytes / c.filter_bytes:.4g})"
                )
            found.append(verdict)
    ratio = run.figures.get("load_over_oprf")
    if ratio:
        found.append(_verdict("load within 1.2x of the OPRF", ratio <= TARGET_LOAD_RATIO, ratio))
    return found


def _verdict(name: str, met: bool, value: float) -> str:
    return f"{name}: {value:.4g} {'MET' if met else 'NOT MET'}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="ndop change-set and filter-delta benchmark")
    parser.add_argument("--full", action="store_true", help="3,500,000 entries; 1k, 10k, 100k")
    parser.add_argument("--register", type=int, help="register entries")
    parser.add_argument("--sizes", help="change-set sizes, comma-separated (adds = withdrawals)")
    parser.add_argument("--workers", type=int, help="publisher processes (default: every core)")
    parser.add_argument("--skip-oprf", action="store_true", help="no OPRF-alone reference")
    parser.add_argument("--skip-growth", action="store_true", help="no growth past the band")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--quiet-wait", type=float, default=120.0)
    parser.add_argument("--keep-work", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    register, sizes = FULL if args.full else QUICK
    register = args.register or register
    if args.sizes:
        sizes = tuple(int(s) for s in args.sizes.split(","))
    if sum(sizes) > register:
        print("changes: the change sets withdraw more numbers than the register holds")
        return 2
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-changes-", dir=DATA_DIR))
    run = Run(register, list(sizes), args.workers or os.cpu_count() or 1)
    status = "ok"
    try:
        say(f"data: {register:,} register numbers and change sets {list(sizes)} (9 range)")
        ChangeBench(args, work).run(run, make_data(register, sizes, args.seed))
    except (BenchmarkFailed, OSError, grpc.RpcError) as exc:
        status = "failed"
        traceback.print_exc()
        print(f"BENCHMARK FAILED: {exc}", file=sys.stderr)
    print(table(run))
    verdicts = targets(run)
    for line in verdicts:
        print(line)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    result = {
        "benchmark": "changes",
        "status": status,
        "run": asdict(run),
        "targets": verdicts,
        "machine": machine(),
    }
    (args.out / f"changes-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {args.out / f'changes-{stamp}.json'}")
    if status == "ok" and not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work kept in {work}")
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
