"""Channels to an ndop server, and gRPC failures turned into ndop errors of one sentence."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc

from ndop_core.errors import (
    AuthenticationFailed,
    NdopError,
    PermissionDenied,
    QuotaExceeded,
    RequestRejected,
    ServerUnavailable,
    ServiceError,
    UsageError,
)

MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
# How the server words a refusal to open another check (ndop_server.limits.TooBusy), and how
# gRPC itself words its own concurrency limit, which is not the organisation's quota.
BUSY_PREFIXES: Final = ("this organisation already has", "the server is at its limit")
GRPC_CONCURRENCY_LIMIT: Final = "Concurrent RPC limit exceeded!"
CHANNEL_OPTIONS: Final = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.enable_retries", 0),
)


@dataclass(frozen=True)
class TlsSettings:
    """How to reach the server: plaintext (insecure) or TLS, optionally with a client cert."""

    insecure: bool = False
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from exc


def open_channel(server: str, tls: TlsSettings) -> grpc.Channel:
    if not server or ":" not in server:
        raise UsageError(f"server address {server!r} is not HOST:PORT")
    if tls.insecure:
        return grpc.insecure_channel(server, options=CHANNEL_OPTIONS)
    root = _read(tls.ca_file, "CA file") if tls.ca_file else None
    cert = _read(tls.client_cert, "client certificate") if tls.client_cert else None
    key = _read(tls.client_key, "client key") if tls.client_key else None
    if (cert is None) != (key is None):
        raise UsageError("a client certificate needs its key, and a key its certificate")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=cert
    )
    return grpc.secure_channel(server, credentials, options=CHANNEL_OPTIONS)


def translate(error: grpc.RpcError, server: str) -> NdopError:
    """One-sentence ndop error for a failed RPC. Server details are short, identifier-free
    sentences by contract; they are passed on, never anything from the request."""
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (error.details() if isinstance(error, grpc.Call) else None) or ""
    if code == grpc.StatusCode.UNAVAILABLE and details.startswith(BUSY_PREFIXES):
        return ServerUnavailable(f"the ndop server at {server} is busy: {details}")
    if code == grpc.StatusCode.UNAVAILABLE:
        return ServerUnavailable(
            f"cannot reach the ndop server at {server}: {_first_line(details)}"
        )
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and details == GRPC_CONCURRENCY_LIMIT:
        return ServerUnavailable(
            f"the ndop server at {server} is busy (too many calls at once); retry in a few seconds"
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ServerUnavailable(f"the ndop server at {server} did not answer in time")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationFailed(f"the server refused the credentials: {details}")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(f"the server refused the request: {details}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return QuotaExceeded(f"the server refused the check: {details}")
    if code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
    ):
        return RequestRejected(f"the server rejected the request: {details}")
    return ServiceError(f"the ndop server failed the request ({code.name}): {_first_line(details)}")


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "no details"
    return line[:200]
