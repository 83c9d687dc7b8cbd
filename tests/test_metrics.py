"""Prometheus metrics on `--metrics-listen`, scraped over real HTTP from a real server while
real checks run: checks by mode and outcome, numbers, latency histograms, open streams,
refusals by gRPC code, authentication failures, filter downloads and bytes, the version and
count served, store errors; never an identifier. The port is loopback-only unless told."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ndop_client import Client
from ndop_core.hashing import Hasher
from ndop_core.nhs_number import canonical_bytes
from ndop_core.proto import ndop_pb2, ndop_pb2_grpc
from ndop_server.accounts import Accounts, Limits
from ndop_server.errors import ConfigurationError
from ndop_server.server import RunningServer, start_server
from tests.conftest import GENEROUS, Register, make_register
from tests.gate import Gate
from tests.postgres_server import PostgresServer

TIMEOUT = 30.0
NDOP = [sys.executable, "-m", "ndop_client"]
Metadata = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def _context() -> ndop_pb2.CheckContext:
    return ndop_pb2.CheckContext(purpose="research", request_id=str(uuid.uuid4()))


def _digests(register: Register, values: np.ndarray) -> bytes:
    return Hasher(register.keys.salt).digest_packed(canonical_bytes(values))


def _get(url: str) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as reply:
            return reply.status, dict(reply.headers), reply.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode("utf-8")


def scrape(port: int) -> tuple[str, Samples]:
    """The exposition text and every sample in it, by name and labels."""
    status, headers, text = _get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def eventually(port: int, condition: Callable[[Samples], bool]) -> Samples:
    """Scrape until `condition` holds: a check's closing bookkeeping runs just after the
    client has its summary."""
    deadline = time.monotonic() + 10
    while True:
        _, samples = scrape(port)
        if condition(samples):
            return samples
        assert time.monotonic() < deadline, "the metrics never reached the expected state"
        time.sleep(0.05)


@pytest.fixture
def monitored(register: Register, token: str) -> Iterator[RunningServer]:
    running = start_server(
        register.store_path,
        register.keys,
        "127.0.0.1:0",
        tls=None,
        insecure=True,
        poll_seconds=0.1,
        metrics_listen="127.0.0.1:0",
    )
    try:
        yield running
    finally:
        running.stop(grace=1)


def test_metrics_scraped_during_a_real_check(
    register: Register, monitored: RunningServer, token: str
) -> None:
    port = monitored.metrics_port
    assert port is not None and port != monitored.port
    address = f"127.0.0.1:{monitored.port}"
    _, before = scrape(port)
    assert value(before, "ndop_register_version") == 1
    assert value(before, "ndop_register_count") == 1000
    assert value(before, "ndop_store_reachable") == 1
    assert value(before, "ndop_open_check_streams", mode="hashed") == 0

    cohort = np.concatenate([register.opted_out[:60], register.not_opted_out[:140]])
    digests = _digests(register, cohort)
    gate = Gate(ndop_pb2.HashedCheckRequest(context=_context()))
    with grpc.insecure_channel(address) as channel:
        call = ndop_pb2_grpc.OptOutRegisterStub(channel).CheckHashed(
            iter(gate), metadata=_bearer(token), timeout=TIMEOUT
        )
        gate.send(ndop_pb2.HashedCheckRequest(batch_id=0, digests=digests[: 100 * 32]))
        assert next(call).batch.count == 100
        # Mid-check: one stream open, one batch answered, nothing closed yet.
        text, during = scrape(port)
        assert value(during, "ndop_open_check_streams", mode="hashed") == 1
        assert value(during, "ndop_numbers_checked_total", mode="hashed") == 100
        assert value(during, "ndop_batch_seconds_count", mode="hashed") == 1
        assert value(during, "ndop_batch_seconds_sum", mode="hashed") > 0
        assert value(during, "ndop_checks_total", mode="hashed", outcome="completed") == 0
        gate.send(ndop_pb2.HashedCheckRequest(batch_id=1, digests=digests[100 * 32 :]))
        gate.close()
        answers = list(call)
    assert answers[-1].summary.items_checked == 200
    after = eventually(
        port, lambda s: value(s, "ndop_checks_total", mode="hashed", outcome="completed") == 1
    )
    assert value(after, "ndop_open_check_streams", mode="hashed") == 0
    assert value(after, "ndop_numbers_checked_total", mode="hashed") == 200
    assert value(after, "ndop_batch_seconds_count", mode="hashed") == 2
    assert value(after, "ndop_check_seconds_count", mode="hashed") == 1
    assert value(after, "ndop_refusals_total", method="CheckHashed", code="UNKNOWN") == 0

    # A private check through the SDK: a filter download, then evaluations.
    with Client(address, token=token, purpose="research", insecure=True) as client:
        result = client.check([f"{int(n):010d}" for n in cohort[:50]], mode="private")
    served = monitored.holder.current
    assert served is not None
    filter_size = len(served.filter_bytes)
    assert len(result.cleared) == 0  # the first 50 of the cohort all opted out
    after = eventually(
        port, lambda s: value(s, "ndop_checks_total", mode="private", outcome="completed") == 1
    )
    assert value(after, "ndop_numbers_checked_total", mode="private") == 50
    assert value(after, "ndop_filter_downloads_total") == 1
    assert value(after, "ndop_filter_bytes_total") == filter_size > 0
    _assert_no_identifiers(text + scrape(port)[0], register, token, cohort)


def test_refusals_by_code_and_authentication_failures(
    register: Register, monitored: RunningServer, token: str
) -> None:
    port = monitored.metrics_port
    assert port is not None
    address = f"127.0.0.1:{monitored.port}"
    with Accounts(register.store_path) as accounts:
        frugal = accounts.add("frugal", Limits(daily_quota=50, rate_per_second=0))
    with grpc.insecure_channel(address) as channel:
        stub = ndop_pb2_grpc.OptOutRegisterStub(channel)
        for credential in ("ndop_not-a-token", "ndop_also-wrong"):
            with pytest.raises(grpc.RpcError) as caught:
                stub.GetRegisterInfo(
                    ndop_pb2.GetRegisterInfoRequest(), metadata=_bearer(credential), timeout=5
                )
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        requests = [
            ndop_pb2.HashedCheckRequest(context=_context()),
            ndop_pb2.HashedCheckRequest(
                batch_id=0, digests=_digests(register, register.opted_out[:100])
            ),
        ]
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.CheckHashed(iter(requests), metadata=_bearer(frugal), timeout=TIMEOUT))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as caught:
            list(
                stub.GetFilter(
                    ndop_pb2.GetFilterRequest(version=99), metadata=_bearer(token), timeout=5
                )
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    samples = eventually(
        port,
        lambda s: value(s, "ndop_checks_total", mode="hashed", outcome="resource-exhausted") == 1,
    )
    assert value(samples, "ndop_authentication_failures_total", call="info") == 2
    refusals = {
        labels: count
        for (name, labels), count in samples.items()
        if name == "ndop_refusals_total" and count
    }
    assert refusals == {
        (("code", "UNAUTHENTICATED"), ("method", "GetRegisterInfo")): 2,
        (("code", "RESOURCE_EXHAUSTED"), ("method", "CheckHashed")): 1,
        (("code", "NOT_FOUND"), ("method", "GetFilter")): 1,
    }
    assert value(samples, "ndop_numbers_checked_total", mode="hashed") == 0
    assert value(samples, "ndop_open_check_streams", mode="hashed") == 0
    assert value(samples, "ndop_filter_downloads_total") == 0
    text, _ = scrape(port)
    assert "frugal" not in text and "test-org" not in text, "no per-organisation labels"
    assert "ndop_not-a-token" not in text


def _assert_no_identifiers(text: str, register: Register, token: str, cohort: np.ndarray) -> None:
    assert token not in text
    for number in cohort:
        assert f"{int(number):010d}" not in text
    assert not re.search(r"[0-9a-f]{32}", text), "no digest or element in hex"


def test_the_monitoring_port_is_loopback_only_unless_told(register: Register) -> None:
    common: dict[str, Any] = {"tls": None, "insecure": True, "poll_seconds": 0.1}
    with pytest.raises(ConfigurationError, match="--metrics-any-address"):
        start_server(
            register.store_path, register.keys, "127.0.0.1:0", metrics_listen="0.0.0.0:0", **common
        )
    with pytest.raises(ConfigurationError, match="needs a port"):
        start_server(
            register.store_path, register.keys, "127.0.0.1:0", metrics_listen="127.0.0.1", **common
        )
    running = start_server(
        register.store_path,
        register.keys,
        "127.0.0.1:0",
        metrics_listen="0.0.0.0:0",
        allow_metrics_non_loopback=True,
        **common,
    )
    try:
        assert running.metrics_port is not None
        status, _, _ = _get(f"http://127.0.0.1:{running.metrics_port}/metrics")
        assert status == 200
        with pytest.raises(ConfigurationError, match="already in use"):
            start_server(
                register.store_path,
                register.keys,
                "127.0.0.1:0",
                metrics_listen=f"127.0.0.1:{running.metrics_port}",
                **common,
            )
    finally:
        running.stop(grace=1)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=2)


def test_the_port_is_read_only_and_says_where_to_look(monitored: RunningServer) -> None:
    port = monitored.metrics_port
    base = f"http://127.0.0.1:{port}"
    status, headers, body = _get(f"{base}/")
    assert status == 200 and "<h1>ndop status</h1>" in body, "/ leads to the status page"
    status, headers, body = _get(f"{base}/status")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src" not in headers["Content-Security-Policy"]
    assert headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert headers["Cache-Control"] == "no-store"
    assert "<script" not in body
    status, _, body = _get(f"{base}/anything-else")
    assert status == 404 and "/status" in body
    request = urllib.request.Request(f"{base}/metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 405


def test_ndop_serve_metrics_listen(register: Register, token: str) -> None:
    process = subprocess.Popen(
        [
            *NDOP,
            "serve",
            "--store",
            str(register.store_path),
            "--keys",
            str(register.keys_path),
            "--listen",
            "127.0.0.1:0",
            "--insecure",
            "--metrics-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    try:
        started: dict[str, Any] = {}
        deadline = time.monotonic() + TIMEOUT
        while not started and time.monotonic() < deadline:
            event = json.loads(process.stderr.readline() or "{}")
            if event.get("event") == "server.started":
                started = event
        assert started.get("metrics_port"), "server.started names the metrics port"
        _, samples = scrape(int(started["metrics_port"]))
        assert value(samples, "ndop_register_version") == 1
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0
    done = subprocess.run(
        [
            *NDOP,
            "serve",
            "--store",
            str(register.store_path),
            "--keys",
            str(register.keys_path),
            "--listen",
            "127.0.0.1:0",
            "--insecure",
            "--metrics-any-address",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 2
    assert "--metrics-any-address only goes with --metrics-listen" in done.stderr
    assert "Traceback" not in done.stderr


def test_store_errors_and_reachability(tmp_path: Path) -> None:
    own = PostgresServer()  # stopped and started by this test, so not the shared one
    try:
        register = make_register(tmp_path, total=300, opted_out=100, url=own.new_database())
        with Accounts(register.location) as accounts:
            token = accounts.add("steady", GENEROUS)
        running = start_server(
            register.location,
            register.keys,
            "127.0.0.1:0",
            tls=None,
            insecure=True,
            poll_seconds=0.1,
            metrics_listen="127.0.0.1:0",
        )
        port = running.metrics_port
        assert port is not None
        try:
            own.stop()
            eventually(port, lambda s: value(s, "ndop_store_reachable") == 0)
            with (
                grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel,
                pytest.raises(grpc.RpcError) as caught,
            ):
                ndop_pb2_grpc.OptOutRegisterStub(channel).GetRegisterInfo(
                    ndop_pb2.GetRegisterInfoRequest(), metadata=_bearer(token), timeout=10
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            _, samples = scrape(port)
            assert value(samples, "ndop_store_errors_total", call="info") == 1
            assert (
                value(samples, "ndop_refusals_total", method="GetRegisterInfo", code="UNAVAILABLE")
                == 1
            )
            status, _, page = _get(f"http://127.0.0.1:{port}/status")
            assert status == 200, "the page still says what this server knows"
            assert "STORE UNREACHABLE" in page and "cannot be read just now" in page
            own.start()
            eventually(port, lambda s: value(s, "ndop_store_reachable") == 1)
        finally:
            running.stop(grace=1)
    finally:
        own.close()
