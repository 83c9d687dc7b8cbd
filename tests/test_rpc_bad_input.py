"""Malformed requests sent with the raw generated stubs, as any gRPC client could send them.

Every bad call must end with a precise status code and a details sentence that carries nothing
of what was sent; afterwards the server must go on answering good calls. Also: health checking,
server reflection, unknown filter versions and empty check streams.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import rbcl
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ndop_core.crypto import oprf
from ndop_core.hashing import DIGEST_SIZE, Hasher
from ndop_core.nhs_number import canonical_bytes
from ndop_core.proto import ndop_pb2, ndop_pb2_grpc
from ndop_server.accounts import Accounts
from ndop_server.matching import MAX_BATCH_ITEMS
from ndop_server.server import MAX_MESSAGE_BYTES, start_server
from tests.conftest import GENEROUS, Register, make_register

SERVICE = "ndop.v1.OptOutRegister"
CONTEXT = ndop_pb2.CheckContext(purpose="research")
TIMEOUT = 20.0
# p = 2^255 - 19, little-endian: a field element that is not reduced, so never canonical.
FIELD_PRIME = (2**255 - 19).to_bytes(32, "little")


@pytest.fixture(scope="module")
def register(tmp_path_factory: pytest.TempPathFactory) -> Register:
    """One register for the whole module: nothing here changes it."""
    directory = tmp_path_factory.mktemp("bad-input")
    return make_register(directory, total=3000, opted_out=1000, seed=11)


@pytest.fixture(scope="module")
def metadata(register: Register) -> tuple[tuple[str, str], ...]:
    with Accounts(register.store_path) as accounts:
        token = accounts.add("bad-input-org", GENEROUS)
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
def address(register: Register, metadata: tuple[tuple[str, str], ...]) -> Iterator[str]:
    running = start_server(
        register.store_path, register.keys, "127.0.0.1:0", tls=None, insecure=True
    )
    try:
        yield f"127.0.0.1:{running.port}"
    finally:
        running.stop(grace=1)


@pytest.fixture
def channel(address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(
        address,
        options=[
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.enable_retries", 0),
        ],
    ) as opened:
        yield opened


class Rpc:
    """The raw generated stub, authenticated as a test organisation."""

    def __init__(self, channel: grpc.Channel, metadata: tuple[tuple[str, str], ...]) -> None:
        self.stub = ndop_pb2_grpc.OptOutRegisterStub(channel)
        self.metadata = metadata

    def info(self) -> Any:
        return self.stub.GetRegisterInfo(
            ndop_pb2.GetRegisterInfoRequest(), metadata=self.metadata, timeout=TIMEOUT
        )

    def hashed(self, requests: list[Any], *, context: bool = True) -> list[Any]:
        fresh = ndop_pb2.CheckContext(request_id=str(uuid.uuid4()))
        fresh.MergeFrom(CONTEXT)
        first = [ndop_pb2.HashedCheckRequest(context=fresh)] if context else []
        call = self.stub.CheckHashed(
            iter(first + requests), metadata=self.metadata, timeout=TIMEOUT
        )
        return list(call)

    def evaluate(self, requests: list[Any], *, context: bool = True) -> list[Any]:
        named = ndop_pb2.CheckContext(
            register_version=self.info().version.number, request_id=str(uuid.uuid4())
        )
        named.MergeFrom(CONTEXT)
        first = [ndop_pb2.EvaluateRequest(context=named)] if context else []
        call = self.stub.Evaluate(iter(first + requests), metadata=self.metadata, timeout=TIMEOUT)
        return list(call)

    def filter(self, version: int) -> list[Any]:
        request = ndop_pb2.GetFilterRequest(version=version)
        return list(self.stub.GetFilter(request, metadata=self.metadata, timeout=TIMEOUT))


@pytest.fixture
def stub(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...]) -> Rpc:
    return Rpc(channel, metadata)


def _digests(register: Register, values: np.ndarray) -> bytes:
    return Hasher(register.keys.salt).digest_packed(canonical_bytes(values))


def _valid_element(seed: bytes = b"9990000000") -> bytes:
    _, element = oprf.blind(seed)
    return element


def _assert_reveals_nothing(details: str, payload: bytes) -> None:
    """`details` holds no hex, base64 or raw bytes of `payload`, nor any long hex run."""
    assert details, "a rejection must say which rule was broken"
    assert re.search(r"[0-9a-fA-F]{8,}", details) is None, details
    lowered = details.lower()
    raw = details.encode("utf-8", errors="surrogateescape")
    latin = details.encode("latin-1", errors="replace")
    sample = payload[:4096]
    for start in range(0, max(len(sample) - 3, 0)):
        window = sample[start : start + 4]
        if len(set(window)) == 1 and window[0] in b" .,:;-()abcdefghijklmnopqrstuvwxyz0123456789":
            continue  # a run of one printable byte says nothing about the payload
        assert window.hex() not in lowered, details
        assert window not in raw, details
        assert window not in latin, details
    if len(sample) >= 6:
        assert base64.b64encode(sample[:6]).decode() not in details, details


def _expect_rejected(call: Any, payload: bytes, code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    assert isinstance(error, grpc.Call)
    assert error.code() == code, (error.code(), error.details())
    _assert_reveals_nothing(error.details() or "", payload)


def _assert_still_serving(stub: Rpc, register: Register) -> None:
    info = stub.info()
    assert info.version.number == 1
    assert info.version.count == len(register.opted_out)
    values = np.concatenate([register.opted_out[:40], register.not_opted_out[:60]])
    responses = stub.hashed(
        [
            ndop_pb2.HashedCheckRequest(
                batch_id=7,
                digests=_digests(register, values),
            )
        ],
    )
    batches = [r.batch for r in responses if r.HasField("batch")]
    summaries = [r.summary for r in responses if r.HasField("summary")]
    assert len(batches) == 1 and len(summaries) == 1
    assert batches[0].batch_id == 7 and batches[0].count == 100
    bits = np.unpackbits(
        np.frombuffer(batches[0].opted_out, dtype=np.uint8), count=100, bitorder="little"
    ).astype(bool)
    assert bits.tolist() == [True] * 40 + [False] * 60
    assert summaries[0].items_checked == 100
    assert summaries[0].items_opted_out == 40


# --- hashed mode -------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 31, 33, 63, 65])
def test_check_hashed_rejects_digests_of_wrong_length(
    stub: Rpc, register: Register, length: int
) -> None:
    payload = (_digests(register, register.opted_out[:3]) * 2)[:length]
    _expect_rejected(
        lambda: stub.hashed(
            [ndop_pb2.HashedCheckRequest(batch_id=0, digests=payload)],
        ),
        payload,
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    _assert_still_serving(stub, register)


def test_check_hashed_rejects_bad_batch_after_good_ones(stub: Rpc, register: Register) -> None:
    good = _digests(register, register.opted_out[:10])
    bad = _digests(register, register.opted_out[10:12])[:33]
    _expect_rejected(
        lambda: stub.hashed(
            [
                ndop_pb2.HashedCheckRequest(batch_id=0, digests=good),
                ndop_pb2.HashedCheckRequest(batch_id=1, digests=good),
                ndop_pb2.HashedCheckRequest(batch_id=2, digests=bad),
            ],
        ),
        bad,
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    _assert_still_serving(stub, register)


def test_check_hashed_accepts_exactly_max_batch_items(stub: Rpc, register: Register) -> None:
    filler = bytes(range(DIGEST_SIZE)) * (MAX_BATCH_ITEMS - 1)
    payload = _digests(register, register.opted_out[:1]) + filler
    responses = stub.hashed([ndop_pb2.HashedCheckRequest(batch_id=0, digests=payload)])
    batch = responses[0].batch
    assert batch.count == MAX_BATCH_ITEMS
    assert responses[-1].summary.items_checked == MAX_BATCH_ITEMS
    assert responses[-1].summary.items_opted_out == 1


def test_check_hashed_rejects_oversize_batch(stub: Rpc, register: Register) -> None:
    payload = bytes(range(DIGEST_SIZE)) * (MAX_BATCH_ITEMS + 1)
    assert len(payload) < MAX_MESSAGE_BYTES  # the item limit, not the size limit, must trip
    _expect_rejected(
        lambda: stub.hashed([ndop_pb2.HashedCheckRequest(batch_id=3, digests=payload)]),
        payload,
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    _assert_still_serving(stub, register)


def test_check_hashed_rejects_message_over_receive_limit(stub: Rpc, register: Register) -> None:
    items = MAX_MESSAGE_BYTES // DIGEST_SIZE + 1
    payload = bytes(range(DIGEST_SIZE)) * items
    assert len(payload) > MAX_MESSAGE_BYTES
    _expect_rejected(
        lambda: stub.hashed([ndop_pb2.HashedCheckRequest(batch_id=0, digests=payload)]),
        payload,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    _assert_still_serving(stub, register)


def test_check_hashed_empty_stream_gets_summary(stub: Rpc, register: Register) -> None:
    responses = stub.hashed([])
    assert len(responses) == 1
    summary = responses[0].summary
    assert responses[0].HasField("summary")
    assert summary.items_checked == 0
    assert summary.items_opted_out == 0
    assert summary.register_version == 1
    assert summary.register_count == len(register.opted_out)
    assert summary.request_id


@pytest.mark.parametrize("method", ["CheckHashed", "Evaluate"])
def test_stream_without_context_is_refused(stub: Rpc, register: Register, method: str) -> None:
    # Every check declares its purpose in its first message; a stream that never does is
    # refused rather than audited and signed with no purpose.
    call = getattr(stub.stub, method)(iter([]), metadata=stub.metadata, timeout=TIMEOUT)
    with pytest.raises(grpc.RpcError) as caught:
        list(call)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "purpose" in (caught.value.details() or "")
    _assert_still_serving(stub, register)


def test_check_hashed_context_only_stream_gets_summary(stub: Rpc) -> None:
    request_id = str(uuid.uuid4())
    context = ndop_pb2.CheckContext(purpose="planning", request_id=request_id)
    responses = stub.hashed([ndop_pb2.HashedCheckRequest(context=context)], context=False)
    assert [r.HasField("summary") for r in responses] == [True]
    assert responses[0].summary.items_checked == 0
    assert responses[0].summary.request_id == request_id


# --- private mode ------------------------------------------------------------------------


def _bad_elements() -> dict[str, bytes]:
    valid = _valid_element()
    top_bit = valid[:31] + bytes([valid[31] | 0x80])
    garbage = bytes((7 * i + 3) % 256 for i in range(32))
    assert not rbcl.crypto_core_ristretto255_is_valid_point(garbage)
    return {
        "short": valid[:31],
        "long": valid + b"\x01",
        "identity": bytes(32),
        "all_ff": b"\xff" * 32,
        "field_prime": FIELD_PRIME,
        "valid_with_top_bit": top_bit,
        "garbage": garbage,
    }


@pytest.mark.parametrize("case", sorted(_bad_elements()))
def test_evaluate_rejects_bad_element(stub: Rpc, register: Register, case: str) -> None:
    payload = _bad_elements()[case]
    _expect_rejected(
        lambda: stub.evaluate([ndop_pb2.EvaluateRequest(batch_id=0, blinded_elements=payload)]),
        payload,
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    _assert_still_serving(stub, register)


@pytest.mark.parametrize("case", ["identity", "all_ff", "valid_with_top_bit", "garbage"])
def test_evaluate_rejects_bad_element_inside_a_batch(
    stub: Rpc, register: Register, case: str
) -> None:
    good = b"".join(_valid_element(f"99900000{i:02d}".encode()) for i in range(5))
    payload = good[:64] + _bad_elements()[case] + good[64:]
    _expect_rejected(
        lambda: stub.evaluate(
            [
                ndop_pb2.EvaluateRequest(batch_id=0, blinded_elements=good),
                ndop_pb2.EvaluateRequest(batch_id=1, blinded_elements=payload),
            ],
        ),
        payload,
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    _assert_still_serving(stub, register)


def test_evaluate_rejects_oversize_batch(stub: Rpc, register: Register) -> None:
    payload = _valid_element() * (MAX_BATCH_ITEMS + 1)
    _expect_rejected(
        lambda: stub.evaluate([ndop_pb2.EvaluateRequest(batch_id=0, blinded_elements=payload)]),
        payload,
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    _assert_still_serving(stub, register)


def test_evaluate_good_batch_matches_oprf(stub: Rpc, register: Register) -> None:
    element = _valid_element()
    responses = stub.evaluate([ndop_pb2.EvaluateRequest(batch_id=4, blinded_elements=element * 3)])
    batch = responses[0].batch
    assert batch.batch_id == 4 and batch.count == 3
    assert batch.key_id == register.keys.oprf_key_id
    assert batch.evaluated_elements == oprf.evaluate(register.keys.oprf_key, element) * 3
    assert responses[-1].summary.items_checked == 3


def test_evaluate_empty_stream_gets_summary(stub: Rpc, register: Register) -> None:
    responses = stub.evaluate([])
    assert len(responses) == 1
    assert responses[0].HasField("summary")
    assert responses[0].summary.items_checked == 0
    assert responses[0].summary.register_version == 1
    assert responses[0].summary.register_count == len(register.opted_out)


# --- filters, health, reflection -----------------------------------------------------------


@pytest.mark.parametrize("version", [2, 99, 2**63])
def test_get_filter_unknown_version_is_not_found(
    stub: Rpc, register: Register, version: int
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.filter(version)
    assert isinstance(caught.value, grpc.Call)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    _assert_still_serving(stub, register)


def test_get_filter_current_and_by_number_agree(stub: Rpc) -> None:
    current = stub.filter(0)
    numbered = stub.filter(1)
    assert b"".join(c.data for c in current) == b"".join(c.data for c in numbered)
    assert current[0].header.register_version == 1


@pytest.mark.parametrize("service", ["", SERVICE])
def test_health_reports_serving(channel: grpc.Channel, service: str) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(channel: grpc.Channel) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(
        reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT
        )
    )
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert SERVICE in names
    assert "grpc.health.v1.Health" in names


def test_reflection_describes_the_service(channel: grpc.Channel) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(
        reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)]),
            timeout=TIMEOUT,
        )
    )
    protos = replies[0].file_descriptor_response.file_descriptor_proto
    assert protos, "reflection must serve the descriptor of the service"
    assert any(b"OptOutRegister" in p for p in protos)


@pytest.mark.parametrize("credentials", [(), (("authorization", "Bearer ndop_not-a-real-token"),)])
def test_calls_without_a_valid_token_are_unauthenticated(
    channel: grpc.Channel, register: Register, credentials: tuple[tuple[str, str], ...]
) -> None:
    anonymous = Rpc(channel, credentials)
    with pytest.raises(grpc.RpcError) as caught:
        anonymous.info()
    assert isinstance(caught.value, grpc.Call)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not-a-real-token" not in (caught.value.details() or "")
    payload = _digests(register, register.opted_out[:4])
    _expect_rejected(
        lambda: anonymous.hashed([ndop_pb2.HashedCheckRequest(batch_id=0, digests=payload)]),
        payload,
        grpc.StatusCode.UNAUTHENTICATED,
    )
