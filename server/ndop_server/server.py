"""Assembling and running the gRPC server: the service, health checking, reflection, TLS,
message-size limits and graceful shutdown."""

from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Final

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ndop_core.proto import ndop_pb2, ndop_pb2_grpc
from ndop_server.accounts import Accounts
from ndop_server.errors import ConfigurationError
from ndop_server.keys import RegisterKeys
from ndop_server.reflection import enable_reflection
from ndop_server.register_view import RegisterHolder
from ndop_server.service import OptOutRegisterService

SERVICE_NAME: Final = ndop_pb2.DESCRIPTOR.services_by_name["OptOutRegister"].full_name
MAX_MESSAGE_BYTES: Final = 8 * 1024 * 1024
GRACE_SECONDS: Final = 10.0

log = structlog.get_logger("ndop.server")


@dataclass(frozen=True)
class ServerTls:
    cert: Path
    key: Path
    client_ca: Path | None = None
    """When set, clients must present a certificate signed by this CA (mutual TLS)."""


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    holder: RegisterHolder
    accounts: Accounts
    health: health.HealthServicer

    def stop(self, grace: float = GRACE_SECONDS) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.holder.stop()
        self.accounts.close()


def start_server(
    store_path: Path,
    keys: RegisterKeys,
    listen: str,
    *,
    tls: ServerTls | None,
    insecure: bool = False,
    poll_seconds: float = 1.0,
    max_workers: int = 32,
) -> RunningServer:
    if tls is None and not insecure:
        raise ConfigurationError(
            "serving needs --tls-cert and --tls-key; use --insecure only for local development"
        )
    credentials = None if tls is None else _credentials(tls)
    health_servicer = health.HealthServicer()
    holder = RegisterHolder(
        store_path, poll_seconds, on_version=lambda _: _set_health(health_servicer, serving=True)
    )
    if holder.current is None:
        _set_health(health_servicer, serving=False)
    accounts = Accounts(store_path)
    try:
        if holder.register_id not in (None, keys.register_id):
            raise ConfigurationError(
                f"the store belongs to register {holder.register_id} "
                f"but the keys file is for {keys.register_id}"
            )
        server = grpc.server(
            ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
            maximum_concurrent_rpcs=max_workers * 4,
        )
        ndop_pb2_grpc.add_OptOutRegisterServicer_to_server(
            OptOutRegisterService(holder, keys, accounts), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        enable_reflection((SERVICE_NAME, health.SERVICE_NAME), server)
        port = _bind(server, listen, credentials)
    except BaseException:
        holder.stop()
        accounts.close()
        raise
    server.start()
    holder.start()
    current = holder.current
    log.info(
        "server.started",
        listen=listen,
        port=port,
        tls="off" if tls is None else ("mutual" if tls.client_ca else "on"),
        register_version=current.version if current else 0,
    )
    return RunningServer(server, port, holder, accounts, health_servicer)


def _set_health(servicer: health.HealthServicer, *, serving: bool) -> None:
    """SERVING once a register version is held: before that every check would fail."""
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for service in ("", SERVICE_NAME):
        servicer.set(service, status)


def _bind(server: grpc.Server, listen: str, credentials: grpc.ServerCredentials | None) -> int:
    try:
        if credentials is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, credentials)
    except RuntimeError as exc:
        raise ConfigurationError(f"cannot listen on {listen}: {exc}") from exc
    if port == 0:
        raise ConfigurationError(f"cannot listen on {listen}")
    return port


def _credentials(tls: ServerTls) -> grpc.ServerCredentials:
    try:
        pair = (tls.key.read_bytes(), tls.cert.read_bytes())
        client_ca = tls.client_ca.read_bytes() if tls.client_ca else None
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read TLS material: {exc.strerror}: {exc.filename}"
        ) from exc
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def serve_until_signalled(running: RunningServer) -> None:
    """Block until SIGTERM or SIGINT, then drain in-flight calls and stop."""
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("server.stopping", signal=signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stopping.wait()
    running.stop()
    log.info("server.stopped")
