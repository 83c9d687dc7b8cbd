"""Server reflection under both of its names: grpc.reflection.v1 and grpc.reflection.v1alpha.

grpcio-reflection ships only v1alpha. v1 is the same protocol in another package (same
messages, same field numbers), so v1 calls are answered by the v1alpha servicer with its
messages, and a v1 file descriptor, copied from v1alpha's, is added to the default pool so
that reflection can describe itself under both names.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Final

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1_FILE: Final = "grpc/reflection/v1/reflection.proto"
V1_SERVICE_NAME: Final = "grpc.reflection.v1.ServerReflection"
V1ALPHA_SERVICE_NAME: Final[str] = reflection.SERVICE_NAME
METHOD: Final = "ServerReflectionInfo"

_V1_PACKAGE: Final = "grpc.reflection.v1"
_V1ALPHA_PACKAGE: Final = "grpc.reflection.v1alpha"


def enable_reflection(service_names: Iterable[str], server: grpc.Server) -> None:
    """Serve reflection on v1 and v1alpha, listing `service_names` and both reflection names."""
    register_v1_descriptor()
    servicer = reflection.ReflectionServicer(
        (*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)
    )
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        tuple(
            grpc.method_handlers_generic_handler(name, {METHOD: handler})
            for name in (V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)
        )
    )


@functools.cache
def register_v1_descriptor() -> None:
    """Add grpc/reflection/v1/reflection.proto to the default pool, unless already there."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(V1_FILE)
        return
    except KeyError:
        pass
    pool.AddSerializedFile(_v1_file().SerializeToString())


def _v1_file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = V1_FILE
    proto.package = _V1_PACKAGE
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = _renamed(field.type_name)
    for service in proto.service:
        for method in service.method:
            method.input_type = _renamed(method.input_type)
            method.output_type = _renamed(method.output_type)
    proto.options.ClearField("deprecated")
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    return proto


def _renamed(type_name: str) -> str:
    old = f".{_V1ALPHA_PACKAGE}."
    return f".{_V1_PACKAGE}.{type_name[len(old) :]}" if type_name.startswith(old) else type_name
