"""The generated stubs in client/ndop_client/proto must match proto/ndop/v1/ndop.proto.

The .proto is compiled afresh with grpc_tools.protoc (as scripts/generate_proto.py does) and
its FileDescriptorProto is compared with the one embedded in ndop_pb2; every RPC of the
service must also be wired up by ndop_pb2_grpc.OptOutRegisterStub. When this fails, run
`python scripts/generate_proto.py`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from ndop_core.proto import ndop_pb2, ndop_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "proto"
PROTO_NAME = "ndop/v1/ndop.proto"
PROTO_FILE = PROTO_ROOT / PROTO_NAME


def default_json_name(field_name: str) -> str:
    """protoc's default json_name: underscores dropped, the letter after each upper-cased."""
    parts = field_name.split("_")
    return parts[0] + "".join(part[:1].upper() + part[1:] for part in parts[1:])


def _normalise_message(message: descriptor_pb2.DescriptorProto) -> None:
    for field in [*message.field, *message.extension]:
        if field.json_name == default_json_name(field.name):
            field.ClearField("json_name")
    for nested in message.nested_type:
        _normalise_message(nested)


def normalise(file: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """Drop what differs only by how the descriptor was produced: source info (never embedded)
    and json_name when it is protoc's default (--descriptor_set_out writes it, the Python
    generator leaves it out). A custom json_name is kept and compared."""
    file.ClearField("source_code_info")
    for message in file.message_type:
        _normalise_message(message)
    for field in file.extension:
        if field.json_name == default_json_name(field.name):
            field.ClearField("json_name")
    return file


def test_default_json_name() -> None:
    assert default_json_name("register_version") == "registerVersion"
    assert default_json_name("filter_sha256") == "filterSha256"
    assert default_json_name("count") == "count"


def compile_proto(proto_root: Path, out: Path) -> descriptor_pb2.FileDescriptorProto:
    well_known = Path(protoc.__file__).parent / "_proto"
    status = protoc.main(
        [
            "protoc",
            f"-I{proto_root}",
            f"-I{well_known}",
            f"--descriptor_set_out={out}",
            str(proto_root / PROTO_NAME),
        ]
    )
    assert status == 0, f"protoc failed on {proto_root / PROTO_NAME} with status {status}"
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    matching = [f for f in files if f.name == PROTO_NAME]
    assert len(matching) == 1, [f.name for f in files]
    return normalise(matching[0])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorProto:
    return compile_proto(PROTO_ROOT, tmp_path_factory.mktemp("protoc") / "ndop.desc")


@pytest.fixture(scope="module")
def embedded() -> descriptor_pb2.FileDescriptorProto:
    return normalise(
        descriptor_pb2.FileDescriptorProto.FromString(ndop_pb2.DESCRIPTOR.serialized_pb)
    )


def test_embedded_descriptor_is_for_the_same_file(
    compiled: descriptor_pb2.FileDescriptorProto, embedded: descriptor_pb2.FileDescriptorProto
) -> None:
    assert embedded.name == compiled.name == PROTO_NAME
    assert embedded.package == compiled.package
    assert list(embedded.dependency) == list(compiled.dependency)


def test_messages_and_enums_match(
    compiled: descriptor_pb2.FileDescriptorProto, embedded: descriptor_pb2.FileDescriptorProto
) -> None:
    fresh = {m.name: m for m in compiled.message_type}
    stub = {m.name: m for m in embedded.message_type}
    assert sorted(stub) == sorted(fresh), "messages added or removed since the stubs were made"
    for name, message in fresh.items():
        assert stub[name] == message, f"message {name} differs from the generated stub"
    assert list(embedded.enum_type) == list(compiled.enum_type)


def test_services_match(
    compiled: descriptor_pb2.FileDescriptorProto, embedded: descriptor_pb2.FileDescriptorProto
) -> None:
    assert list(embedded.service) == list(compiled.service)


def test_whole_descriptor_matches(
    compiled: descriptor_pb2.FileDescriptorProto, embedded: descriptor_pb2.FileDescriptorProto
) -> None:
    assert embedded == compiled
    assert embedded.SerializeToString(deterministic=True) == compiled.SerializeToString(
        deterministic=True
    )


def test_the_comparison_detects_a_changed_proto(
    tmp_path: Path, embedded: descriptor_pb2.FileDescriptorProto
) -> None:
    """A copy of the .proto with one field renamed must not match the stubs."""
    text = PROTO_FILE.read_text()
    assert "message RegisterVersion {" in text
    head, tail = text.split("message RegisterVersion {", 1)
    body, rest = tail.split("}", 1)
    assert " count = " in body
    changed = (
        head + "message RegisterVersion {" + body.replace(" count = ", " total = ") + "}" + rest
    )
    copy = tmp_path / "proto" / PROTO_NAME
    copy.parent.mkdir(parents=True)
    copy.write_text(changed)
    mutated = compile_proto(tmp_path / "proto", tmp_path / "mutated.desc")
    assert mutated != embedded


@pytest.fixture
def dummy_channel() -> Iterator[grpc.Channel]:
    channel = grpc.insecure_channel("127.0.0.1:9")  # never connected: no RPC is made
    try:
        yield channel
    finally:
        channel.close()


def test_grpc_stub_has_every_service_method(
    compiled: descriptor_pb2.FileDescriptorProto, dummy_channel: grpc.Channel
) -> None:
    services = {s.name: s for s in compiled.service}
    assert "OptOutRegister" in services
    stub = ndop_pb2_grpc.OptOutRegisterStub(dummy_channel)
    expected = {m.name for m in services["OptOutRegister"].method}
    assert expected
    built = {name for name in vars(stub) if not name.startswith("_")}
    assert built == expected
    for method in services["OptOutRegister"].method:
        assert callable(getattr(stub, method.name))


def test_grpc_servicer_and_registration_cover_every_method(
    compiled: descriptor_pb2.FileDescriptorProto,
) -> None:
    service = next(s for s in compiled.service if s.name == "OptOutRegister")
    servicer = ndop_pb2_grpc.OptOutRegisterServicer
    for method in service.method:
        assert callable(getattr(servicer, method.name, None)), method.name
    full_name = f"{compiled.package}.{service.name}"
    assert ndop_pb2.DESCRIPTOR.services_by_name[service.name].full_name == full_name
    methods = ndop_pb2.DESCRIPTOR.services_by_name[service.name].methods_by_name
    assert set(methods) == {m.name for m in service.method}
    for method in service.method:
        described = methods[method.name]
        assert described.client_streaming == method.client_streaming
        assert described.server_streaming == method.server_streaming
