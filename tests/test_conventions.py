"""gRPC conventions a generic client relies on: server reflection under grpc.reflection.v1 and
its older name v1alpha, and health that says NOT_SERVING until a register version is published.

Real servers on loopback ports; only synthetic 999-range numbers are used.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from ndop_server import keys as keyfile
from ndop_server.register import Publisher
from ndop_server.server import RunningServer, start_server
from ndop_server.store import Store
from ndop_server.synthetic import valid_numbers
from tests.conftest import write_numbers

SERVICE = "ndop.v1.OptOutRegister"
HEALTH = "grpc.health.v1.Health"
V1 = "grpc.reflection.v1.ServerReflection"
V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
TIMEOUT = 20.0
POLL_SECONDS = 0.05


def method(service: str) -> str:
    return f"/{service}/ServerReflectionInfo"


def reflect(
    channel: grpc.Channel, service: str, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    """One request on the bidirectional stream of `service`, with the (wire-identical) v1alpha
    messages."""
    call = channel.stream_stream(
        method(service),
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    [reply] = list(call(iter([request]), timeout=TIMEOUT))
    assert isinstance(reply, reflection_pb2.ServerReflectionResponse)
    return reply


def file_containing(
    channel: grpc.Channel, service: str, symbol: str
) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    reply = reflect(
        channel, service, reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    )
    assert reply.WhichOneof("message_response") == "file_descriptor_response", reply
    files = {}
    for serialized in reply.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto.FromString(serialized)
        files[proto.name] = proto
    return files


def health_status(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
    return int(reply.status)


@pytest.fixture
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as opened:
        yield opened


# --- reflection ----------------------------------------------------------------------------------


@pytest.mark.parametrize("service", [V1, V1ALPHA])
def test_reflection_lists_every_service_under_both_names(
    channel: grpc.Channel, service: str
) -> None:
    reply = reflect(channel, service, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in reply.list_services_response.service}
    assert names == {SERVICE, HEALTH, V1, V1ALPHA}


@pytest.mark.parametrize("service", [V1, V1ALPHA])
def test_reflection_describes_the_opt_out_service(channel: grpc.Channel, service: str) -> None:
    files = file_containing(channel, service, SERVICE)
    described = [
        (proto.package, s)
        for proto in files.values()
        for s in proto.service
        if s.name == "OptOutRegister"
    ]
    [(package, opt_out)] = described
    assert package == "ndop.v1"
    assert {m.name for m in opt_out.method} >= {"GetRegisterInfo", "GetFilter"}


@pytest.mark.parametrize("service", [V1, V1ALPHA])
def test_reflection_unknown_symbol_is_not_found(channel: grpc.Channel, service: str) -> None:
    reply = reflect(
        channel, service, reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.Such")
    )
    assert reply.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_v1_describes_itself_well_enough_to_build_a_v1_client(channel: grpc.Channel) -> None:
    """What a reflection-driven client does: fetch the v1 protocol's own file, build its
    messages from that alone, and speak v1 with them."""
    files = file_containing(channel, V1, V1)
    [v1_file] = [proto for proto in files.values() if proto.package == "grpc.reflection.v1"]
    assert v1_file.name == "grpc/reflection/v1/reflection.proto"
    assert not v1_file.options.deprecated
    assert all("v1alpha" not in field.type_name for m in v1_file.message_type for field in m.field)

    pool = descriptor_pool.DescriptorPool()
    pool.Add(v1_file)
    request_class: Any = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest")
    )
    response_class: Any = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse")
    )
    call = channel.stream_stream(
        method(V1),
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    [reply] = list(call(iter([request_class(list_services="")]), timeout=TIMEOUT))
    assert {s.name for s in reply.list_services_response.service} == {
        SERVICE,
        HEALTH,
        V1,
        V1ALPHA,
    }


# --- health --------------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["", SERVICE])
def test_health_is_serving_when_a_version_is_held(channel: grpc.Channel, service: str) -> None:
    assert health_status(channel, service) == health_pb2.HealthCheckResponse.SERVING


def test_health_is_not_serving_until_the_first_version_is_published(tmp_path: Path) -> None:
    keys = keyfile.write_new(tmp_path / "keys.json")
    store_path = tmp_path / "register.sqlite3"
    Store(store_path, create=True).close()
    running = start_server(
        store_path, keys, "127.0.0.1:0", tls=None, insecure=True, poll_seconds=POLL_SECONDS
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            for service in ("", SERVICE):
                assert health_status(channel, service) == health_pb2.HealthCheckResponse.NOT_SERVING

            snapshot = write_numbers(tmp_path / "snapshot.dat", valid_numbers(50, "999", seed=5))
            with Store(store_path) as store:
                Publisher(store, keys, workers=1).load_snapshot(snapshot)

            deadline = time.monotonic() + TIMEOUT
            while health_status(channel, SERVICE) != health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() < deadline, (
                    "still NOT_SERVING after a version was published"
                )
                time.sleep(POLL_SECONDS)
            assert health_status(channel, "") == health_pb2.HealthCheckResponse.SERVING
            assert running.holder.current is not None
            assert running.holder.current.version == 1
    finally:
        running.stop(grace=1)
