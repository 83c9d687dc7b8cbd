"""Access control over a real server: tokens (missing, wrong, revoked), organisations under
mutual TLS, per-organisation per-mode daily quotas and their reset, declared purposes, and the
append-only audit log, through the SDK, the `ndop` CLI and the raw generated stubs.

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
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import ndop_server.accounts as accounts_module
import ndop_server.sessions as sessions_module
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
from ndop_server.accounts import Accounts, AuditRecord
from ndop_server.devcerts import make_dev_certificates
from ndop_server.server import ServerTls, start_server
from tests.conftest import Register, make_register, write_numbers

NDOP = [sys.executable, "-m", "ndop_client.cli.main"]
TIMEOUT = 20.0
Metadata = tuple[tuple[str, str], ...]
ATTEMPTS = 60  # repetitions of a check whose failure depends on how two threads interleave


# --- helpers -----------------------------------------------------------------------------------


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def texts(values: np.ndarray) -> list[str]:
    return [f"{int(v):010d}" for v in values]


def digests(register: Register, values: np.ndarray) -> bytes:
    return Hasher(register.keys.salt).digest_packed(canonical_bytes(values))


def blinded(values: np.ndarray) -> bytes:
    return b"".join(oprf.blind(f"{int(v):010d}".encode())[1] for v in values)


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


def add_org(register: Register, name: str, hashed: int = 1_000, private: int = 1_000) -> str:
    with Accounts(register.store_path) as accounts:
        return accounts.add(name, hashed_quota=hashed, private_quota=private)


def remaining(register: Register, name: str, mode: accounts_module.Mode) -> int:
    with Accounts(register.store_path) as accounts:
        organisation = accounts.get(name)
        assert organisation is not None
        return accounts.remaining(organisation, mode)


def audit_rows(register: Register, organisation: str | None = None) -> list[AuditRecord]:
    with Accounts(register.store_path) as accounts:
        return accounts.audit(organisation)


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
# uses organisations of its own, so quotas and audit rows do not mix.


@pytest.fixture(scope="module")
def register(tmp_path_factory: pytest.TempPathFactory) -> Register:
    directory = tmp_path_factory.mktemp("access")
    return make_register(directory, total=3000, opted_out=1000, seed=41)


@pytest.fixture(scope="module")
def token(register: Register) -> str:
    return add_org(register, "test-org", hashed=10_000_000, private=10_000_000)


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
    purpose: str = "research", request_id: str = "", expected: int = 0
) -> ndop_pb2.CheckContext:
    return ndop_pb2.CheckContext(purpose=purpose, request_id=request_id, expected_items=expected)


def hashed_stream(
    register: Register, batches: list[np.ndarray], **context_fields: Any
) -> list[Any]:
    return [ndop_pb2.HashedCheckRequest(context=context(**context_fields))] + [
        ndop_pb2.HashedCheckRequest(batch_id=i, digests=digests(register, values))
        for i, values in enumerate(batches)
    ]


def evaluate_stream(batches: list[np.ndarray], **context_fields: Any) -> list[Any]:
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
    [row] = audit_rows(register, "cli-added")
    assert row.organisation == "cli-added" and row.outcome == "completed"
    with Accounts(register.store_path) as accounts:
        created = accounts.get("cli-added")
    assert created is not None
    assert (created.hashed_daily_quota, created.private_daily_quota) == (77, 77)


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
        assert [r.outcome for r in audit_rows(register, "org-a")] == ["completed"]
        assert audit_rows(register, "org-b") == []
    finally:
        running.stop(grace=1)


# --- quotas --------------------------------------------------------------------------------------


def test_check_up_to_the_quota_passes_and_one_more_is_refused(
    register: Register, address: str, tmp_path: Path
) -> None:
    issued = add_org(register, "exact-quota", hashed=40, private=40)
    with client(address, issued, tmp_path) as organisation:
        result = organisation.check(texts(register.not_opted_out[:40]), mode="hashed")
        assert result.tally.unique == 40
        assert remaining(register, "exact-quota", "hashed") == 0
        with pytest.raises(QuotaExceeded) as caught:
            organisation.check(texts(register.not_opted_out[40:41]), mode="hashed")
    message = str(caught.value)
    assert "0 numbers left" in message, message
    assert any(reset in message for reset in resets_at_candidates()), message


def test_check_bigger_than_what_is_left_is_refused_up_front(
    register: Register, address: str, channel: grpc.Channel, tmp_path: Path
) -> None:
    issued = add_org(register, "up-front", hashed=50, private=50)
    with client(address, issued, tmp_path) as organisation:
        organisation.check(texts(register.not_opted_out[:30]), mode="hashed")
        assert remaining(register, "up-front", "hashed") == 20
        with pytest.raises(QuotaExceeded) as caught:
            organisation.check(texts(register.not_opted_out[30:51]), mode="hashed")
    message = str(caught.value)
    assert "20 numbers left" in message, message
    assert "reset" in message, message
    assert any(reset in message for reset in resets_at_candidates()), message
    assert remaining(register, "up-front", "hashed") == 20, "a refused check is not charged"

    # on the wire: RESOURCE_EXHAUSTED before any batch is answered
    rpc = Rpc(channel, bearer(issued))
    received, error = rpc.hashed(
        hashed_stream(register, [register.opted_out[:10], register.opted_out[10:21]], expected=21)
    )
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert [r for r in received if r.HasField("batch")] == []
    assert "20" in (error.details() or "")
    assert remaining(register, "up-front", "hashed") == 20

    # what is left can still be used, exactly
    received, error = rpc.hashed(hashed_stream(register, [register.opted_out[:20]], expected=20))
    assert error is None
    assert received[-1].summary.items_checked == 20
    assert remaining(register, "up-front", "hashed") == 0


@pytest.mark.parametrize("mode", ["hashed", "private"])
def test_batch_crossing_the_quota_is_refused_whole(
    register: Register, channel: grpc.Channel, mode: str
) -> None:
    name = f"crossing-{mode}"
    issued = add_org(register, name, hashed=25, private=25)
    rpc = Rpc(channel, bearer(issued))
    values = register.opted_out[:30]
    batches = [values[0:10], values[10:20], values[20:30]]
    if mode == "hashed":
        received, error = rpc.hashed(hashed_stream(register, batches, request_id="crossing"))
    else:
        received, error = rpc.evaluate(evaluate_stream(batches, request_id="crossing"))
    assert error is not None, "the third batch crosses the quota"
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = error.details() or ""
    assert "5 numbers left" in details, details
    assert any(reset in details for reset in resets_at_candidates()), details
    answered = [r.batch for r in received if r.HasField("batch")]
    assert [b.batch_id for b in answered] == [0, 1], "earlier batches answered, not the third"
    assert all(b.count == 10 for b in answered)
    assert not any(r.HasField("summary") for r in received), "no receipt for a refused check"
    assert remaining(register, name, mode) == 5  # type: ignore[arg-type]

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


def test_usage_is_counted_per_mode(
    register: Register, address: str, channel: grpc.Channel, tmp_path: Path
) -> None:
    issued = add_org(register, "per-mode", hashed=20, private=15)
    with client(address, issued, tmp_path) as organisation:
        organisation.check(texts(register.not_opted_out[:20]), mode="hashed")
        assert remaining(register, "per-mode", "hashed") == 0
        assert remaining(register, "per-mode", "private") == 15
        result = organisation.check(texts(register.opted_out[:15]), mode="private")
        assert result.opted_out_count == 15
        assert remaining(register, "per-mode", "private") == 0
        with pytest.raises(QuotaExceeded):
            organisation.check(texts(register.opted_out[:1]), mode="hashed")
    rpc = Rpc(channel, bearer(issued))
    received, error = rpc.evaluate(evaluate_stream([register.opted_out[:1]]))
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert [r for r in received if r.HasField("batch")] == []


def test_private_check_over_quota_is_always_quota_exceeded(
    register: Register, address: str, tmp_path: Path
) -> None:
    """The SDK turns a refused private-mode check into QuotaExceeded, every time.

    The request generator of a refused stream is closed by gRPC (GeneratorExit at its yield);
    that must never replace the server's answer. Repeated because the closing races the reply.
    """
    issued = add_org(register, "private-refusals", hashed=0, private=0)
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


def test_usage_is_counted_per_organisation(
    register: Register, address: str, tmp_path: Path
) -> None:
    first = add_org(register, "first-org", hashed=20, private=20)
    second = add_org(register, "second-org", hashed=20, private=20)
    with client(address, first, tmp_path) as organisation:
        organisation.check(texts(register.not_opted_out[:20]), mode="hashed")
    assert remaining(register, "first-org", "hashed") == 0
    assert remaining(register, "second-org", "hashed") == 20
    with client(address, second, tmp_path) as organisation:
        result = organisation.check(texts(register.not_opted_out[:20]), mode="hashed")
    assert result.tally.unique == 20
    with client(address, first, tmp_path) as organisation, pytest.raises(QuotaExceeded):
        organisation.check(texts(register.not_opted_out[:1]), mode="hashed")


def test_quota_resets_on_the_next_utc_day(
    register: Register, address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = add_org(register, "daily", hashed=10, private=10)
    with client(address, issued, tmp_path) as organisation:
        organisation.check(texts(register.not_opted_out[:10]), mode="hashed")
        with pytest.raises(QuotaExceeded):
            organisation.check(texts(register.not_opted_out[:1]), mode="hashed")
        day = accounts_module.today()
        tomorrow: date = day + timedelta(days=1)
        monkeypatch.setattr(accounts_module, "today", lambda: tomorrow)
        # sessions imported `today` by name to word the up-front refusal; keep it in step
        monkeypatch.setattr(sessions_module, "today", lambda: tomorrow)
        assert remaining(register, "daily", "hashed") == 10
        result = organisation.check(texts(register.not_opted_out[:10]), mode="hashed")
        assert result.tally.unique == 10
        with pytest.raises(QuotaExceeded) as caught:
            organisation.check(texts(register.not_opted_out[:1]), mode="hashed")
    message = str(caught.value)
    # the reset after "tomorrow"'s usage is midnight UTC at the end of tomorrow
    assert f"{(tomorrow + timedelta(days=1)).isoformat()}T00:00:00Z" in message, message


def test_org_quota_command_changes_the_quota(
    register: Register, address: str, tmp_path: Path
) -> None:
    issued = add_org(register, "adjusted", hashed=5, private=5)
    with client(address, issued, tmp_path) as organisation:
        organisation.check(texts(register.not_opted_out[:5]), mode="hashed")
        with pytest.raises(QuotaExceeded):
            organisation.check(texts(register.not_opted_out[:10]), mode="hashed")
        changed = ndop(
            tmp_path,
            "org",
            "quota",
            "adjusted",
            "--store",
            register.store_path,
            "--daily-quota",
            "15",
        )
        assert changed.returncode == 0, changed.stderr
        assert remaining(register, "adjusted", "hashed") == 10
        assert remaining(register, "adjusted", "private") == 15
        organisation.check(texts(register.not_opted_out[:10]), mode="hashed")
        only_private = ndop(
            tmp_path,
            "org",
            "quota",
            "adjusted",
            "--store",
            register.store_path,
            "--daily-quota",
            "3",
            "--mode",
            "private",
        )
        assert only_private.returncode == 0, only_private.stderr
    with Accounts(register.store_path) as accounts:
        adjusted = accounts.get("adjusted")
    assert adjusted is not None
    assert (adjusted.hashed_daily_quota, adjusted.private_daily_quota) == (15, 3)
    unknown = ndop(
        tmp_path, "org", "quota", "nobody", "--store", register.store_path, "--daily-quota", "1"
    )
    assert unknown.returncode != 0
    assert_one_sentence(unknown.stderr)
    negative = ndop(
        tmp_path, "org", "quota", "adjusted", "--store", register.store_path, "--daily-quota", "-1"
    )
    assert negative.returncode != 0
    assert "Traceback" not in negative.stderr


# --- purpose -------------------------------------------------------------------------------------


@pytest.mark.parametrize("purpose", ["", "marketing", "RESEARCH", "research "])
def test_missing_or_unknown_purpose_is_invalid_argument(
    register: Register, channel: grpc.Channel, auth_metadata: Metadata, purpose: str
) -> None:
    rpc = Rpc(channel, auth_metadata)
    received, error = rpc.hashed(hashed_stream(register, [register.opted_out[:3]], purpose=purpose))
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "purpose" in (error.details() or "")
    assert [r for r in received if r.HasField("batch")] == []
    received, error = rpc.evaluate(evaluate_stream([register.opted_out[:3]], purpose=purpose))
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [r for r in received if r.HasField("batch")] == []


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


def _cancel_after_first_answer(rpc: Rpc, register: Register, request_id: str) -> AuditRecord:
    """A hashed check whose client hangs up after its first batch is answered. The request
    stream stays open until the server has audited the check, so all it can see is the
    cancellation, never an end of stream."""
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
        return _wait_for_audit(register, request_id)
    finally:
        release.set()


def _wait_for_audit(register: Register, request_id: str) -> AuditRecord:
    deadline = time.monotonic() + TIMEOUT
    while True:
        rows = [r for r in audit_rows(register) if r.request_id == request_id]
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(rows) == 1, f"no audit record for {request_id}"
    return rows[0]


def test_audit_log_records_every_check(
    register: Register, address: str, channel: grpc.Channel, tmp_path: Path
) -> None:
    started = datetime.now(UTC) - timedelta(seconds=1)
    issued = add_org(register, "audited", hashed=100, private=100)
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
    _, error = rpc.hashed(hashed_stream(register, [cohort], purpose="marketing", request_id="bad"))
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    cancelled = _cancel_after_first_answer(rpc, register, "hung-up")

    rows = audit_rows(register, "audited")
    assert len(rows) == 5, rows
    by_id = {row.request_id: row for row in rows}
    done = by_id[hashed.request_id]
    assert done.organisation == "audited"
    assert (done.mode, done.purpose, done.items_checked) == ("hashed", "research", 10)
    assert done.items_opted_out == 4
    assert done.register_version == 1 and done.outcome == "completed"
    evaluated = by_id[private.request_id]
    assert (evaluated.mode, evaluated.purpose, evaluated.items_checked) == (
        "private",
        "planning",
        6,
    )
    assert evaluated.items_opted_out is None, "the server cannot know it in private mode"
    assert evaluated.register_version == 1 and evaluated.outcome == "completed"
    refused = [row for row in rows if "quota" in row.outcome or "exhausted" in row.outcome]
    assert len(refused) == 1, rows
    assert refused[0].items_checked == 0 and refused[0].mode == "hashed"
    invalid = by_id["bad"]
    assert "invalid" in invalid.outcome and invalid.items_checked == 0
    # (its outcome is checked, repeatedly, in test_a_client_that_hangs_up_is_audited_cancelled)
    assert cancelled.organisation == "audited" and cancelled.mode == "hashed"
    assert (cancelled.items_checked, cancelled.purpose) == (7, "consent")
    assert cancelled.items_opted_out == 7
    for row in rows:
        assert datetime.fromisoformat(row.at) >= started

    # the CLI prints the same records, filtered by organisation and time
    everything = ndop(tmp_path, "audit", "--store", register.store_path, "--json")
    assert everything.returncode == 0, everything.stderr
    listed = json.loads(everything.stdout)
    assert {entry["organisation"] for entry in listed} >= {"audited", "bystander"}
    only = ndop(tmp_path, "audit", "--store", register.store_path, "--json", "--org", "audited")
    entries = json.loads(only.stdout)
    assert [e["request_id"] for e in entries] == [row.request_id for row in rows]
    first = next(e for e in entries if e["request_id"] == hashed.request_id)
    assert first == {
        "at": done.at,
        "organisation": "audited",
        "request_id": hashed.request_id,
        "mode": "hashed",
        "purpose": "research",
        "items_checked": 10,
        "items_opted_out": 4,
        "register_version": 1,
        "outcome": "completed",
    }
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
    assert "bystander" not in table.stdout
    for output in (everything.stdout, table.stdout):
        for value in cohort:
            assert f"{int(value):010d}" not in output
        assert issued not in output and other not in output


def test_a_client_that_hangs_up_is_audited_cancelled(
    register: Register, channel: grpc.Channel
) -> None:
    """A check the client cancels mid-stream never completed: no summary or receipt reached
    the client, so its audit record must say so. Repeated because gRPC may end the server's
    request iterator (StopIteration) before it reports the cancellation."""
    issued = add_org(register, "hangs-up", hashed=1_000, private=1_000)
    rpc = Rpc(channel, bearer(issued))
    outcomes = [
        _cancel_after_first_answer(rpc, register, f"hang-up-{i}").outcome for i in range(ATTEMPTS)
    ]
    wrong = [(i, outcome) for i, outcome in enumerate(outcomes) if outcome != "cancelled"]
    assert not wrong, f"{len(wrong)} of {ATTEMPTS} hang-ups audited otherwise: {wrong}"


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit SET outcome = 'completed'",
        "UPDATE audit SET items_checked = 0 WHERE id = 1",
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
        (first_id,) = db.execute("SELECT min(id) FROM audit").fetchone()
        with pytest.raises(sqlite3.DatabaseError):
            db.execute(
                "INSERT OR REPLACE INTO audit (id, at, organisation, request_id, mode, purpose, "
                "items_checked, items_opted_out, register_version, outcome) "
                "VALUES (?, ?, 'test-org', 'forged', 'hashed', 'research', 0, 0, 1, 'completed')",
                (first_id, before[0].at),
            )
            db.commit()
    finally:
        db.close()
    assert audit_rows(register) == before


def test_sdk_errors_are_service_errors(register: Register, address: str, tmp_path: Path) -> None:
    """Every refusal above is a ServiceError, so callers can catch them together (exit code 3)."""
    for error in (AuthenticationFailed, PermissionDenied, QuotaExceeded):
        assert issubclass(error, ServiceError)
        assert error.exit_code == 3
    issued = add_org(register, "exit-codes", hashed=1, private=1)
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
    assert "1 numbers left" in line or "1 number left" in line, line
    assert "reset" in line
