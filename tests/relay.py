"""A relaying server for tests: every call goes to a real ndop server, and each answer passes
through the test's hooks on the way back, so a test can play a server that lies or speaks
another dialect without writing one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc

from ndop_core.proto import ndop_pb2, ndop_pb2_grpc

Metadata = tuple[tuple[str, str], ...]


def _unchanged(message: Any) -> None:
    pass


@dataclass
class Hooks:
    """What the relay changes; each hook edits a message in place."""

    info: Callable[[ndop_pb2.RegisterInfo], None] = _unchanged
    filter_chunk: Callable[[ndop_pb2.FilterChunk], None] = _unchanged
    evaluated: Callable[[ndop_pb2.EvaluateResponse], None] = _unchanged
    hashed: Callable[[ndop_pb2.HashedCheckResponse], None] = _unchanged
    refuse_evaluate: int = 0
    """Refuse this many Evaluate calls with FAILED_PRECONDITION before relaying any."""
    evaluate_calls: int = 0
    evaluated_counts: list[int] = field(default_factory=list)


class _Relay(ndop_pb2_grpc.OptOutRegisterServicer):  # type: ignore[misc]
    def __init__(self, stub: Any, metadata: Metadata, hooks: Hooks) -> None:
        self._stub = stub
        self._metadata = metadata
        self._hooks = hooks

    def GetRegisterInfo(self, request: Any, context: grpc.ServicerContext) -> Any:
        info = self._stub.GetRegisterInfo(request, metadata=self._metadata)
        self._hooks.info(info)
        return info

    def CheckHashed(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        for response in self._stub.CheckHashed(requests, metadata=self._metadata):
            self._hooks.hashed(response)
            yield response

    def GetFilter(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        for chunk in self._stub.GetFilter(request, metadata=self._metadata):
            self._hooks.filter_chunk(chunk)
            yield chunk

    def Evaluate(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        self._hooks.evaluate_calls += 1
        if self._hooks.refuse_evaluate:
            self._hooks.refuse_evaluate -= 1
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "register version 1 is not served here; download the current filter and check "
                "again",
            )
        for response in self._stub.Evaluate(requests, metadata=self._metadata):
            if response.HasField("batch"):
                self._hooks.evaluated_counts.append(response.batch.count)
            self._hooks.evaluated(response)
            yield response


@contextmanager
def relay(upstream_address: str, metadata: Metadata, hooks: Hooks) -> Iterator[str]:
    """The address of a relay to `upstream_address` that applies `hooks`."""
    upstream = grpc.insecure_channel(upstream_address)
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    relayed = _Relay(ndop_pb2_grpc.OptOutRegisterStub(upstream), metadata, hooks)
    ndop_pb2_grpc.add_OptOutRegisterServicer_to_server(relayed, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)
        upstream.close()
