"""Access control over a real server: tokens (missing, wrong, revoked), organisations under
mutual TLS, one daily budget of numbers per organisation across both modes (reserved up front
when a check declares its size) and its reset, unique request ids, declared purposes, and the
append-only audit log (rows written as a check goes, one line per check when read), through
the SDK, the `ndop` CLI and the raw generated stubs.

Only synthetic 999-range numbers are used.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import ndop_server.accounts as accounts_module
from ndop_client import (
    AuthenticationFailed,
    Client,
    PermissionDenied,
    QuotaExceeded,
    ServiceError,
    UsageError,
)
from ndop_core.crypto import oprf
from ndop_core.hashing import Hasher
from ndop_core.nhs_number import canonical_bytes
from ndop_core.proto import ndop_pb2, ndop_pb2_grpc
from ndop_server.accounts import DEFAULT_LIMITS, Accounts, Limits, Usage
from ndop_server.audit_record import AuditRecord
from ndop_server.audit_view import summarise
from ndop_server.devcerts import make_dev_certificates
from ndop_server.server import ServerTls, start_server
from tests.conftest import GENEROUS, Register, make_register, write_numbers

NDOP = [sys.executable, "-m", "ndop_client.cli.main"]
TIMEOUT = 20.0
Metadata = tuple[tuple[str, str], ...]
ATTEMPTS = 60  # repetitions of a check whose failure depends on how two threads interleave
VERSION = 1  # the module's register holds one published snapshot
CHECK_ROWS = ("started", "answered")  # the rows a check writes before its closing row


# --- helpers -----------------------------------------------------------------------------------


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def texts(values: np.ndarray) -> list[str]:
    return [f"{int(v):010d}" for v in values]


def digests(register: Register, values: np.ndarray) -> bytes:
    return Hasher(register.keys.salt).digest_packed(canonical_bytes(values))


def blinded(values: np.ndarray) -> bytes:
    return b"".join(oprf.blind(f"{int(v):010d}".encode())[1] for v in values)


def fresh_id() -> str:
    return str(uuid.uuid4())


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NDOP_TOKEN", None)
    env.pop("NDOP_DEBUG", None)
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg-cache")
    return env


def ndop(
    tmp_path: Path, *args: str | Path, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = cli_env(tmp_path)
    if token is not None:
        env["NDOP_TOKEN"] = token
    return subprocess.run(
        [*NDOP, *map(str, args)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_one_sentence(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("ndop: "), stderr
    return lines[0]


def read_elsewhere(path: Path) -> bytes:
    """The bytes of a file, read by another process: opening and closing a live SQLite file
    here would drop this process's POSIX locks on it, and with them the server's."""
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.stdout.buffer.write(open(sys.argv[1], 'rb').read())",
            str(path),
        ],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout


def add_org(
    register: Register,
    name: str,
    quota: int = 1_000,
    *,
    daily_checks: int = 1_000_000,
    daily_filter_downloads: int = 1_000_000,
) -> str:
    """An organisation whose one daily budget of numbers (both modes) is `quota`; its checks
    and filter downloads are limited far beyond what a test here does, and its rate not at all."""
    limits = Limits(
        daily_quota=quota,
        rate_per_second=0,
        daily_checks=daily_checks,
        daily_filter_downloads=daily_filter_downloads,
    )
    with Accounts(register.store_path) as accounts:
        return accounts.add(name, limits)


def remaining(register: Register, name: str) -> int:
    """Numbers the organisation may still check today, in either mode."""
    with Accounts(register.store_path) as accounts:
        assert accounts.get(name) is not None, name
        return accounts.remaining(name)


def usage(register: Register, name: str) -> Usage:
    with Accounts(register.store_path) as accounts:
        return accounts.usage(name)


def audit_rows(register: Register, organisation: str | None = None) -> list[AuditRecord]:
    """Every row written, in order (read without the keys file: reading needs none)."""
    with Accounts(register.store_path) as accounts:
        return accounts.audit(organisation)


def audit_lines(register: Register, organisation: str | None = None) -> list[AuditRecord]:
    """The audit log as `ndop audit` reads it: one line per check."""
    return summarise(audit_rows(register, organisation))


def rows_of(register: Register, request_id: str) -> list[tuple[str, int]]:
    """(outcome, items_checked) of every row one check wrote, in order."""
    return [
        (row.outcome, row.items_checked)
        for row in audit_rows(register)
        if row.request_id == request_id
    ]


def client(address: str, token: str | None, tmp_path: Path, **extra: Any) -> Client:
    return Client(
        address,
        insecure=True,
        token=token,
        purpose="research",
        workers=1,
        cache_dir=tmp_path / "filters",
        timeout=TIMEOUT,
        **extra,
    )


class Rpc:
    """The raw generated stub, with whatever credentials a test chooses."""

    def __init__(self, channel: grpc.Channel, metadata: Metadata) -> None:
        self.stub = ndop_pb2_grpc.OptOutRegisterStub(channel)
        self.metadata = metadata

    def hashed(self, requests: list[Any]) -> tuple[list[Any], grpc.Call | None]:
        """Every response received before the stream ended, and the error that ended it."""
        call = self.stub.CheckHashed(iter(requests), metadata=self.metadata, timeout=TIMEOUT)
        return _drain(call)

    def evaluate(self, requests: list[Any]) -> tuple[list[Any], grpc.Call | None]:
        call = self.stub.Evaluate(iter(requests), metadata=self.metadata, timeout=TIMEOUT)
        return _drain(call)


def _drain(call: Any) -> tuple[list[Any], grpc.Call | None]:
    received: list[Any] = []
    try:
        for response in call:
            received.append(response)
    except grpc.RpcError as exc:
        assert isinstance(exc, grpc.Call)
        return received, exc
    return received, None


# One register and one server for the module (loading a register takes a moment); every test
# uses organisations of its own, so budgets and audit rows do not mix.


@pytest.fixture(scope="module")
def register(tmp_path_factory: pytest.TempPathFactory) -> Register:
    directory = tmp_path_factory.mktemp("access")
    return make_register(directory, total=3000, opted_out=1000, seed=41)


@pytest.fixture(scope="module")
def token(register: Register) -> str:
    with Accounts(register.store_path) as accounts:
        return accounts.add("test-org", GENEROUS)


@pytest.fixture
def auth_metadata(token: str) -> Metadata:
    return bearer(token)


@pytest.fixture(scope="module")
def address(register: Register, token: str) -> Iterator[str]:
    running = start_server(
        register.store_path, register.keys, "127.0.0.1:0", tls=None, insecure=True
    )
    try:
        yield f"127.0.0.1:{running.port}"
    finally:
        running.stop(grace=1)


@pytest.fixture(autouse=True)
def no_ambient_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every client here names its credentials; none may come from the environment."""
    monkeypatch.delenv("NDOP_TOKEN", raising=False)


@pytest.fixture
def channel(address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(address, options=[("grpc.enable_retries", 0)]) as opened:
        yield opened


def context(
    purpose: str = "research",
    request_id: str | None = None,
    expected: int = 0,
    version: int = 0,
) -> ndop_pb2.CheckContext:
    """A check's context; a fresh UUID as its request id unless the test names one."""
    return ndop_pb2.CheckContext(
        purpose=purpose,
        request_id=fresh_id() if request_id is None else request_id,
        expected_items=expected,
        register_version=version,
    )


def hashed_stream(
    register: Register, batches: list[np.ndarray], **context_fields: Any
) -> list[Any]:
    return [ndop_pb2.HashedCheckRequest(context=context(**context_fields))] + [
        ndop_pb2.HashedCheckRequest(batch_id=i, digests=digests(register, values))
        for i, values in enumerate(batches)
    ]


def evaluate_stream(batches: list[np.ndarray], **context_fields: Any) -> list[Any]:
    """A private check against the module register's one version (a private check names it)."""
    context_fields.setdefault("version", VERSION)
    return [ndop_pb2.EvaluateRequest(context=context(**context_fields))] + [
        ndop_pb2.EvaluateRequest(batch_id=i, blinded_elements=blinded(values))
        for i, values in enumerate(batches)
    ]


def resets_at_candidates() -> set[str]:
    """The next UTC midnight as the server words it (either side of a midnight during the test)."""
    now = datetime.now(UTC).date()
    return {f"{(now + timedelta(days=d)).isoformat()}T00:00:00Z" for d in (1, 2)}


# --- tokens --------------------------------------------------------------------------------------


def test_no_token_is_unauthenticated_in_the_sdk(
    register: Register, address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NDOP_TOKEN", raising=False)
    with client(address, None, tmp_path) as anonymous:
        with pytest.raises(AuthenticationFailed):
            anonymous.info()
        with pytest.raises(AuthenticationFailed):
            anonymous.check(texts(register.opted_out[:3]), mode="hashed")
        with pytest.raises(AuthenticationFailed):
            anonymous.check(texts(register.opted_out[:3]), mode="private")


def test_no_token_is_unauthenticated_on_the_wire(register: Register, channel: grpc.Channel) -> None:
    anonymous = Rpc(channel, ())
    received, error = anonymous.hashed(hashed_stream(register, [register.opted_out[:4]]))
    assert received == []
    assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED
    received, error = anonymous.evaluate(evaluate_stream([register.opted_out[:2]]))
    assert received == []
    assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_cli_without_a_token_exits_3_with_one_sentence(
    register: Register, address: str, tmp_path: Path
) -> None:
    cohort = write_numbers(tmp_path / "cohort.dat", register.opted_out[:5])
    result = ndop(
        tmp_path,
        "check",
        cohort,
        "--server",
        address,
        "--insecure",
        "--out",
        tmp_path / "cleared.dat",
        "--purpose",
        "research",
        "--mode",
        "hashed",
    )
    assert result.returncode == 3, result.stderr
    line = assert_one_sentence(result.stderr)
    assert "credential" in line.lower() or "token" in line.lower(), line
    assert not (tmp_path / "cleared.dat").exists()


@pytest.mark.parametrize(
    "header",
    [
        "Bearer ndop_this-is-not-a-real-token-at-all-0000000000",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "ndop_no-scheme-given",
    ],
)
def test_wrong_token_is_unauthenticated(
    register: Register, channel: grpc.Channel, token: str, header: str
) -> None:
    wrong = Rpc(channel, (("authorization", header),))
    received, error = wrong.hashed(hashed_stream(register, [register.opted_out[:4]]))
    assert received == []
    assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED
    details = error.details() or ""
    assert details
    presented = header.removeprefix("Bearer ").strip()
    if len(presented) > 8:
        assert presented not in details
    assert token not in details


def test_a_near_miss_of_a_real_token_is_unauthenticated(
    register: Register, address: str, token: str, tmp_path: Path
) -> None:
    altered = token[:-1] + ("A" if token[-1] != "A" else "B")
    for candidate in (altered, token + "x", token[:-1], token.upper()):
        with client(address, candidate, tmp_path) as wrong, pytest.raises(AuthenticationFailed):
            wrong.check(texts(register.opted_out[:2]), mode="hashed")


def test_cli_with_a_wrong_token_exits_3(register: Register, address: str, tmp_path: Path) -> None:
    cohort = write_numbers(tmp_path / "cohort.dat", register.opted_out[:5])
    result = ndop(
        tmp_path,
        "check",
        cohort,
        "--server",
        address,
        "--insecure",
        "--out",
        tmp_path / "cleared.dat",
        "--purpose",
        "research",
        "--mode",
        "hashed",
        "--token",
        "ndop_wrong-token-for-this-test",
    )
    assert result.returncode == 3, result.stderr
    line = assert_one_sentence(result.stderr)
    assert "wrong-token-for-this-test" not in line


def test_revoked_token_is_unauthenticated(register: Register, address: str, tmp_path: Path) -> None:
    issued = add_org(register, "soon-revoked")
    with client(address, issued, tmp_path) as before:
        assert before.check(texts(register.opted_out[:3]), mode="hashed").opted_out_count == 3
    with Accounts(register.store_path) as accounts:
        accounts.revoke("soon-revoked")
        revoked = accounts.get("soon-revoked")
        assert revoked is not None and revoked.revoked_at
    with client(address, issued, tmp_path) as after:
        with pytest.raises(AuthenticationFailed):
            after.info()
        with pytest.raises(AuthenticationFailed):
            after.check(texts(register.opted_out[:3]), mode="hashed")


def test_cli_org_revoke_then_check_exits_3(
    register: Register, address: str, token: str, tmp_path: Path
) -> None:
    issued = add_org(register, "cli-revoked")
    cohort = write_numbers(tmp_path / "cohort.dat", register.not_opted_out[:5])
    args: tuple[str | Path, ...] = (
        "check",
        cohort,
        "--server",
        address,
        "--insecure",
        "--out",
        tmp_path / "cleared.dat",
        "--purpose",
        "planning",
        "--mode",
        "hashed",
    )
    assert ndop(tmp_path, *args, token=issued).returncode == 0
    revoke = ndop(tmp_path, "org", "revoke", "cli-revoked", "--store", register.store_path)
    assert revoke.returncode == 0, revoke.stderr
    result = ndop(tmp_path, *args, token=issued)
    assert result.returncode == 3, result.stderr
    assert_one_sentence(result.stderr)
    # revoking one organisation leaves the others alone
    assert ndop(tmp_path, *args, token=token).returncode == 0
    # a second revoke of the same organisation is a one-sentence error, not a traceback
    again = ndop(tmp_path, "org", "revoke", "cli-revoked", "--store", register.store_path)
    assert again.returncode != 0
    assert_one_sentence(again.stderr)


def test_org_add_prints_a_working_token_once(
    register: Register, address: str, tmp_path: Path
) -> None:
    added = ndop(
        tmp_path, "org", "add", "cli-added", "--store", register.store_path, "--daily-quota", "77"
    )
    assert added.returncode == 0, added.stderr
    issued = added.stdout.strip().splitlines()[-1].strip()
    assert issued.startswith("ndop_") and " " not in issued
    assert added.stdout.count(issued) == 1
    with client(address, issued, tmp_path) as organisation:
        result = organisation.check(texts(register.opted_out[:2]), mode="hashed")
    assert result.opted_out_count == 2
    [line] = audit_lines(register, "cli-added")
    assert line.organisation == "cli-added" and line.outcome == "completed"
    assert (line.request_id, line.items_checked) == (result.request_id, 2)
    with Accounts(register.store_path) as accounts:
        created = accounts.get("cli-added")
    assert created is not None
    # one budget for both modes; the limits not given are the defaults
    assert created.limits == Limits(
        daily_quota=77,
        rate_per_second=DEFAULT_LIMITS.rate_per_second,
        daily_checks=DEFAULT_LIMITS.daily_checks,
        daily_filter_downloads=DEFAULT_LIMITS.daily_filter_downloads,
    )
    assert created.daily_quota == 77
    assert remaining(register, "cli-added") == 75


def test_org_list_and_the_store_never_hold_a_token(
    register: Register, token: str, tmp_path: Path
) -> None:
    second = add_org(register, "listed-org")
    listing = ndop(tmp_path, "org", "list", "--store", register.store_path)
    as_json = ndop(tmp_path, "org", "list", "--store", register.store_path, "--json")
    assert listing.returncode == 0 and as_json.returncode == 0
    assert "test-org" in listing.stdout and "listed-org" in listing.stdout
    names = {entry["name"] for entry in json.loads(as_json.stdout)}
    assert names >= {"test-org", "listed-org"}
    for secret in (token, second):
        for output in (listing.stdout, listing.stderr, as_json.stdout, as_json.stderr):
            assert secret not in output
            assert secret.removeprefix("ndop_") not in output
    stored = b"".join(
        read_elsewhere(path)
        for path in register.store_path.parent.iterdir()
        if path.name.startswith(register.store_path.name)
    )
    assert stored, "the store must exist"
    for secret in (token, second):
        assert secret.encode() not in stored
        assert secret.removeprefix("ndop_").encode() not in stored


def test_org_list_json_shows_limits_and_today_s_use(
    register: Register, address: str, tmp_path: Path
) -> None:
    added = ndop(
        tmp_path,
        "org",
        "add",
        "listed-use",
        "--store",
        register.store_path,
        "--daily-quota",
        "300",
        "--rate",
        "0",
        "--daily-checks",
        "9",
        "--daily-filter-downloads",
        "8",
    )
    assert added.returncode == 0, added.stderr
    issued = added.stdout.strip().splitlines()[-1].strip()

    def listed() -> tuple[dict[str, Any], str]:
        as_json = ndop(tmp_path, "org", "list", "--store", register.store_path, "--json")
        table = ndop(tmp_path, "org", "list", "--store", register.store_path)
        assert as_json.returncode == 0, as_json.stderr
        assert table.returncode == 0, table.stderr
        [entry] = [e for e in json.loads(as_json.stdout) if e["name"] == "listed-use"]
        [row] = [line for line in table.stdout.splitlines() if line.startswith("listed-use ")]
        return entry, row

    entry, row = listed()
    limits = {
        "daily_quota": 300,
        "rate_per_second": 0,
        "daily_checks": 9,
        "daily_filter_downloads": 8,
    }
    assert entry["limits"] == limits
    assert entry["today"] == {"numbers": 0, "checks": 0, "filters": 0}
    assert entry["revoked_at"] is None and entry["created_at"]
    assert "0/300" in row and "0/9" in row and "0/8" in row and "active" in row

    with client(address, issued, tmp_path) as organisation:
        organisation.check(texts(register.opted_out[:3]), mode="hashed")
        organisation.check(texts(register.not_opted_out[:2]), mode="private")
    entry, row = listed()
    assert entry["limits"] == limits
    # both modes draw on one count of numbers; the private check downloaded the filter once
    assert entry["today"] == {"numbers": 5, "checks": 2, "filters": 1}
    assert "5/300" in row and "2/9" in row and "1/8" in row, row
    assert issued not in json.dumps(entry) and issued not in row


# --- organisations under mutual TLS --------------------------------------------------------------


def test_token_of_one_org_with_certificate_of_another_is_permission_denied(
    register: Register, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NDOP_TOKEN", raising=False)
    certs = make_dev_certificates(tmp_path / "certs", ["org-a", "org-b"])
    token_a = add_org(register, "org-a")
    token_b = add_org(register, "org-b")
    running = start_server(
        register.store_path,
        register.keys,
        "127.0.0.1:0",
        tls=ServerTls(
            certs.server.cert, certs.server.key, client_ca=certs.ca.cert, require_client_cert=True
        ),
        poll_seconds=0.1,
    )
    try:

        def tls_client(token: str | None, organisation: str) -> Client:
            return Client(
                f"localhost:{running.port}",
                ca_file=certs.ca.cert,
                client_cert=certs.clients[organisation].cert,
                client_key=certs.clients[organisation].key,
                token=token,
                purpose="research",
                timeout=TIMEOUT,
            )

        numbers = texts(register.opted_out[:3])
        with tls_client(token_a, "org-b") as mixed:
            with pytest.raises(PermissionDenied):
                mixed.info()
            with pytest.raises(PermissionDenied):
                mixed.check(numbers, mode="hashed")
        with tls_client(token_b, "org-a") as mixed, pytest.raises(PermissionDenied):
            mixed.check(numbers, mode="hashed")
        with tls_client(token_a, "org-a") as matching:
            assert matching.check(numbers, mode="hashed").opted_out_count == 3
        assert [line.outcome for line in audit_lines(register, "org-a")] == ["completed"]
        assert audit_rows(register, "org-b") == []
    finally:
        running.stop(grace=1)


# --- one daily budget of numbers -----------------------------------------------------------------


def test_check_up_to_the_quota_passes_and_one_more_is_refused(
    register: Register, address: str, tmp_path: Path
) -> None:
    issued = add_org(register, "exact-quota", 40)
    with client(address, issued, tmp_path) as organisation:
        result = organisation.check(texts(register.not_opted_out[:40]), mode="hashed")
        assert result.tally.unique == 40
        assert remaining(register, "exact-quota") == 0
        with pytest.raises(QuotaExceeded) as caught:
            organisation.check(texts(register.not_opted_out[40:41]), mode="hashed")
    message = str(caught.value)
    assert "quota of numbers" in message and "0 left" in message, message
    assert any(reset in message for reset in resets_at_candidates()), message
    assert usage(register, "exact-quota") == Usage(numbers=40, checks=1, filters=0)


def test_check_bigger_than_what_is_left_is_refused_up_front(
    register: Register, address: str, channel: grpc.Channel, tmp_path: Path
) -> None:
    """A check declaring more numbers (expected_items) than are left is refused before any
    batch is looked at, and charges nothing: no numbers, not even the check itself."""
    issued = add_org(register, "up-front", 50)
    with client(address, issued, tmp_path) as organisation:
        organisation.check(texts(register.not_opted_out[:30]), mode="hashed")
        assert remaining(register, "up-front") == 20
        with pytest.raises(QuotaExceeded) as caught:
            organisation.check(texts(register.not_opted_out[30:51]), mode="hashed")
    message = str(caught.value)
    assert "20 left" in message, message
    assert "reset" in message, message
    assert any(reset in message for reset in resets_at_candidates()), message
    charged = Usage(numbers=30, checks=1, filters=0)
    assert usage(register, "up-front") == charged, "a refused check is not charged"

    # on the wire: RESOURCE_EXHAUSTED before any batch is answered, whatever the batches hold
    rpc = Rpc(channel, bearer(issued))
    refused_id = fresh_id()
    received, error = rpc.hashed(
        hashed_stream(
            register,
            [register.opted_out[:10], register.opted_out[10:21]],
            expected=21,
            request_id=refused_id,
        )
    )
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert received == []
    assert "20 left" in (error.details() or "")
    assert usage(register, "up-front") == charged
    # nothing was started or answered: the only row is the refusal
    assert rows_of(register, refused_id) == [("resource-exhausted", 0)]
    # ... in private mode too (one budget)
    received, error = rpc.evaluate(evaluate_stream([register.opted_out[:21]], expected=21))
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert received == []
    assert usage(register, "up-front") == charged

    # a declared check holds its reservation; what it does not use is given back at its close
    under_id = fresh_id()
    received, error = rpc.hashed(
        hashed_stream(register, [register.opted_out[:5]], expected=20, request_id=under_id)
    )
    assert error is None
    assert received[-1].summary.items_checked == 5
    assert rows_of(register, under_id) == [("started", 20), ("answered", 5), ("completed", 5)]
    assert remaining(register, "up-front") == 15

    # what is left can still be used, exactly
    received, error = rpc.hashed(hashed_stream(register, [register.opted_out[:15]], expected=15))
    assert error is None
    assert received[-1].summary.items_checked == 15
    assert remaining(register, "up-front") == 0
    assert usage(register, "up-front") == Usage(numbers=50, checks=3, filters=0)


@pytest.mark.parametrize("mode", ["hashed", "private"])
def test_batch_crossing_the_quota_is_refused_whole(
    register: Register, channel: grpc.Channel, mode: str
) -> None:
    name = f"crossing-{mode}"
    issued = add_org(register, name, 25)
    rpc = Rpc(channel, bearer(issued))
    values = register.opted_out[:30]
    batches = [values[0:10], values[10:20], values[20:30]]
    crossing = fresh_id()
    if mode == "hashed":
        received, error = rpc.hashed(hashed_stream(register, batches, request_id=crossing))
    else:
        received, error = rpc.evaluate(evaluate_stream(batches, request_id=crossing))
    assert error is not None, "the third batch crosses the quota"
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = error.details() or ""
    assert "5 left" in details, details
    assert any(reset in details for reset in resets_at_candidates()), details
    answered = [r.batch for r in received if r.HasField("batch")]
    assert [b.batch_id for b in answered] == [0, 1], "earlier batches answered, not the third"
    assert all(b.count == 10 for b in answered)
    assert not any(r.HasField("summary") for r in received), "no receipt for a refused check"
    assert remaining(register, name) == 5
    # the rows written as the check went: no row for the third batch, which was not answered
    assert rows_of(register, crossing) == [
        ("started", 0),
        ("answered", 10),
        ("answered", 10),
        ("resource-exhausted", 20),
    ]
    [line] = audit_lines(register, name)
    assert (line.request_id, line.mode, line.items_checked, line.outcome) == (
        crossing,
        mode,
        20,
        "resource-exhausted",
    )

    # the five left can be used; the sixth cannot
    if mode == "hashed":
        received, error = rpc.hashed(hashed_stream(register, [values[:5]]))
    else:
        received, error = rpc.evaluate(evaluate_stream([values[:5]]))
    assert error is None
    assert received[-1].summary.items_checked == 5
    if mode == "hashed":
        received, error = rpc.hashed(hashed_stream(register, [values[:1]]))
    else:
        received, error = rpc.evaluate(evaluate_stream([values[:1]]))
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert [r for r in received if r.HasField("batch")] == []
    assert remaining(register, name) == 0


def test_both_modes_draw_on_one_budget(
    register: Register, address: str, channel: grpc.Channel, tmp_path: Path
) -> None:
    """A hashed check and a private check exhaust one daily budget together."""
    issued = add_org(register, "one-budget", 35)
    with client(address, issued, tmp_path) as organisation:
        organisation.check(texts(register.not_opted_out[:20]), mode="hashed")
        assert remaining(register, "one-budget") == 15
        # what hashed mode used is gone for private mode too
        with pytest.raises(QuotaExceeded) as caught:
            organisation.check(texts(register.opted_out[:16]), mode="private")
        assert "15 left" in str(caught.value), caught.value
        result = organisation.check(texts(register.opted_out[:15]), mode="private")
        assert result.opted_out_count == 15
        assert remaining(register, "one-budget") == 0
        with pytest.raises(QuotaExceeded):
            organisation.check(texts(register.opted_out[:1]), mode="hashed")
        with pytest.raises(QuotaExceeded):
            organisation.check(texts(register.opted_out[:1]), mode="private")
    assert usage(register, "one-budget").numbers == 35
    rpc = Rpc(channel, bearer(issued))
    for received, error in (
        rpc.evaluate(evaluate_stream([register.opted_out[:1]])),
        rpc.hashed(hashed_stream(register, [register.opted_out[:1]])),
    ):
        assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert [r for r in received if r.HasField("batch")] == []
    assert [
        (line.mode, line.items_checked, line.outcome)
        for line in audit_lines(register, "one-budget")
        if line.outcome != "filter-download"
    ] == [
        ("hashed", 20, "completed"),
        ("private", 0, "resource-exhausted"),
        ("private", 15, "completed"),
        ("hashed", 0, "resource-exhausted"),
        ("private", 0, "resource-exhausted"),
        ("private", 0, "resource-exhausted"),
        ("hashed", 0, "resource-exhausted"),
    ]


def test_private_check_over_quota_is_always_quota_exceeded(
    register: Register, address: str, tmp_path: Path
) -> None:
    """The SDK turns a refused private-mode check into QuotaExceeded, every time.

    The request generator of a refused stream is closed by gRPC (GeneratorExit at its yield);
    that must never replace the server's answer. Repeated because the closing races the reply.
    """
    issued = add_org(register, "private-refusals", 0)
    outcomes: dict[str, int] = {}
    with client(address, issued, tmp_path) as organisation:
        for _ in range(ATTEMPTS):
            try:
                organisation.check(texts(register.opted_out[:1]), mode="private")
                outcome = "answered"
            except QuotaExceeded:
                outcome = "QuotaExceeded"
            except BaseException as exc:  # GeneratorExit is not an Exception
                outcome = type(exc).__name__
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes == {"QuotaExceeded": ATTEMPTS}, outcomes
    assert usage(register, "private-refusals").numbers == 0


def test_usage_is_counted_per_organisation(
    register: Register, address: str, tmp_path: Path
) -> None:
    first = add_org(register, "first-org", 20)
    second = add_org(register, "second-org", 20)
    with client(address, first, tmp_path) as organisation:
        organisation.check(texts(register.not_opted_out[:20]), mode="hashed")
    assert remaining(register, "first-org") == 0
    assert remaining(register, "second-org") == 20
    with client(address, second, tmp_path) as organisation:
        result = organisation.check(texts(register.not_opted_out[:20]), mode="hashed")
    assert result.tally.unique == 20
    with client(address, first, tmp_path) as organisation, pytest.raises(QuotaExceeded):
        organisation.check(texts(register.not_opted_out[:1]), mode="hashed")


def test_two_organisations_budgets_are_independent(
    register: Register, channel: grpc.Channel
) -> None:
    """One organisation's use in either mode, its refusals and its limits leave another's
    budget and limits as they were."""
    alpha = Rpc(channel, bearer(add_org(register, "alpha-org", 12)))
    beta = Rpc(channel, bearer(add_org(register, "beta-org", 30)))
    values = register.not_opted_out[:30]

    _, error = alpha.hashed(hashed_stream(register, [values[:7]], expected=7))
    assert error is None
    _, error = alpha.evaluate(evaluate_stream([values[:5]], expected=5))
    assert error is None
    _, error = alpha.hashed(hashed_stream(register, [values[:1]], expected=1))
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert usage(register, "alpha-org") == Usage(numbers=12, checks=2, filters=0)
    assert usage(register, "beta-org") == Usage(numbers=0, checks=0, filters=0)
    assert remaining(register, "beta-org") == 30

    # beta may use all of its own budget, in both modes, while alpha has none left
    _, error = beta.evaluate(evaluate_stream([values[:10]], expected=10))
    assert error is None
    received, error = beta.hashed(hashed_stream(register, [values[:20]], expected=20))
    assert error is None and received[-1].summary.items_checked == 20
    assert usage(register, "beta-org") == Usage(numbers=30, checks=2, filters=0)
    assert usage(register, "alpha-org") == Usage(numbers=12, checks=2, filters=0)

    # raising one organisation's limit changes nobody else's
    with Accounts(register.store_path) as accounts:
        accounts.set_limits("alpha-org", daily_quota=20)
        beta_limits = accounts.get("beta-org")
    assert beta_limits is not None and beta_limits.limits.daily_quota == 30
    assert remaining(register, "alpha-org") == 8
    assert remaining(register, "beta-org") == 0
    _, error = beta.hashed(hashed_stream(register, [values[:1]], expected=1))
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    _, error = alpha.hashed(hashed_stream(register, [values[:8]], expected=8))
    assert error is None
    assert remaining(register, "alpha-org") == 0


def test_quota_resets_on_the_next_utc_day(
    register: Register, address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = add_org(register, "daily", 10)
    with client(address, issued, tmp_path) as organisation:
        organisation.check(texts(register.not_opted_out[:6]), mode="hashed")
        organisation.check(texts(register.not_opted_out[6:10]), mode="private")
        with pytest.raises(QuotaExceeded):
            organisation.check(texts(register.not_opted_out[:1]), mode="hashed")
        day = accounts_module.today()
        tomorrow: date = day + timedelta(days=1)
        # the server runs in this process: its store reads the day from accounts.today
        monkeypatch.setattr(accounts_module, "today", lambda: tomorrow)
        assert remaining(register, "daily") == 10
        result = organisation.check(texts(register.not_opted_out[:10]), mode="hashed")
        assert result.tally.unique == 10
        with pytest.raises(QuotaExceeded) as caught:
            organisation.check(texts(register.not_opted_out[:1]), mode="private")
    message = str(caught.value)
    # the reset after "tomorrow"'s usage is midnight UTC at the end of tomorrow
    assert f"{(tomorrow + timedelta(days=1)).isoformat()}T00:00:00Z" in message, message
    with Accounts(register.store_path) as accounts:
        assert accounts.usage("daily", day).numbers == 10
        assert accounts.usage("daily", tomorrow).numbers == 10
        assert accounts.usage("daily", day).checks == 2
        assert accounts.usage("daily", tomorrow).checks == 1


def test_a_reservation_made_before_midnight_is_not_refunded_to_the_next_day(
    register: Register, channel: grpc.Channel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A check that declares 10 numbers just before midnight and sends none after it must not
    hand the next day 10 numbers more than its budget."""
    issued = add_org(register, "midnight", 10)
    rpc = Rpc(channel, bearer(issued))
    release = threading.Event()

    def declared_then_idle() -> Iterator[Any]:
        yield ndop_pb2.HashedCheckRequest(context=context(expected=10))
        release.wait(TIMEOUT)

    call = rpc.stub.CheckHashed(declared_then_idle(), metadata=rpc.metadata, timeout=TIMEOUT)
    try:
        deadline = time.monotonic() + TIMEOUT
        while usage(register, "midnight").numbers != 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert usage(register, "midnight").numbers == 10, "the declared numbers are reserved"
        tomorrow: date = accounts_module.today() + timedelta(days=1)
        monkeypatch.setattr(accounts_module, "today", lambda: tomorrow)
        received, error = rpc.hashed(
            hashed_stream(register, [register.not_opted_out[:10]], expected=10)
        )
        assert error is None and received[-1].summary.items_checked == 10
        assert remaining(register, "midnight") == 0
    finally:
        release.set()
    assert list(call)[-1].summary.items_checked == 0
    assert remaining(register, "midnight") == 0, "tomorrow's budget was used up already"


def test_org_quota_command_changes_the_quota(
    register: Register, address: str, tmp_path: Path
) -> None:
    issued = add_org(register, "adjusted", 5)

    def quota(*options: str) -> subprocess.CompletedProcess[str]:
        return ndop(tmp_path, "org", "quota", "adjusted", "--store", register.store_path, *options)

    with client(address, issued, tmp_path) as organisation:
        organisation.check(texts(register.not_opted_out[:5]), mode="hashed")
        with pytest.raises(QuotaExceeded):
            organisation.check(texts(register.not_opted_out[:10]), mode="private")
        changed = quota("--daily-quota", "15")
        assert changed.returncode == 0, changed.stderr
        assert remaining(register, "adjusted") == 10
        organisation.check(texts(register.not_opted_out[:4]), mode="hashed")
        organisation.check(texts(register.not_opted_out[4:10]), mode="private")
        assert remaining(register, "adjusted") == 0

        # the other limits, each on its own; what is not named stays as it was
        changed = quota("--daily-checks", "2", "--rate", "7", "--daily-filter-downloads", "4")
        assert changed.returncode == 0, changed.stderr
        with Accounts(register.store_path) as accounts:
            adjusted = accounts.get("adjusted")
        assert adjusted is not None
        assert adjusted.limits == Limits(
            daily_quota=15, rate_per_second=7, daily_checks=2, daily_filter_downloads=4
        )
        # three checks answered today: a fourth is over the new limit on checks, not numbers
        changed = quota("--daily-quota", "100")
        assert changed.returncode == 0, changed.stderr
        with pytest.raises(QuotaExceeded) as caught:
            organisation.check(texts(register.not_opted_out[:1]), mode="hashed")
        assert "number of checks" in str(caught.value), caught.value
    assert remaining(register, "adjusted") == 85

    # there is no per-mode quota any more
    per_mode = quota("--daily-quota", "3", "--mode", "private")
    assert per_mode.returncode == 2, per_mode.stderr
    assert "Traceback" not in per_mode.stderr
    nothing = quota()
    assert nothing.returncode != 0
    assert "--daily-quota" in assert_one_sentence(nothing.stderr)
    unknown = ndop(
        tmp_path, "org", "quota", "nobody", "--store", register.store_path, "--daily-quota", "1"
    )
    assert unknown.returncode != 0
    assert_one_sentence(unknown.stderr)
    negative = quota("--daily-quota", "-1")
    assert negative.returncode != 0
    assert "Traceback" not in negative.stderr
    with Accounts(register.store_path) as accounts:
        unchanged = accounts.get("adjusted")
    assert unchanged is not None and unchanged.limits == Limits(
        daily_quota=100, rate_per_second=7, daily_checks=2, daily_filter_downloads=4
    )


# --- purpose -------------------------------------------------------------------------------------


@pytest.mark.parametrize("purpose", ["", "marketing", "RESEARCH", "research "])
def test_missing_or_unknown_purpose_is_invalid_argument(
    register: Register, channel: grpc.Channel, auth_metadata: Metadata, purpose: str
) -> None:
    before = usage(register, "test-org")
    rpc = Rpc(channel, auth_metadata)
    received, error = rpc.hashed(hashed_stream(register, [register.opted_out[:3]], purpose=purpose))
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "purpose" in (error.details() or "")
    assert [r for r in received if r.HasField("batch")] == []
    received, error = rpc.evaluate(evaluate_stream([register.opted_out[:3]], purpose=purpose))
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "purpose" in (error.details() or "")
    assert [r for r in received if r.HasField("batch")] == []
    assert usage(register, "test-org") == before, "a refused check is not charged"


def test_a_batch_before_the_context_has_no_purpose(
    register: Register, channel: grpc.Channel, auth_metadata: Metadata
) -> None:
    rpc = Rpc(channel, auth_metadata)
    stream = [
        ndop_pb2.HashedCheckRequest(batch_id=0, digests=digests(register, register.opted_out[:3]))
    ]
    received, error = rpc.hashed(stream)
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert received == []


def test_cli_and_sdk_require_a_purpose(
    register: Register, address: str, token: str, tmp_path: Path
) -> None:
    cohort = write_numbers(tmp_path / "cohort.dat", register.opted_out[:5])
    base: tuple[str | Path, ...] = (
        "check",
        cohort,
        "--server",
        address,
        "--insecure",
        "--out",
        tmp_path / "cleared.dat",
    )
    missing = ndop(tmp_path, *base, token=token)
    assert missing.returncode == 2
    assert "--purpose" in missing.stderr
    assert "Traceback" not in missing.stderr
    unknown = ndop(tmp_path, *base, "--purpose", "marketing", token=token)
    assert unknown.returncode == 2
    assert "Traceback" not in unknown.stderr
    assert not (tmp_path / "cleared.dat").exists()
    with Client(address, insecure=True, token=token, cache_dir=tmp_path / "c") as undeclared:
        with pytest.raises(UsageError):
            undeclared.check(texts(register.opted_out[:2]), mode="hashed")
        with pytest.raises(UsageError):
            undeclared.check(texts(register.opted_out[:2]), mode="hashed", purpose="marketing")


# --- audit log -----------------------------------------------------------------------------------


def _cancel_after_first_answer(rpc: Rpc, register: Register, request_id: str) -> list[AuditRecord]:
    """A hashed check whose client hangs up after its first batch is answered. The request
    stream stays open until the server has audited the check, so all it can see is the
    cancellation, never an end of stream. Every row the check wrote, once it is closed."""
    release = threading.Event()

    def requests() -> Iterator[Any]:
        yield ndop_pb2.HashedCheckRequest(context=context("consent", request_id))
        yield ndop_pb2.HashedCheckRequest(
            batch_id=0, digests=digests(register, register.opted_out[:7])
        )
        release.wait(TIMEOUT)

    call = rpc.stub.CheckHashed(requests(), metadata=rpc.metadata, timeout=TIMEOUT)
    try:
        first = next(call)
        assert first.batch.count == 7
        call.cancel()
        return _wait_for_close(register, request_id)
    finally:
        release.set()


def _wait_for_close(register: Register, request_id: str) -> list[AuditRecord]:
    """The rows of one check, once its closing row is written."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        rows = [r for r in audit_rows(register) if r.request_id == request_id]
        if (rows and rows[-1].outcome not in CHECK_ROWS) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert rows and rows[-1].outcome not in CHECK_ROWS, f"{request_id} was never closed: {rows}"
    return rows


def test_audit_log_records_every_check(
    register: Register, address: str, channel: grpc.Channel, tmp_path: Path
) -> None:
    started = datetime.now(UTC) - timedelta(seconds=1)
    issued = add_org(register, "audited", 100)
    other = add_org(register, "bystander")
    cohort = np.concatenate([register.opted_out[:4], register.not_opted_out[:6]])
    with client(address, issued, tmp_path) as organisation:
        hashed = organisation.check(texts(cohort), mode="hashed", purpose="research")
        private = organisation.check(texts(cohort[2:8]), mode="private", purpose="planning")
        with pytest.raises(QuotaExceeded):
            organisation.check(texts(register.not_opted_out[:200]), mode="hashed")
    with client(address, other, tmp_path) as bystander:
        bystander.check(texts(cohort[:3]), mode="hashed")
    rpc = Rpc(channel, bearer(issued))
    _, error = rpc.hashed(hashed_stream(register, [cohort], purpose="marketing"))
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, error = rpc.hashed(hashed_stream(register, [cohort], request_id="not-a-uuid"))
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    hung_up = fresh_id()
    cancelled = _cancel_after_first_answer(rpc, register, hung_up)

    # what is written: a row as each check opens, one per batch answered, one as it closes
    rows = audit_rows(register, "audited")
    for request_id, mode, purpose, items, opted_out in (
        (hashed.request_id, "hashed", "research", 10, 4),
        (private.request_id, "private", "planning", 6, None),
    ):
        written = [r for r in rows if r.request_id == request_id]
        assert written[0].outcome == "started" and written[-1].outcome == "completed", written
        assert written[0].items_checked == items, "the started row holds the number declared"
        batches = written[1:-1]
        assert batches and all(r.outcome == "answered" for r in batches), written
        assert sum(r.items_checked for r in batches) == items
        assert written[-1].items_checked == items
        assert written[-1].items_opted_out == opted_out
        for row in written:
            assert (row.organisation, row.mode, row.purpose) == ("audited", mode, purpose)
            assert row.register_version == VERSION
    assert [(r.outcome, r.items_checked, r.items_opted_out) for r in cancelled] == [
        ("started", 0, None),
        ("answered", 7, None),
        ("cancelled", 7, 7),
    ]
    for row in rows:
        assert datetime.fromisoformat(row.at) >= started
    downloads = [r for r in rows if r.outcome == "filter-download"]
    assert [(r.mode, r.register_version) for r in downloads] == [("filter", VERSION)]

    # what is read: one line per check, in the order the checks opened
    lines = summarise(rows)
    assert [line.organisation for line in lines] == ["audited"] * len(lines)
    checks = [line for line in lines if line.outcome != "filter-download"]
    assert [(line.mode, line.purpose, line.items_checked, line.outcome) for line in checks] == [
        ("hashed", "research", 10, "completed"),
        ("private", "planning", 6, "completed"),
        ("hashed", "research", 0, "resource-exhausted"),
        ("hashed", "-", 0, "invalid-argument"),
        ("hashed", "research", 0, "invalid-argument"),
        ("hashed", "consent", 7, "cancelled"),
    ]
    done, evaluated, refused, _, _, hang_up = checks
    assert (done.request_id, done.items_opted_out) == (hashed.request_id, 4)
    assert done.register_version == VERSION
    assert evaluated.request_id == private.request_id
    assert evaluated.items_opted_out is None, "the server cannot know it in private mode"
    assert refused.request_id not in ("-", hashed.request_id, private.request_id)
    assert (hang_up.request_id, hang_up.items_opted_out) == (hung_up, 7)
    # a request id that is not a UUID is never stored; an invalid check has none to show
    assert "not-a-uuid" not in {row.request_id for row in audit_rows(register)}

    # the CLI prints the same lines, filtered by organisation and time, or every row
    everything = ndop(tmp_path, "audit", "--store", register.store_path, "--json")
    assert everything.returncode == 0, everything.stderr
    listed = json.loads(everything.stdout)
    assert {entry["organisation"] for entry in listed} >= {"audited", "bystander"}
    only = ndop(tmp_path, "audit", "--store", register.store_path, "--json", "--org", "audited")
    entries = json.loads(only.stdout)
    assert [e["request_id"] for e in entries] == [line.request_id for line in lines]
    first = next(e for e in entries if e["request_id"] == hashed.request_id)
    assert first == {
        "at": done.at,
        "organisation": "audited",
        "request_id": hashed.request_id,
        "mode": "hashed",
        "purpose": "research",
        "items_checked": 10,
        "items_opted_out": 4,
        "register_version": VERSION,
        "outcome": "completed",
    }
    events = ndop(
        tmp_path, "audit", "--store", register.store_path, "--json", "--org", "audited", "--events"
    )
    assert events.returncode == 0, events.stderr
    assert [
        (e["request_id"], e["outcome"], e["items_checked"]) for e in json.loads(events.stdout)
    ] == [(r.request_id, r.outcome, r.items_checked) for r in rows]
    tomorrow = (datetime.now(UTC).date() + timedelta(days=2)).isoformat()
    yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    later = ndop(tmp_path, "audit", "--store", register.store_path, "--json", "--since", tomorrow)
    assert json.loads(later.stdout) == []
    earlier = ndop(
        tmp_path, "audit", "--store", register.store_path, "--json", "--since", yesterday
    )
    assert len(json.loads(earlier.stdout)) == len(listed)
    table = ndop(tmp_path, "audit", "--store", register.store_path, "--org", "audited")
    assert table.returncode == 0
    assert hashed.request_id in table.stdout and private.request_id in table.stdout
    assert hung_up in table.stdout
    assert "bystander" not in table.stdout
    assert len(table.stdout.strip().splitlines()) == 1 + len(lines), "a header, then a line each"
    for output in (everything.stdout, table.stdout, events.stdout):
        for value in cohort:
            assert f"{int(value):010d}" not in output
        assert issued not in output and other not in output


def test_a_client_that_hangs_up_is_audited_cancelled(
    register: Register, channel: grpc.Channel
) -> None:
    """A check the client cancels mid-stream never completed: no summary or receipt reached
    the client, so its closing row must say so, after the row for the batch it was answered.
    Repeated because gRPC may end the server's request iterator (StopIteration) before it
    reports the cancellation."""
    issued = add_org(register, "hangs-up", 1_000)
    rpc = Rpc(channel, bearer(issued))
    request_ids = [fresh_id() for _ in range(ATTEMPTS)]
    written = [
        [(r.outcome, r.items_checked) for r in _cancel_after_first_answer(rpc, register, rid)]
        for rid in request_ids
    ]
    expected = [("started", 0), ("answered", 7), ("cancelled", 7)]
    wrong = [(i, rows) for i, rows in enumerate(written) if rows != expected]
    assert not wrong, f"{len(wrong)} of {ATTEMPTS} hang-ups audited otherwise: {wrong}"
    lines = audit_lines(register, "hangs-up")
    assert [(line.request_id, line.items_checked, line.outcome) for line in lines] == [
        (rid, 7, "cancelled") for rid in request_ids
    ]
    assert usage(register, "hangs-up").numbers == 7 * ATTEMPTS


def _verify(register: Register, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return ndop(
        tmp_path, "audit", "verify", "--store", register.store_path, "--keys", register.keys_path
    )


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit SET outcome = 'completed'",
        "UPDATE audit SET items_checked = 0 WHERE id = 1",
        "UPDATE audit SET chain = NULL",
        "DELETE FROM audit",
        "DELETE FROM audit WHERE id = 1",
    ],
)
def test_audit_rows_cannot_be_updated_or_deleted(
    register: Register, address: str, token: str, tmp_path: Path, statement: str
) -> None:
    with client(address, token, tmp_path) as organisation:
        organisation.check(texts(register.opted_out[:2]), mode="hashed")
    before = audit_rows(register)
    assert before
    db = sqlite3.connect(register.store_path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute(statement)
        db.commit()
    finally:
        db.close()
    assert audit_rows(register) == before
    verified = _verify(register, tmp_path)
    assert verified.returncode == 0, verified.stderr
    assert "audit chain intact" in verified.stdout


def test_audit_rows_cannot_be_replaced(
    register: Register, address: str, token: str, tmp_path: Path
) -> None:
    """INSERT OR REPLACE deletes the conflicting row without firing DELETE triggers (unless
    recursive_triggers is on): an append-only log must refuse it too."""
    with client(address, token, tmp_path) as organisation:
        organisation.check(texts(register.opted_out[:2]), mode="hashed")
    before = audit_rows(register)
    assert before
    db = sqlite3.connect(register.store_path)
    try:
        (first_id, chain) = db.execute("SELECT id, chain FROM audit ORDER BY id LIMIT 1").fetchone()
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute(
                "INSERT OR REPLACE INTO audit (id, at, organisation, request_id, mode, purpose, "
                "items_checked, items_opted_out, register_version, outcome, chain) "
                "VALUES (?, ?, 'test-org', ?, 'hashed', 'research', 0, 0, 1, 'completed', ?)",
                (first_id, before[0].at, fresh_id(), chain),
            )
        db.commit()
    finally:
        db.close()
    assert audit_rows(register) == before
    verified = _verify(register, tmp_path)
    assert verified.returncode == 0, verified.stderr


# --- request ids ---------------------------------------------------------------------------------


def test_a_reused_request_id_is_already_exists(register: Register, channel: grpc.Channel) -> None:
    """A request id names one check: used again, in either mode, the check is refused before
    any work and nothing is charged; the first check's audit line is left as it was."""
    issued = add_org(register, "reuser", 100)
    rpc = Rpc(channel, bearer(issued))
    request_id = fresh_id()
    received, error = rpc.hashed(
        hashed_stream(register, [register.opted_out[:3]], request_id=request_id)
    )
    assert error is None and received[-1].summary.request_id == request_id
    charged = usage(register, "reuser")
    assert charged == Usage(numbers=3, checks=1, filters=0)
    for received, error in (
        rpc.hashed(hashed_stream(register, [register.opted_out[:3]], request_id=request_id)),
        rpc.evaluate(evaluate_stream([register.opted_out[:3]], request_id=request_id)),
        # the same UUID written in capitals is the same UUID
        rpc.hashed(
            hashed_stream(register, [register.opted_out[:3]], request_id=request_id.upper())
        ),
    ):
        assert error is not None and error.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "request_id" in (error.details() or "")
        assert received == []
    assert usage(register, "reuser") == charged
    # an empty request id is not a reuse: the server makes a fresh one each time
    made = set()
    for _ in range(2):
        received, error = rpc.hashed(
            hashed_stream(register, [register.opted_out[:1]], request_id="")
        )
        assert error is None
        made.add(str(uuid.UUID(received[-1].summary.request_id)))
    assert len(made) == 2 and request_id not in made
    lines = audit_lines(register, "reuser")
    assert [(line.request_id, line.items_checked, line.outcome) for line in lines[:4]] == [
        (request_id, 3, "completed"),
        (request_id, 0, "already-exists"),
        (request_id, 0, "already-exists"),
        (request_id, 0, "already-exists"),
    ]
    assert sorted(line.request_id for line in lines[4:]) == sorted(made)


def test_a_reused_request_id_while_the_first_check_is_open_leaves_its_line_alone(
    register: Register, channel: grpc.Channel
) -> None:
    issued = add_org(register, "concurrent-reuser", 100)
    rpc = Rpc(channel, bearer(issued))
    request_id = fresh_id()
    release = threading.Event()

    def first_check() -> Iterator[Any]:
        yield ndop_pb2.HashedCheckRequest(context=context(request_id=request_id))
        yield ndop_pb2.HashedCheckRequest(
            batch_id=0, digests=digests(register, register.opted_out[:4])
        )
        release.wait(TIMEOUT)

    call = rpc.stub.CheckHashed(first_check(), metadata=rpc.metadata, timeout=TIMEOUT)
    try:
        assert next(call).batch.count == 4
        received, error = rpc.hashed(
            hashed_stream(register, [register.opted_out[:2]], request_id=request_id)
        )
        assert error is not None and error.code() == grpc.StatusCode.ALREADY_EXISTS
        assert received == []
    finally:
        release.set()
    summary = list(call)[-1].summary
    assert summary.items_checked == 4
    assert rows_of(register, request_id) == [
        ("started", 0),
        ("answered", 4),
        ("already-exists", 0),
        ("completed", 4),
    ]
    lines = audit_lines(register, "concurrent-reuser")
    assert [(line.items_checked, line.outcome) for line in lines] == [
        (4, "completed"),
        (0, "already-exists"),
    ]


def test_sdk_errors_are_service_errors(register: Register, address: str, tmp_path: Path) -> None:
    """Every refusal above is a ServiceError, so callers can catch them together (exit code 3)."""
    for error in (AuthenticationFailed, PermissionDenied, QuotaExceeded):
        assert issubclass(error, ServiceError)
        assert error.exit_code == 3
    issued = add_org(register, "exit-codes", 1)
    cohort = write_numbers(tmp_path / "cohort.dat", register.not_opted_out[:5])
    result = ndop(
        tmp_path,
        "check",
        cohort,
        "--server",
        address,
        "--insecure",
        "--out",
        tmp_path / "cleared.dat",
        "--purpose",
        "research",
        "--mode",
        "hashed",
        token=issued,
    )
    assert result.returncode == 3, result.stderr
    line = assert_one_sentence(result.stderr)
    assert "1 left" in line, line
    assert "reset" in line
