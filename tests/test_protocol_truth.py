"""Versions named truthfully and schemes negotiated.

Against the real server: a private check names the version of its filter, is refused
FAILED_PRECONDITION before any work when that version is not held, and every answer and the
receipt name it even when the register moves on mid-check. Against a relay that lies or speaks
another dialect: the SDK refuses it with one typed, one-sentence error (exit code 3 from the
CLI), never a Python built-in exception.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from ndop_client import Client, IntegrityError, NdopError, RequestRejected, Status
from ndop_client.cli.main import main as ndop_main
from ndop_core.crypto import oprf
from ndop_core.errors import FilterOutdated, UnsupportedServer
from ndop_core.proto import ndop_pb2, ndop_pb2_grpc
from ndop_server.accounts import Accounts
from ndop_server.register import Publisher
from ndop_server.server import RunningServer
from ndop_server.store import Store
from tests.conftest import Register, write_numbers
from tests.relay import Hooks, relay

TIMEOUT = 30.0
Metadata = tuple[tuple[str, str], ...]


def _canonical(values: np.ndarray) -> list[str]:
    return [f"{int(v):010d}" for v in values.tolist()]


def _element(seed: bytes) -> bytes:
    return oprf.blind(seed)[1]


def _publish_removal(register: Register, tmp_path: Path, values: np.ndarray, name: str) -> int:
    with Store(register.store_path) as store:
        published = Publisher(store, register.keys, workers=1).apply_changes(
            None, write_numbers(tmp_path / name, values)
        )
    return published.record.version


def _wait_for(server: RunningServer, version: int) -> None:
    deadline = time.monotonic() + 30
    while (current := server.holder.current) is None or current.version != version:
        assert time.monotonic() < deadline, f"the server never served version {version}"
        time.sleep(0.02)


def _evaluate(
    address: str, metadata: Metadata, requests: Iterator[ndop_pb2.EvaluateRequest]
) -> tuple[list[Any], grpc.Call | None]:
    with grpc.insecure_channel(address) as channel:
        call = ndop_pb2_grpc.OptOutRegisterStub(channel).Evaluate(
            requests, metadata=metadata, timeout=TIMEOUT
        )
        received: list[Any] = []
        try:
            received.extend(call)
        except grpc.RpcError as exc:
            assert isinstance(exc, grpc.Call)
            return received, exc
        return received, None


def _context(version: int) -> ndop_pb2.CheckContext:
    return ndop_pb2.CheckContext(
        purpose="research",
        request_id=str(uuid.uuid4()),
        register_version=version,
    )


def _used(register: Register) -> int:
    with Accounts(register.store_path) as accounts:
        return accounts.usage("test-org").numbers


# --- the server names the version a check tests against -------------------------------


@pytest.mark.parametrize("version", [0, 999])
def test_evaluate_naming_no_held_version_is_refused_before_any_work(
    register: Register,
    server: RunningServer,
    address: str,
    auth_metadata: Metadata,
    version: int,
) -> None:
    used_before = _used(register)
    requests = iter(
        [
            ndop_pb2.EvaluateRequest(context=_context(version)),
            ndop_pb2.EvaluateRequest(batch_id=0, blinded_elements=_element(b"9990000018") * 4),
        ]
    )
    received, error = _evaluate(address, auth_metadata, requests)
    assert received == []
    assert error is not None
    if version == 0:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "must name the register version" in (error.details() or "")
    else:
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error.details() == (
            "register version 999 is not served here; download the current filter and check again"
        )
    assert _used(register) == used_before, "a refused check was charged"
    with Accounts(register.store_path) as accounts:
        rows = accounts.audit()
    last = rows[-1]
    assert last.items_checked == 0
    assert last.outcome == ("invalid-argument" if version == 0 else "failed-precondition")
    assert [r.outcome for r in rows if r.request_id == last.request_id] == [last.outcome], (
        "a check refused before it opened leaves one row, and no started row"
    )


def test_evaluate_naming_a_version_no_longer_held_is_refused(
    register: Register, server: RunningServer, address: str, auth_metadata: Metadata, tmp_path: Path
) -> None:
    # The server holds the version it serves and the one it served before: once it has
    # served 2 and then 3, version 1 is gone.
    _wait_for(server, _publish_removal(register, tmp_path, register.opted_out[:5], "first.dat"))
    latest = _publish_removal(register, tmp_path, register.opted_out[5:10], "second.dat")
    _wait_for(server, latest)
    requests = iter([ndop_pb2.EvaluateRequest(context=_context(1))])
    received, error = _evaluate(address, auth_metadata, requests)
    assert received == [] and error is not None
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "download the current filter" in (error.details() or "")


def test_every_answer_and_the_receipt_name_the_named_version_while_the_register_moves(
    register: Register, server: RunningServer, address: str, auth_metadata: Metadata, tmp_path: Path
) -> None:
    first_answered = threading.Event()
    published: list[int] = []

    def requests() -> Iterator[ndop_pb2.EvaluateRequest]:
        yield ndop_pb2.EvaluateRequest(context=_context(1))
        yield ndop_pb2.EvaluateRequest(batch_id=0, blinded_elements=_element(b"9990000018"))
        assert first_answered.wait(TIMEOUT)
        published.append(_publish_removal(register, tmp_path, register.opted_out[:5], "r.dat"))
        _wait_for(server, published[0])
        yield ndop_pb2.EvaluateRequest(batch_id=1, blinded_elements=_element(b"9990000026"))

    with grpc.insecure_channel(address) as channel:
        call = ndop_pb2_grpc.OptOutRegisterStub(channel).Evaluate(
            requests(), metadata=auth_metadata, timeout=TIMEOUT
        )
        responses = []
        for response in call:
            responses.append(response)
            first_answered.set()
    batches = [r.batch for r in responses if r.HasField("batch")]
    summary = responses[-1].summary
    body = ndop_pb2.ReceiptBody.FromString(summary.receipt.body)
    assert published == [2], "the register moved on during the check"
    assert [b.register_version for b in batches] == [1, 1]
    assert summary.register_version == body.register_version == 1
    assert body.register_count == 1000, "the receipt counts the entries of version 1"


def test_a_held_previous_version_is_answered_and_named(
    register: Register, server: RunningServer, address: str, auth_metadata: Metadata, tmp_path: Path
) -> None:
    latest = _publish_removal(register, tmp_path, register.opted_out[:5], "r.dat")
    _wait_for(server, latest)
    requests = iter(
        [
            ndop_pb2.EvaluateRequest(context=_context(1)),
            ndop_pb2.EvaluateRequest(batch_id=0, blinded_elements=_element(b"9990000018")),
        ]
    )
    received, error = _evaluate(address, auth_metadata, requests)
    assert error is None
    assert received[0].batch.register_version == 1
    assert ndop_pb2.ReceiptBody.FromString(received[-1].summary.receipt.body).register_version == 1


# --- the client refuses what it does not implement ------------------------------------


def _set_hashed_scheme(info: ndop_pb2.RegisterInfo) -> None:
    info.hashed.scheme = "ndop-sha3-v9"


def _set_digest_size(info: ndop_pb2.RegisterInfo) -> None:
    info.hashed.digest_size = 64


def _set_salt(info: ndop_pb2.RegisterInfo) -> None:
    info.hashed.salt = info.hashed.salt[:16]


def _set_suite(info: ndop_pb2.RegisterInfo) -> None:
    info.private_mode.suite = "OPRF(P-256, SHA-256)"


def _set_element_size(info: ndop_pb2.RegisterInfo) -> None:
    info.private_mode.element_size = 33


def _set_filter_scheme(info: ndop_pb2.RegisterInfo) -> None:
    info.private_mode.filter_scheme = "cuckoo-v1"


DIALECTS = {
    "hashing scheme": ("hashed", _set_hashed_scheme),
    "digest size": ("hashed", _set_digest_size),
    "salt size": ("hashed", _set_salt),
    "OPRF suite": ("private", _set_suite),
    "element size": ("private", _set_element_size),
    "filter scheme": ("private", _set_filter_scheme),
}


def _client(address: str, token: str, tmp_path: Path) -> Client:
    return Client(
        address,
        insecure=True,
        token=token,
        purpose="research",
        workers=1,
        cache_dir=tmp_path / "filters",
        timeout=TIMEOUT,
    )


@pytest.mark.parametrize("what", sorted(DIALECTS))
def test_a_server_speaking_another_dialect_is_refused_in_one_sentence(
    register: Register,
    address: str,
    auth_metadata: Metadata,
    token: str,
    tmp_path: Path,
    what: str,
) -> None:
    mode, change = DIALECTS[what]
    other_mode = "private" if mode == "hashed" else "hashed"
    numbers = _canonical(register.opted_out[:3]) + _canonical(register.not_opted_out[:3])
    hooks = Hooks(info=change)
    with relay(address, auth_metadata, hooks) as relayed, _client(relayed, token, tmp_path) as c:
        with pytest.raises(UnsupportedServer) as caught:
            c.check(numbers, mode=mode)  # type: ignore[arg-type]
        other = c.check(numbers, mode=other_mode)  # type: ignore[arg-type]
    message = str(caught.value)
    assert what in message and "this client implements" in message
    assert message.count(". ") == 0 and "\n" not in message
    assert caught.value.exit_code == 3
    assert other.statuses == [Status.OPTED_OUT] * 3 + [Status.CLEARED] * 3


def test_the_cli_exits_3_with_one_sentence_for_an_unknown_scheme(
    register: Register,
    address: str,
    auth_metadata: Metadata,
    token: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cohort = write_numbers(tmp_path / "cohort.dat", register.opted_out[:5])
    out = tmp_path / "cleared.dat"
    with relay(address, auth_metadata, Hooks(info=_set_hashed_scheme)) as relayed:
        code = ndop_main(
            [
                "check",
                str(cohort),
                "--server",
                relayed,
                "--insecure",
                "--mode",
                "hashed",
                "--purpose",
                "research",
                "--out",
                str(out),
            ]
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3
    assert len(err) == 1 and "ndop-sha3-v9" in err[0]
    assert "Error" not in err[0] and "internal" not in err[0]
    assert not out.exists()


def test_a_filter_of_another_scheme_is_refused(
    register: Register, address: str, auth_metadata: Metadata, token: str, tmp_path: Path
) -> None:
    def other_scheme(chunk: ndop_pb2.FilterChunk) -> None:
        if chunk.HasField("header"):
            chunk.header.filter_scheme = "cuckoo-v1"

    hooks = Hooks(filter_chunk=other_scheme)
    with (
        relay(address, auth_metadata, hooks) as relayed,
        _client(relayed, token, tmp_path) as c,
        pytest.raises(UnsupportedServer, match="filter scheme 'cuckoo-v1'"),
    ):
        c.check(_canonical(register.opted_out[:3]), mode="private")
    assert not list((tmp_path / "filters").rglob("*.bloom")), "nothing was cached"


# --- the client holds the server to its word ------------------------------------------


def _receipt_version(version: int) -> Any:
    def change(response: Any) -> None:
        if response.HasField("summary"):
            body = ndop_pb2.ReceiptBody.FromString(response.summary.receipt.body)
            body.register_version = version
            response.summary.receipt.body = body.SerializeToString()
            response.summary.register_version = version

    return change


def _receipt_items(response: Any) -> None:
    if response.HasField("summary"):
        body = ndop_pb2.ReceiptBody.FromString(response.summary.receipt.body)
        body.items_checked += 1
        response.summary.receipt.body = body.SerializeToString()


def _receipt_payload(response: Any) -> None:
    if response.HasField("summary"):
        body = ndop_pb2.ReceiptBody.FromString(response.summary.receipt.body)
        body.submitted_sha256 = bytes(32)
        response.summary.receipt.body = body.SerializeToString()


@pytest.mark.parametrize("mode", ["hashed", "private"])
@pytest.mark.parametrize(
    ("lie", "expected"),
    [
        (_receipt_version(7), "names register version 7 but the answers came from version 1"),
        (_receipt_items, "does not describe this check"),
        (_receipt_payload, "does not cover what this client sent"),
    ],
    ids=["version", "items", "payload"],
)
def test_a_receipt_that_does_not_match_the_answers_fails_loudly(
    register: Register,
    address: str,
    auth_metadata: Metadata,
    token: str,
    tmp_path: Path,
    mode: str,
    lie: Any,
    expected: str,
) -> None:
    hooks = Hooks(hashed=lie) if mode == "hashed" else Hooks(evaluated=lie)
    with (
        relay(address, auth_metadata, hooks) as relayed,
        _client(relayed, token, tmp_path) as c,
        pytest.raises(IntegrityError, match=expected),
    ):
        c.check(_canonical(register.opted_out[:3]), mode=mode)  # type: ignore[arg-type]


def test_an_answer_from_another_version_than_the_filter_fails_loudly(
    register: Register, address: str, auth_metadata: Metadata, token: str, tmp_path: Path
) -> None:
    def other_version(response: Any) -> None:
        if response.HasField("batch"):
            response.batch.register_version = 2

    hooks = Hooks(evaluated=other_version)
    with (
        relay(address, auth_metadata, hooks) as relayed,
        _client(relayed, token, tmp_path) as c,
        pytest.raises(IntegrityError, match="another register version"),
    ):
        c.check(_canonical(register.opted_out[:3]), mode="private")


def test_an_invalid_evaluated_element_is_a_refusal_not_a_crash(
    register: Register, address: str, auth_metadata: Metadata, token: str, tmp_path: Path
) -> None:
    def identity(response: Any) -> None:
        if response.HasField("batch"):
            response.batch.evaluated_elements = bytes(len(response.batch.evaluated_elements))

    hooks = Hooks(evaluated=identity)
    with (
        relay(address, auth_metadata, hooks) as relayed,
        _client(relayed, token, tmp_path) as c,
        pytest.raises(RequestRejected, match="not a valid ristretto255 encoding"),
    ):
        c.check(_canonical(register.opted_out[:3]), mode="private")


def test_the_sdk_refreshes_its_filter_once_when_the_server_moved_on(
    register: Register, address: str, auth_metadata: Metadata, token: str, tmp_path: Path
) -> None:
    numbers = _canonical(register.opted_out[:4]) + _canonical(register.not_opted_out[:4])
    hooks = Hooks(refuse_evaluate=1)
    with relay(address, auth_metadata, hooks) as relayed, _client(relayed, token, tmp_path) as c:
        result = c.check(numbers, mode="private")
    assert result.statuses == [Status.OPTED_OUT] * 4 + [Status.CLEARED] * 4
    assert hooks.evaluate_calls == 2


def test_a_server_that_keeps_refusing_the_filter_version_ends_the_check(
    register: Register, address: str, auth_metadata: Metadata, token: str, tmp_path: Path
) -> None:
    hooks = Hooks(refuse_evaluate=5)
    with (
        relay(address, auth_metadata, hooks) as relayed,
        _client(relayed, token, tmp_path) as c,
        pytest.raises(FilterOutdated, match="download the current filter") as caught,
    ):
        c.check(_canonical(register.opted_out[:3]), mode="private")
    assert isinstance(caught.value, NdopError) and caught.value.exit_code == 3
    assert hooks.evaluate_calls == 2, "one refresh, not a loop"
