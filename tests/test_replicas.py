"""Several `ndop serve` replicas on one PostgreSQL store, as real processes: they answer from
the same versions and pick a new one up within a second, quotas are exact across them, a
check whose replica dies finishes on another, and a replica that loses its database says so
on health and recovers by itself."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ndop_client import Client
from ndop_core.errors import UsageError
from ndop_core.hashing import Hasher
from ndop_core.nhs_number import canonical_bytes
from ndop_core.proto import ndop_pb2, ndop_pb2_grpc
from ndop_server.accounts import Accounts, Limits
from ndop_server.audit_chain import audit_key
from ndop_server.audit_view import summarise
from ndop_server.register import Publisher
from ndop_server.store import Store
from tests.conftest import GENEROUS, Register, make_register, write_numbers
from tests.postgres_server import PostgresServer
from tests.serve_process import ServeProcess, start_serve

NDOP = [sys.executable, "-m", "ndop_client"]
TIMEOUT = 60.0


def start_replica(register: Register, *options: str) -> ServeProcess:
    replica = start_serve(
        register.location,
        register.keys_path,
        "--poll-seconds",
        "0.5",
        "--drain-seconds",
        "1",
        *options,
    )
    replica.keep_reading_log()
    return replica


@dataclass
class Deployment:
    register: Register
    replicas: list[ServeProcess]
    token: str

    @property
    def servers(self) -> str:
        return ",".join(r.address for r in self.replicas)


@pytest.fixture
def deployment(postgres: PostgresServer, tmp_path: Path) -> Iterator[Deployment]:
    register = make_register(tmp_path, total=30_000, opted_out=10_000, url=postgres.new_database())
    with Accounts(register.location, audit_key(register.keys.store_key)) as accounts:
        token = accounts.add("replicated", GENEROUS)
    replicas = [start_replica(register, "--max-checks-per-org", "16") for _ in range(3)]
    try:
        yield Deployment(register, replicas, token)
    finally:
        for replica in replicas:
            replica.stop()


def _info(address: str, token: str) -> Any:
    with grpc.insecure_channel(address) as channel:
        return ndop_pb2_grpc.OptOutRegisterStub(channel).GetRegisterInfo(
            ndop_pb2.GetRegisterInfoRequest(),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10,
        )


def _health(address: str) -> int | None:
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="ndop.v1.OptOutRegister"), timeout=2
            )
            return int(reply.status)
    except grpc.RpcError:
        return None


def test_every_replica_picks_up_a_new_version_within_a_second(
    deployment: Deployment, tmp_path: Path
) -> None:
    register = deployment.register
    assert {_info(r.address, deployment.token).version.number for r in deployment.replicas} == {1}
    with Store(register.location) as store:
        Publisher(store, register.keys, workers=1).apply_changes(
            None, write_numbers(tmp_path / "withdrawn.dat", register.opted_out[:100])
        )
    published = time.monotonic()
    waiting = {r.address for r in deployment.replicas}
    while waiting:
        waiting = {a for a in waiting if _info(a, deployment.token).version.number != 2}
        assert time.monotonic() - published < 1.0, f"still on version 1 after 1 s: {waiting}"
        time.sleep(0.02)


def test_quotas_are_exact_across_three_replicas(deployment: Deployment) -> None:
    """30 concurrent checks of 2,000 numbers each, ten on each replica, against a budget of
    25,000: not one number beyond it is answered, and usage equals what was answered."""
    register = deployment.register
    with Accounts(register.location, audit_key(register.keys.store_key)) as accounts:
        token = accounts.add("thirsty", Limits(daily_quota=25_000, daily_checks=1_000))
    digests = Hasher(register.keys.salt).digest_packed(
        canonical_bytes(register.not_opted_out[:2_000])
    )

    def check(i: int) -> int:
        context = ndop_pb2.CheckContext(purpose="research", request_id=str(uuid.uuid4()))
        requests = [ndop_pb2.HashedCheckRequest(context=context)] + [
            ndop_pb2.HashedCheckRequest(batch_id=b, digests=digests[b * 16_000 : (b + 1) * 16_000])
            for b in range(4)
        ]
        answered = 0
        address = deployment.replicas[i % 3].address
        with grpc.insecure_channel(address) as channel:
            call = ndop_pb2_grpc.OptOutRegisterStub(channel).CheckHashed(
                iter(requests), metadata=(("authorization", f"Bearer {token}"),), timeout=TIMEOUT
            )
            try:
                for response in call:
                    if response.HasField("batch"):
                        answered += response.batch.count
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        return answered

    with ThreadPoolExecutor(max_workers=30) as pool:
        answered = sum(pool.map(check, range(30)))
    with Accounts(register.location) as accounts:
        charged = accounts.usage("thirsty").numbers
        audited = sum(line.items_checked for line in summarise(accounts.audit("thirsty")))
    assert answered == charged == audited
    assert 24_000 <= answered <= 25_000


def test_a_check_finishes_on_another_replica_when_its_replica_dies(
    deployment: Deployment, tmp_path: Path
) -> None:
    register = deployment.register
    values = np.concatenate([register.opted_out[:3_000], register.not_opted_out[:17_000]])
    cohort = write_numbers(tmp_path / "cohort.dat", np.random.default_rng(3).permutation(values))
    expected = "".join(f"{int(v):010d},\n" for v in np.sort(register.not_opted_out[:17_000]))

    def check(out: Path) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                *NDOP,
                "check",
                str(cohort),
                "--server",
                deployment.servers,
                "--insecure",
                "--mode",
                "private",
                "--purpose",
                "research",
                "--out",
                str(out),
                "--workers",
                "2",
                "--token",
                deployment.token,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    out = tmp_path / "cleared.dat"
    running = check(out)
    with Accounts(register.location) as accounts:
        deadline = time.monotonic() + TIMEOUT
        while not any(r.outcome == "answered" for r in accounts.audit("replicated")):
            assert time.monotonic() < deadline, "the check never started"
            time.sleep(0.05)
    first = deployment.replicas[0]
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    _, stderr = running.communicate(timeout=TIMEOUT)
    assert running.returncode == 0, stderr
    assert "".join(sorted(out.read_text().splitlines(keepends=True))) == expected
    with Accounts(register.location) as accounts:
        lines = summarise(accounts.audit("replicated"))
    outcomes = [line.outcome for line in lines if line.mode == "private"]
    assert outcomes == ["interrupted", "completed"]


def test_a_replica_without_its_database_is_not_serving_and_recovers(tmp_path: Path) -> None:
    own = PostgresServer()  # stopped and started by this test, so not the shared one
    try:
        register = make_register(tmp_path, total=300, opted_out=100, url=own.new_database())
        with Accounts(register.location, audit_key(register.keys.store_key)) as accounts:
            token = accounts.add("steady", GENEROUS)
        replica = start_replica(register)
        try:
            assert _health(replica.address) == health_pb2.HealthCheckResponse.SERVING
            own.stop()
            deadline = time.monotonic() + 15
            while _health(replica.address) != health_pb2.HealthCheckResponse.NOT_SERVING:
                assert time.monotonic() < deadline, "health never said NOT_SERVING"
                time.sleep(0.1)
            with pytest.raises(grpc.RpcError) as caught:
                _info(replica.address, token)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            own.start()
            deadline = time.monotonic() + 15
            while _health(replica.address) != health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() < deadline, "the replica did not recover"
                time.sleep(0.1)
            assert _info(replica.address, token).version.number == 1
            assert replica.process.poll() is None, "the replica stayed up throughout"
        finally:
            replica.stop()
    finally:
        own.close()


def test_a_client_skips_an_address_nobody_answers_on(
    register: Register, server: Any, address: str, token: str, tmp_path: Path
) -> None:
    numbers = [f"{int(v):010d}" for v in register.opted_out[:3]]
    dead = f"127.0.0.1:{_closed_port()}"
    with Client(
        f"{dead},{address}",
        insecure=True,
        token=token,
        purpose="research",
        cache_dir=tmp_path / "cache",
        timeout=5,
    ) as client:
        assert client.info().version == 1
        for mode in ("hashed", "private", "hashed"):
            result = client.check(numbers, mode=mode)
            assert result.opted_out_count == 3


def test_a_malformed_address_list_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="not HOST:PORT"):
        Client("127.0.0.1:1,,127.0.0.1:2", insecure=True)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
