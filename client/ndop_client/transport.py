"""Channels to an ndop server, and gRPC failures turned into ndop errors of one sentence."""

from __future__ import annotations

import re
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
# Keepalive pings while a call is open notice a connection that died silently (a server host
# that vanished, a dropped route) within about 30 seconds; the stall deadline (stall.py)
# notices a live connection to a server that stopped working.
CHANNEL_OPTIONS: Final = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.enable_retries", 0),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
)
_UNTRUSTED: Final = (
    "CERTIFICATE_VERIFY_FAILED",
    "certificate verify failed",
    "BAD_SIGNATURE",
    "certificate signature failure",
    "unable to get local issuer",
    "self signed",
    "self-signed",
)
_NOT_TLS: Final = ("WRONG_VERSION_NUMBER", "wrong version number", "packet length too long")
_CERT_REQUIRED: Final = ("CERTIFICATE_REQUIRED", "certificate required", "HANDSHAKE_FAILURE")
_WRONG_NAME: Final = ("Peer name", "hostname mismatch", "does not match")
_NO_HOST: Final = ("resolving", "Domain name not found", "DNS resolution failed")
_LAST_ERROR: Final = re.compile(r"^.*?last error: [A-Z_]+: (?:ipv[46]:\S+|unix:\S+): ", re.DOTALL)


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


def open_channel(
    server: str, tls: TlsSettings, options: tuple[tuple[str, str | int], ...] = ()
) -> grpc.Channel:
    if not server or ":" not in server:
        raise UsageError(f"server address {server!r} is not HOST:PORT")
    if tls.insecure:
        return grpc.insecure_channel(server, options=CHANNEL_OPTIONS + options)
    root = _read(tls.ca_file, "CA file") if tls.ca_file else None
    cert = _read(tls.client_cert, "client certificate") if tls.client_cert else None
    key = _read(tls.client_key, "client key") if tls.client_key else None
    if (cert is None) != (key is None):
        raise UsageError("a client certificate needs its key, and a key its certificate")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=cert
    )
    return grpc.secure_channel(server, credentials, options=CHANNEL_OPTIONS + options)


def translate(
    error: grpc.RpcError,
    server: str,
    deadline: float | None = None,
    tls: TlsSettings | None = None,
) -> NdopError:
    """One-sentence ndop error for a failed RPC. Server details are short, identifier-free
    sentences by contract; they are passed on, never anything from the request."""
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (error.details() if isinstance(error, grpc.Call) else None) or ""
    if code == grpc.StatusCode.UNAVAILABLE and details.startswith(BUSY_PREFIXES):
        return ServerUnavailable(f"the ndop server at {server} is busy: {details}")
    if code == grpc.StatusCode.UNAVAILABLE:
        return ServerUnavailable(_unreachable(server, details, tls or TlsSettings()))
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and details == GRPC_CONCURRENCY_LIMIT:
        return ServerUnavailable(
            f"the ndop server at {server} is busy (too many calls at once); retry in a few seconds"
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        within = f" within {deadline:g} s" if deadline else " in time"
        return ServerUnavailable(
            f"the ndop server at {server} did not answer{within}; it may be overloaded or "
            "stopped: try again later"
        )
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
    return ServiceError(f"the ndop server failed the request ({code.name}): {_reason(details)}")


def _unreachable(server: str, details: str, tls: TlsSettings) -> str:
    """Why a connection failed, in a sentence that says what to do about it."""
    if any(sign in details for sign in _UNTRUSTED):
        if tls.ca_file is not None:
            return (
                f"the TLS certificate of the ndop server at {server} is not signed by the CA "
                f"in --ca-file {tls.ca_file}; ask the register operator for the right CA file"
            )
        return (
            f"the TLS certificate of the ndop server at {server} is not signed by a CA this "
            "client trusts; give the register operator's CA certificate with --ca-file "
            "(ca_file= in Python)"
        )
    if any(sign in details for sign in _NOT_TLS):
        return (
            f"the ndop server at {server} does not speak TLS; if it is a development server "
            "started with --insecure, pass --insecure too (insecure=True in Python)"
        )
    if any(sign in details for sign in _CERT_REQUIRED):
        return (
            f"the ndop server at {server} refused the TLS handshake: it may require a client "
            "certificate (--cert and --key) from a CA it trusts"
        )
    if any(sign in details for sign in _WRONG_NAME):
        return (
            f"the TLS certificate of the ndop server at {server} is for another name; "
            "connect with the host name the certificate names"
        )
    if "Socket closed" in details and tls.insecure:
        return (
            f"the ndop server at {server} closed the plaintext connection: if it uses TLS, "
            "leave out --insecure and give its CA with --ca-file"
        )
    if "Connection refused" in details:
        return (
            f"nothing is listening at {server} (connection refused); check the address and "
            "that the ndop server is running"
        )
    if any(sign in details for sign in _NO_HOST):
        return f"cannot find the host of {server}; check the server's name"
    return f"cannot reach the ndop server at {server}: {_reason(details)}"


def _reason(details: str) -> str:
    """gRPC's own words without its address prefix, ended on a word, never mid-word."""
    text = _LAST_ERROR.sub("", details.strip()).strip().splitlines()
    reason = text[0] if text else "no details"
    if len(reason) > 160:
        reason = reason[:160].rsplit(" ", 1)[0] + " …"
    return reason
