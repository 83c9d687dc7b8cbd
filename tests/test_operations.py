"""Operating the register: rotating tokens and keys without losing organisations, usage or
audit; reinstating an organisation; backing a running store up and restoring it. Real
servers on loopback, the real `ndop` command."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ndop_client import AuthenticationFailed, Client, Status
from ndop_server import keys as keyfile
from ndop_server.accounts import Accounts
from ndop_server.audit_view import summarise
from ndop_server.server import RunningServer, start_server
from ndop_server.store import Store
from tests.conftest import Register, write_numbers

NDOP = [sys.executable, "-m", "ndop_client"]


def ndop(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NDOP, *map(str, args)], capture_output=True, text=True, timeout=300, check=False
    )


def _token_from(output: str) -> str:
    return output.strip().splitlines()[-1]


def _serve(register: Register) -> RunningServer:
    keys = keyfile.load(register.keys_path)
    return start_server(
        register.location, keys, "127.0.0.1:0", tls=None, insecure=True, poll_seconds=0.1
    )


def _numbers(register: Register) -> tuple[list[str], list[Status]]:
    cohort = [f"{int(v):010d}" for v in register.opted_out[:20]]
    cohort += [f"{int(v):010d}" for v in register.not_opted_out[:20]]
    return cohort, [Status.OPTED_OUT] * 20 + [Status.CLEARED] * 20


def _check(register: Register, address: str, token: str, mode: str, cache: Path) -> list[Status]:
    cohort, _ = _numbers(register)
    with Client(address, insecure=True, token=token, purpose="research", cache_dir=cache) as c:
        return c.check(cohort, mode=mode).statuses  # type: ignore[arg-type]


@pytest.fixture
def running(register: Register) -> Iterator[RunningServer]:
    server = _serve(register)
    try:
        yield server
    finally:
        server.stop(grace=1)


def _address(server: RunningServer) -> str:
    return f"127.0.0.1:{server.port}"


# --- tokens ----------------------------------------------------------------------------------


def test_a_rotated_token_works_and_the_old_one_is_refused(
    register: Register, running: RunningServer, tmp_path: Path
) -> None:
    old = _token_from(ndop("org", "add", "rotor", "--store", register.location).stdout)
    address = _address(running)
    expected = _numbers(register)[1]
    assert _check(register, address, old, "hashed", tmp_path) == expected
    rotated = ndop("org", "token", "rotor", "--rotate", "--store", register.location)
    assert rotated.returncode == 0, rotated.stderr
    assert "the old token is refused from now on" in rotated.stdout
    new = _token_from(rotated.stdout)
    assert new != old
    assert _check(register, address, new, "hashed", tmp_path) == expected
    with pytest.raises(AuthenticationFailed):
        _check(register, address, old, "hashed", tmp_path)


def test_the_old_token_works_for_the_grace_period_only(
    register: Register, running: RunningServer, tmp_path: Path
) -> None:
    old = _token_from(ndop("org", "add", "graceful", "--store", register.location).stdout)
    address = _address(running)
    rotated = ndop(
        "org",
        "token",
        "graceful",
        "--rotate",
        "--grace-hours",
        "0.0005",
        "--store",
        register.location,
    )  # 1.8 seconds
    new = _token_from(rotated.stdout)
    expected = _numbers(register)[1]
    assert _check(register, address, old, "hashed", tmp_path) == expected
    assert _check(register, address, new, "hashed", tmp_path) == expected
    time.sleep(2.0)
    with pytest.raises(AuthenticationFailed):
        _check(register, address, old, "hashed", tmp_path)
    assert _check(register, address, new, "hashed", tmp_path) == expected


def test_a_revoked_organisation_is_reinstated_with_a_new_token_and_its_history(
    register: Register, running: RunningServer, tmp_path: Path
) -> None:
    old = _token_from(ndop("org", "add", "prodigal", "--store", register.location).stdout)
    address = _address(running)
    _check(register, address, old, "hashed", tmp_path)
    assert ndop("org", "revoke", "prodigal", "--store", register.location).returncode == 0
    with pytest.raises(AuthenticationFailed):
        _check(register, address, old, "hashed", tmp_path)
    back = ndop("org", "reinstate", "prodigal", "--store", register.location)
    assert back.returncode == 0, back.stderr
    new = _token_from(back.stdout)
    assert _check(register, address, new, "hashed", tmp_path) == _numbers(register)[1]
    with pytest.raises(AuthenticationFailed):
        _check(register, address, old, "hashed", tmp_path)
    with Accounts(register.location) as accounts:
        assert accounts.usage("prodigal").numbers == 80
        assert [line.outcome for line in summarise(accounts.audit("prodigal"))] == [
            "completed",
            "completed",
        ]
    again = ndop("org", "reinstate", "prodigal", "--store", register.location)
    assert again.returncode == 2 and "no revoked organisation" in again.stderr


# --- keys ------------------------------------------------------------------------------------


def test_rotating_the_signing_key_keeps_old_receipts_verifiable(
    register: Register, tmp_path: Path
) -> None:
    token = _token_from(ndop("org", "add", "signed", "--store", register.location).stdout)
    cohort = write_numbers(tmp_path / "cohort.dat", register.opted_out[:5])
    old_public = ndop("keys", "public", "--keys", register.keys_path).stdout.strip()
    receipts = []
    for round_ in ("before", "after"):
        server = _serve(register)
        try:
            report = tmp_path / f"report-{round_}.json"
            checked = ndop(
                "check",
                cohort,
                "--server",
                _address(server),
                "--insecure",
                "--mode",
                "hashed",
                "--purpose",
                "research",
                "--out",
                tmp_path / f"out-{round_}.dat",
                "--report",
                report,
                "--token",
                token,
            )
            assert checked.returncode == 0, checked.stderr
            receipts.append(tmp_path / f"report-{round_}.receipt.json")
        finally:
            server.stop(grace=1)
        if round_ == "before":
            rotated = ndop("keys", "rotate", "--signing", "--keys", register.keys_path)
            assert rotated.returncode == 0, rotated.stderr
    new_public = ndop("keys", "public", "--keys", register.keys_path).stdout.strip()
    assert new_public != old_public
    listed = ndop("keys", "public", "--all", "--keys", register.keys_path).stdout.splitlines()
    assert [line.split()[0] for line in listed] == [new_public, old_public]
    assert [line.split()[-1] for line in listed] == ["current", "retired"]
    for receipt, key in zip(receipts, (old_public, new_public), strict=True):
        verified = ndop("receipt", "verify", receipt, "--public-key", key)
        assert verified.returncode == 0, verified.stderr
    wrong = ndop("receipt", "verify", receipts[0], "--public-key", new_public)
    assert wrong.returncode == 1


def test_rotating_the_register_secrets_keeps_organisations_usage_and_audit(
    register: Register, tmp_path: Path
) -> None:
    token = _token_from(ndop("org", "add", "steadfast", "--store", register.location).stdout)
    cohort, expected = _numbers(register)
    snapshot = write_numbers(tmp_path / "current.dat", register.opted_out)
    before = keyfile.load(register.keys_path)
    server = _serve(register)
    address = _address(server)
    try:
        with Client(
            address, insecure=True, token=token, purpose="research", cache_dir=tmp_path / "cache"
        ) as client:
            assert client.check(cohort, mode="private").statuses == expected
            rotated = ndop(
                "keys",
                "rotate",
                "--register",
                "--keys",
                register.keys_path,
                "--store",
                register.location,
                "--snapshot",
                snapshot,
            )
            assert rotated.returncode == 0, rotated.stderr
            time.sleep(0.5)
            # A server still holding the old keys keeps serving what its keys can answer.
            assert client.info().version == 1
            assert client.check(cohort, mode="hashed").statuses == expected
    finally:
        server.stop(grace=1)
    after = keyfile.load(register.keys_path)
    assert (after.salt, after.oprf_key) != (before.salt, before.oprf_key)
    assert after.signing_seed == before.signing_seed
    assert after.register_id == before.register_id
    assert keyfile.load(Path(f"{register.keys_path}.previous")) == before

    server = _serve(register)
    try:
        with Client(
            _address(server),
            insecure=True,
            token=token,
            purpose="research",
            cache_dir=tmp_path / "cache",
        ) as client:
            info = client.info()
            assert info.version == 2 and info.oprf_key_id == after.oprf_key_id
            for mode in ("private", "hashed"):
                result = client.check(cohort, mode=mode)
                assert result.statuses == expected and result.register_version == 2
    finally:
        server.stop(grace=1)
    with Accounts(register.location) as accounts:
        assert accounts.usage("steadfast").numbers == 160
        lines = summarise(accounts.audit("steadfast"))
    assert [(line.mode, line.register_version, line.outcome) for line in lines] == [
        ("filter", 1, "filter-download"),
        ("private", 1, "completed"),
        ("hashed", 1, "completed"),
        ("filter", 2, "filter-download"),
        ("private", 2, "completed"),
        ("hashed", 2, "completed"),
    ]
    verified = ndop("audit", "verify", "--store", register.location, "--keys", register.keys_path)
    assert verified.returncode == 0, verified.stderr


def test_rotating_the_register_without_a_snapshot_is_one_sentence(register: Register) -> None:
    refused = ndop("keys", "rotate", "--register", "--keys", register.keys_path)
    assert refused.returncode == 2
    assert refused.stderr.strip() == "ndop: --register needs --store STORE and --snapshot FILE"


# --- backups ---------------------------------------------------------------------------------


def test_an_online_backup_under_load_restores_everything_it_saw(
    register: Register, running: RunningServer, tmp_path: Path
) -> None:
    token = _token_from(ndop("org", "add", "busy", "--store", register.location).stdout)
    address = _address(running)
    stop = threading.Event()
    checks: list[int] = []

    def load() -> None:
        while not stop.is_set() and len(checks) < 200:
            _check(register, address, token, "hashed", tmp_path)
            checks.append(1)

    worker = threading.Thread(target=load)
    worker.start()
    try:
        while len(checks) < 5:
            time.sleep(0.02)
        backup = tmp_path / "backup.sqlite3"
        made = ndop("store", "backup", backup, "--store", register.location)
        assert made.returncode == 0, made.stderr
    finally:
        stop.set()
        worker.join()
    assert backup.stat().st_mode & 0o777 == 0o600
    restored = tmp_path / "restored.sqlite3"
    restored.write_bytes(backup.read_bytes())
    with Store(restored) as copied_store, Store(register.location) as live_store:
        assert copied_store.history() == live_store.history()
    with Accounts(restored) as copy, Accounts(register.location) as live:
        assert [o.name for o in copy.organisations()] == [o.name for o in live.organisations()]
        copied, current = copy.audit(), live.audit()
        assert copied and copied == current[: len(copied)], "the backup is a prefix of the log"
        assert copy.usage("busy").numbers >= 5 * 40
        assert copy.verify_audit(register.keys.audit_key).intact
    server = start_server(
        restored, register.keys, "127.0.0.1:0", tls=None, insecure=True, poll_seconds=0.1
    )
    try:
        assert (
            _check(register, _address(server), token, "private", tmp_path) == _numbers(register)[1]
        )
    finally:
        server.stop(grace=1)
    again = ndop("store", "backup", backup, "--store", register.location)
    assert again.returncode == 2 and "exists already" in again.stderr
