"""Red-team tests: what an organisation with one valid token and bad intent can do, against a
real server on loopback. Every loop here is bounded in count and time and stops by itself.

- idle streams cannot starve other organisations or the health service;
- revocation and a cut quota reach a check already open, at its next batch;
- no work is done for a batch before it is charged, and declared checks reserve up front;
- nothing answered goes unaudited, whether the server is killed or drained;
- the audit log is tamper-evident and `ndop audit verify` says where;
- header and identifier tricks are refused; failed authentication is logged and audited.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ndop_client import Client, Status
from ndop_core.crypto import oprf
from ndop_core.hashing import Hasher
from ndop_core.nhs_number import canonical_bytes
from ndop_core.proto import ndop_pb2, ndop_pb2_grpc
from ndop_server.accounts import Accounts, Limits
from ndop_server.audit_chain import audit_key
from ndop_server.audit_view import summarise
from ndop_server.limits import RateLimiter
from ndop_server.server import RunningServer, ServingLimits, start_server
from tests.conftest import GENEROUS, Register
from tests.gate import Gate
from tests.serve_process import ServeProcess, start_serve

TIMEOUT = 30.0
NDOP = [sys.executable, "-m", "ndop_client"]
Metadata = tuple[tuple[str, str], ...]


def _bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def _add(register: Register, name: str, limits: Limits = GENEROUS) -> str:
    with Accounts(register.store_path) as accounts:
        return accounts.add(name, limits)


def _digests(register: Register, values: np.ndarray) -> bytes:
    return Hasher(register.keys.salt).digest_packed(canonical_bytes(values))


def _context(expected: int = 0, version: int = 0) -> ndop_pb2.CheckContext:
    return ndop_pb2.CheckContext(
        purpose="research",
        request_id=str(uuid.uuid4()),
        expected_items=expected,
        register_version=version,
    )


def _serve(register: Register, **limits: Any) -> RunningServer:
    return start_server(
        register.store_path,
        register.keys,
        "127.0.0.1:0",
        tls=None,
        insecure=True,
        poll_seconds=0.1,
        limits=ServingLimits(**limits),
    )


@pytest.fixture
def guarded(register: Register) -> Iterator[tuple[RunningServer, str]]:
    running = _serve(register, idle_timeout=2.0, checks_per_organisation=3, max_workers=12)
    try:
        yield running, f"127.0.0.1:{running.port}"
    finally:
        running.stop(grace=1)


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="ndop.v1.OptOutRegister"), timeout=5
        )
        return int(reply.status)


def _outcomes_once_closed(register: Register, organisation: str) -> list[str]:
    """The outcome of each of an organisation's checks, once every one has its closing row
    (the server writes it just after the client has seen the stream end)."""
    deadline = time.monotonic() + 10
    while True:
        with Accounts(register.store_path) as accounts:
            outcomes = [line.outcome for line in summarise(accounts.audit(organisation))]
        if "interrupted" not in outcomes or time.monotonic() > deadline:
            return outcomes
        time.sleep(0.05)


# --- nobody can starve anybody --------------------------------------------------------


def test_200_idle_hostile_streams_starve_nobody_and_are_closed(
    register: Register, guarded: tuple[RunningServer, str], tmp_path: Path
) -> None:
    _, address = guarded
    hostile = _add(register, "hostile", Limits(daily_quota=0, daily_checks=1_000_000))
    good = _add(register, "good")
    channel = grpc.insecure_channel(address)
    stub = ndop_pb2_grpc.OptOutRegisterStub(channel)
    gates = [Gate(ndop_pb2.HashedCheckRequest(context=_context())) for _ in range(200)]
    calls = [stub.CheckHashed(iter(g), metadata=_bearer(hostile)) for g in gates]
    try:
        time.sleep(0.5)  # let every stream open, be held or be refused
        numbers = [f"{int(v):010d}" for v in register.opted_out[:5]]
        numbers += [f"{int(v):010d}" for v in register.not_opted_out[:5]]
        started = time.monotonic()
        with Client(
            address,
            insecure=True,
            token=good,
            purpose="research",
            workers=1,
            cache_dir=tmp_path / "cache",
            timeout=10,
        ) as client:
            for mode in ("hashed", "private"):
                result = client.check(numbers, mode=mode)
                assert result.statuses == [Status.OPTED_OUT] * 5 + [Status.CLEARED] * 5
        assert time.monotonic() - started < 10
        assert _health(address) == health_pb2.HealthCheckResponse.SERVING

        codes: dict[str, int] = {}
        deadline = time.monotonic() + 15
        for call in calls:
            try:
                list(call)
                codes["finished"] = codes.get("finished", 0) + 1
            except grpc.RpcError as exc:
                name = exc.code().name
                codes[name] = codes.get(name, 0) + 1
            assert time.monotonic() < deadline, "idle streams were not closed"
    finally:
        for gate in gates:
            gate.close()
        channel.close()
    held = codes.get("CANCELLED", 0)
    assert 1 <= held <= 3, codes  # at most the per-organisation cap was ever held, then closed
    assert set(codes) <= {"CANCELLED", "UNAVAILABLE", "RESOURCE_EXHAUSTED"}, codes
    assert _outcomes_once_closed(register, "hostile") == ["idle-timeout"] * held


def test_the_limit_on_open_checks_is_unavailable_with_advice_not_a_quota_error(
    register: Register, guarded: tuple[RunningServer, str]
) -> None:
    _, address = guarded
    token = _add(register, "greedy")
    gates = [Gate(ndop_pb2.HashedCheckRequest(context=_context())) for _ in range(4)]
    with grpc.insecure_channel(address) as channel:
        stub = ndop_pb2_grpc.OptOutRegisterStub(channel)
        calls = [stub.CheckHashed(iter(g), metadata=_bearer(token)) for g in gates[:3]]
        time.sleep(0.3)
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.CheckHashed(iter(gates[3]), metadata=_bearer(token), timeout=TIMEOUT))
        for gate in gates:
            gate.close()
        for call in calls:
            list(call)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    details = caught.value.details()
    assert details is not None
    assert "retry when one has finished" in details and "quota" not in details


# --- decisions are current --------------------------------------------------------------


@pytest.mark.parametrize("change", ["revoke", "cut quota"])
def test_revocation_and_a_cut_quota_reach_an_open_check_at_its_next_batch(
    register: Register, server: RunningServer, address: str, change: str
) -> None:
    token = _add(register, "turncoat")
    gate = Gate(ndop_pb2.HashedCheckRequest(context=_context()))
    batch = _digests(register, register.opted_out[:100])
    with grpc.insecure_channel(address) as channel:
        call = ndop_pb2_grpc.OptOutRegisterStub(channel).CheckHashed(
            iter(gate), metadata=_bearer(token), timeout=TIMEOUT
        )
        gate.send(ndop_pb2.HashedCheckRequest(batch_id=0, digests=batch))
        first = next(call)
        assert first.batch.count == 100
        with Accounts(register.store_path) as accounts:
            if change == "revoke":
                accounts.revoke("turncoat")
            else:
                accounts.set_limits("turncoat", daily_quota=100)
        gate.send(ndop_pb2.HashedCheckRequest(batch_id=1, digests=batch))
        gate.close()
        with pytest.raises(grpc.RpcError) as caught:
            list(call)
    expected = (
        grpc.StatusCode.PERMISSION_DENIED
        if change == "revoke"
        else grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert caught.value.code() == expected
    with Accounts(register.store_path) as accounts:
        lines = summarise(accounts.audit("turncoat"))
    assert [(line.items_checked, line.outcome) for line in lines] == [
        (100, expected.name.lower().replace("_", "-"))
    ], "the second batch was neither answered nor charged"


def test_a_batch_is_charged_before_any_work_on_it(
    register: Register, server: RunningServer, address: str
) -> None:
    """Elements that would fail evaluation prove the order: a quota-0 organisation is told
    RESOURCE_EXHAUSTED, never INVALID_ARGUMENT, because nothing was evaluated."""
    token = _add(register, "freeloader", Limits(daily_quota=0))
    garbage = bytes([0xFF]) * (oprf.ELEMENT_SIZE * 65_536)
    requests = [
        ndop_pb2.EvaluateRequest(context=_context(version=1)),
        ndop_pb2.EvaluateRequest(batch_id=0, blinded_elements=garbage),
    ]
    with grpc.insecure_channel(address) as channel:
        stub = ndop_pb2_grpc.OptOutRegisterStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Evaluate(iter(requests), metadata=_bearer(token), timeout=TIMEOUT))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_declared_checks_reserve_their_numbers_up_front(
    register: Register, server: RunningServer, address: str
) -> None:
    """Four concurrent 2,000-number checks on a 4,000 budget: two complete, two are refused
    before any work, and not one number is burnt."""
    token = _add(register, "parallel", Limits(daily_quota=4_000, daily_checks=100))
    values = np.concatenate([register.opted_out, register.not_opted_out])[:2_000]
    digests = _digests(register, values)

    def check() -> str:
        requests = [
            ndop_pb2.HashedCheckRequest(context=_context(expected=2_000)),
            ndop_pb2.HashedCheckRequest(batch_id=0, digests=digests[: 1000 * 32]),
            ndop_pb2.HashedCheckRequest(batch_id=1, digests=digests[1000 * 32 :]),
        ]
        with grpc.insecure_channel(address) as channel:
            stub = ndop_pb2_grpc.OptOutRegisterStub(channel)
            try:
                responses = list(
                    stub.CheckHashed(iter(requests), metadata=_bearer(token), timeout=TIMEOUT)
                )
            except grpc.RpcError as exc:
                return str(exc.code().name)
        return "completed" if responses[-1].HasField("summary") else "incomplete"

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = sorted(pool.map(lambda _: check(), range(4)))
    assert outcomes == ["RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED", "completed", "completed"]
    with Accounts(register.store_path) as accounts:
        assert accounts.usage("parallel").numbers == 4_000
        lines = summarise(accounts.audit("parallel"))
    assert sorted(line.items_checked for line in lines) == [0, 0, 2_000, 2_000]


def test_unused_reservation_is_given_back(
    register: Register, server: RunningServer, address: str
) -> None:
    token = _add(register, "optimist", Limits(daily_quota=10_000))
    requests = [
        ndop_pb2.HashedCheckRequest(context=_context(expected=9_000)),
        ndop_pb2.HashedCheckRequest(
            batch_id=0, digests=_digests(register, register.opted_out[:100])
        ),
    ]
    with grpc.insecure_channel(address) as channel:
        list(
            ndop_pb2_grpc.OptOutRegisterStub(channel).CheckHashed(
                iter(requests), metadata=_bearer(token), timeout=TIMEOUT
            )
        )
    with Accounts(register.store_path) as accounts:
        assert accounts.usage("optimist").numbers == 100


def test_daily_limits_on_checks_and_filter_downloads(
    register: Register, server: RunningServer, address: str
) -> None:
    token = _add(register, "chatty", Limits(daily_checks=3, daily_filter_downloads=2))
    with grpc.insecure_channel(address) as channel:
        stub = ndop_pb2_grpc.OptOutRegisterStub(channel)
        for _ in range(3):
            list(
                stub.CheckHashed(
                    iter([ndop_pb2.HashedCheckRequest(context=_context())]),
                    metadata=_bearer(token),
                    timeout=TIMEOUT,
                )
            )
        with pytest.raises(grpc.RpcError) as checks:
            list(
                stub.CheckHashed(
                    iter([ndop_pb2.HashedCheckRequest(context=_context())]),
                    metadata=_bearer(token),
                    timeout=TIMEOUT,
                )
            )
        for _ in range(2):
            list(stub.GetFilter(ndop_pb2.GetFilterRequest(), metadata=_bearer(token)))
        with pytest.raises(grpc.RpcError) as filters:
            list(stub.GetFilter(ndop_pb2.GetFilterRequest(), metadata=_bearer(token)))
    assert checks.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "number of checks" in (checks.value.details() or "")
    assert filters.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with Accounts(register.store_path) as accounts:
        downloads = [r for r in accounts.audit("chatty") if r.outcome == "filter-download"]
    assert [r.register_version for r in downloads] == [1, 1]


def test_the_rate_limit_slows_an_organisation_down(
    register: Register, server: RunningServer, address: str
) -> None:
    """2,000 numbers a second with a one-second burst: eight checks of 1,000 numbers need at
    least three seconds, where unthrottled they take a fraction of one."""
    slow = _add(register, "slow", Limits(rate_per_second=2_000))
    numbers = [f"{int(v):010d}" for v in register.not_opted_out[:1_000]]
    with Client(address, insecure=True, token=slow, purpose="research", timeout=TIMEOUT) as c:
        started = time.monotonic()
        for _ in range(8):
            assert c.check(numbers, mode="hashed").tally.unique == 1_000
        elapsed = time.monotonic() - started
    assert elapsed >= 2.5, f"8,000 numbers at 2,000/s took only {elapsed:.2f} s"


def test_the_token_bucket_on_a_clock_of_its_own() -> None:
    now = [100.0]
    bucket = RateLimiter(clock=lambda: now[0], sleep=lambda _: None)
    assert bucket.delay("org", 1_000, 1_000) == 0.0  # a full second's burst
    assert bucket.delay("org", 1_000, 500) == pytest.approx(0.5)
    now[0] += 0.5
    assert bucket.delay("org", 1_000, 500) == pytest.approx(0.5)
    assert bucket.delay("other", 1_000, 1_000) == 0.0, "each organisation has its own bucket"
    assert bucket.delay("org", 0, 10**9) == 0.0, "rate 0 means no limit"


# --- nothing answered goes unaudited ------------------------------------------------------


def _serve_process(register: Register, *options: str) -> ServeProcess:
    return start_serve(register.location, register.keys_path, "--poll-seconds", "0.1", *options)


def test_kill_9_mid_check_leaves_a_row_showing_what_was_answered(register: Register) -> None:
    token = _add(register, "victim")
    served = _serve_process(register)
    gate = Gate(ndop_pb2.HashedCheckRequest(context=_context()))
    batch = _digests(register, register.not_opted_out[:500])
    answered = 0
    try:
        with grpc.insecure_channel(served.address) as channel:
            call = ndop_pb2_grpc.OptOutRegisterStub(channel).CheckHashed(
                iter(gate), metadata=_bearer(token), timeout=TIMEOUT
            )
            for batch_id in range(3):
                gate.send(ndop_pb2.HashedCheckRequest(batch_id=batch_id, digests=batch))
                next(call)
                answered += 500
            served.process.send_signal(signal.SIGKILL)
            served.process.wait(timeout=TIMEOUT)
            gate.close()
            with pytest.raises(grpc.RpcError):
                list(call)
    finally:
        if served.process.poll() is None:
            served.process.kill()
    with Accounts(register.store_path) as accounts:
        lines = summarise(accounts.audit("victim"))
        charged = accounts.usage("victim").numbers
        intact = accounts.verify_audit(audit_key(register.keys.store_key))
    assert [(line.items_checked, line.outcome) for line in lines] == [(answered, "interrupted")]
    assert charged == answered
    assert intact.intact, intact.problems


def test_sigterm_drains_then_audits_what_it_cut_off_as_aborted(register: Register) -> None:
    token = _add(register, "patient")
    served = _serve_process(register, "--drain-seconds", "1", "--idle-timeout", "60")
    gate = Gate(ndop_pb2.HashedCheckRequest(context=_context()))
    batch = _digests(register, register.not_opted_out[:200])
    try:
        with grpc.insecure_channel(served.address) as channel:
            call = ndop_pb2_grpc.OptOutRegisterStub(channel).CheckHashed(
                iter(gate), metadata=_bearer(token), timeout=TIMEOUT
            )
            gate.send(ndop_pb2.HashedCheckRequest(batch_id=0, digests=batch))
            next(call)
            served.process.send_signal(signal.SIGTERM)
            assert served.process.wait(timeout=TIMEOUT) == 0
            gate.close()
            with pytest.raises(grpc.RpcError):
                list(call)
    finally:
        if served.process.poll() is None:
            served.process.kill()
    log = served.rest_of_log()
    assert "Traceback" not in log
    events = [json.loads(line)["event"] for line in log.splitlines() if line.strip()]
    assert events[-1] == "server.stopped"
    with Accounts(register.store_path) as accounts:
        lines = summarise(accounts.audit("patient"))
    assert [(line.items_checked, line.outcome) for line in lines] == [(200, "aborted")]


def test_sigterm_lets_a_check_in_flight_finish_within_the_drain(register: Register) -> None:
    token = _add(register, "finisher")
    served = _serve_process(register, "--drain-seconds", "20")
    gate = Gate(ndop_pb2.HashedCheckRequest(context=_context()))
    batch = _digests(register, register.opted_out[:50])
    try:
        with grpc.insecure_channel(served.address) as channel:
            call = ndop_pb2_grpc.OptOutRegisterStub(channel).CheckHashed(
                iter(gate), metadata=_bearer(token), timeout=TIMEOUT
            )
            gate.send(ndop_pb2.HashedCheckRequest(batch_id=0, digests=batch))
            next(call)
            served.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            gate.send(ndop_pb2.HashedCheckRequest(batch_id=1, digests=batch))
            gate.close()
            rest = list(call)
        assert served.process.wait(timeout=TIMEOUT) == 0
    finally:
        if served.process.poll() is None:
            served.process.kill()
    assert rest[-1].HasField("summary") and rest[-1].summary.items_checked == 100
    with Accounts(register.store_path) as accounts:
        lines = summarise(accounts.audit("finisher"))
    assert [(line.items_checked, line.outcome) for line in lines] == [(100, "completed")]


# --- the audit log is tamper-evident -----------------------------------------------------


def _ndop(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NDOP, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def _a_few_checks(register: Register, address: str, token: str) -> None:
    numbers = [f"{int(v):010d}" for v in register.opted_out[:10]]
    with Client(address, insecure=True, token=token, purpose="research", timeout=TIMEOUT) as c:
        for _ in range(3):
            c.check(numbers, mode="hashed")


def _tamper(register: Register, *statements: str) -> None:
    """What someone who can write the store file, but has no keys file, can do."""
    db = sqlite3.connect(register.store_path)
    try:
        db.executescript(
            "DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete; "
            "DROP TRIGGER audit_no_replace;" + "".join(statements)
        )
        db.commit()
    finally:
        db.close()


TAMPERINGS = {
    "edited": (("UPDATE audit SET items_checked = 1 WHERE id = 3;",), "row 3 was altered"),
    "deleted": (("DELETE FROM audit WHERE id = 4;",), "row 4 is missing: it was deleted"),
    "inserted": (
        (
            "INSERT INTO audit (id, at, organisation, request_id, mode, purpose, items_checked, "
            "items_opted_out, register_version, outcome, chain) SELECT "
            "(SELECT max(id) + 1 FROM audit), at, organisation, request_id, mode, purpose, "
            "items_checked, items_opted_out, register_version, outcome, chain "
            "FROM audit WHERE id = 2;",
        ),
        "added without the keys file",
    ),
    "reordered": (
        (
            "CREATE TEMP TABLE swap AS SELECT * FROM audit WHERE id IN (2, 3);",
            "DELETE FROM audit WHERE id IN (2, 3);",
            "INSERT INTO audit SELECT CASE id WHEN 2 THEN 3 ELSE 2 END, at, organisation, "
            "request_id, mode, purpose, items_checked, items_opted_out, register_version, "
            "outcome, chain FROM swap;",
        ),
        "row 2 does not follow",
    ),
}


@pytest.mark.parametrize("how", sorted(TAMPERINGS))
def test_audit_verify_finds_and_names_tampering(
    register: Register, server: RunningServer, address: str, token: str, how: str
) -> None:
    _a_few_checks(register, address, token)
    intact = _ndop("audit", "verify", "--store", register.store_path, "--keys", register.keys_path)
    assert intact.returncode == 0, intact.stderr
    assert intact.stdout.startswith("audit chain intact:")
    statements, expected = TAMPERINGS[how]
    _tamper(register, *statements)
    found = _ndop("audit", "verify", "--store", register.store_path, "--keys", register.keys_path)
    assert found.returncode == 1
    assert expected in found.stderr, found.stderr
    assert "Traceback" not in found.stderr


def test_audit_verify_with_another_register_s_keys_finds_every_row_broken(
    register: Register, server: RunningServer, address: str, token: str, tmp_path: Path
) -> None:
    _a_few_checks(register, address, token)
    other_keys = tmp_path / "other-keys.json"
    assert _ndop("keys", "init", "--keys", other_keys).returncode == 0
    found = _ndop("audit", "verify", "--store", register.store_path, "--keys", other_keys)
    assert found.returncode == 1 and "row 1 " in found.stderr


# --- headers and identifiers -------------------------------------------------------------


def _hashed_once(address: str, metadata: Metadata, context: ndop_pb2.CheckContext) -> Any:
    with grpc.insecure_channel(address) as channel:
        stub = ndop_pb2_grpc.OptOutRegisterStub(channel)
        try:
            return list(
                stub.CheckHashed(
                    iter([ndop_pb2.HashedCheckRequest(context=context)]),
                    metadata=metadata,
                    timeout=TIMEOUT,
                )
            )
        except grpc.RpcError as exc:
            return exc


def test_two_authorization_headers_are_refused(
    register: Register, server: RunningServer, address: str, token: str
) -> None:
    other = _add(register, "other")
    metadata = (*_bearer(token), *_bearer(other))
    error = _hashed_once(address, metadata, _context())
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "one authorization header" in (error.details() or "")


@pytest.mark.parametrize(
    "request_id",
    ["line one\nline two", "\x1b[31mred\x1b[0m", "9990000018", "x" * 500, "not-a-uuid"],
    ids=["newline", "ansi", "a-number", "long", "plain"],
)
def test_a_request_id_that_is_not_a_uuid_is_refused_and_never_stored(
    register: Register,
    server: RunningServer,
    address: str,
    auth_metadata: Metadata,
    request_id: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    context = ndop_pb2.CheckContext(purpose="research", request_id=request_id)
    error = _hashed_once(address, auth_metadata, context)
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert request_id not in (error.details() or "")
    with Accounts(register.store_path) as accounts:
        stored = {r.request_id for r in accounts.audit()}
    assert request_id not in stored
    captured = capfd.readouterr()
    assert request_id not in captured.out + captured.err


def test_a_reused_request_id_is_refused(
    register: Register, server: RunningServer, address: str, auth_metadata: Metadata
) -> None:
    context = _context()
    first = _hashed_once(address, auth_metadata, context)
    assert first[-1].HasField("summary")
    again = _hashed_once(address, auth_metadata, context)
    assert isinstance(again, grpc.RpcError)
    assert again.code() == grpc.StatusCode.ALREADY_EXISTS


def test_failed_authentication_is_logged_and_audited_without_the_token_and_bounded(
    register: Register, server: RunningServer, address: str, capfd: pytest.CaptureFixture[str]
) -> None:
    forged = "ndop_" + "A" * 43
    for _ in range(60):
        error = _hashed_once(address, _bearer(forged), _context())
        assert isinstance(error, grpc.RpcError)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    with Accounts(register.store_path) as accounts:
        failures = [r for r in accounts.audit() if r.outcome == "auth-failed"]
    assert 1 <= len(failures) <= 20, "a flood of bad tokens is bounded in the audit log"
    captured = capfd.readouterr()
    assert "auth.failed" in captured.out + captured.err
    assert forged not in captured.out + captured.err
    assert all(forged not in repr(r) for r in failures)
