"""Assembling and running the gRPC server: the service, health checking, reflection, TLS,
message-size limits and graceful shutdown."""

from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Final

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ndop_core.proto import ndop_pb2, ndop_pb2_grpc
from ndop_server.accounts import Accounts
from ndop_server.audit_record import ABORTED
from ndop_server.errors import ConfigurationError, StoreError
from ndop_server.keys import RegisterKeys
from ndop_server.limits import StreamLimiter
from ndop_server.listen import bind_problem, format_listen, is_loopback, parse_listen
from ndop_server.locations import StoreLocation
from ndop_server.metrics import ServerMetrics
from ndop_server.monitoring import MonitoringEndpoint, metrics_address
from ndop_server.reflection import enable_reflection
from ndop_server.register_view import RegisterHolder
from ndop_server.service import OptOutRegisterService, Safeguards
from ndop_server.status_source import StatusSource
from ndop_server.watchdog import IdleWatchdog

SERVICE_NAME: Final = ndop_pb2.DESCRIPTOR.services_by_name["OptOutRegister"].full_name
MAX_MESSAGE_BYTES: Final = 8 * 1024 * 1024
RESERVED_WORKERS: Final = 4
"""Worker threads check streams can never take: health checks and short calls always run."""


@dataclass(frozen=True)
class ServingLimits:
    """How the server protects itself and its organisations from each other."""

    idle_timeout: float = 60.0
    """Seconds a stream may wait on its client (for a request, or to take an answer)."""
    checks_per_organisation: int = 4
    """Check streams one organisation may hold open at once."""
    drain_seconds: float = 120.0
    """On SIGTERM: how long checks in flight may run on before they are cut off as aborted."""
    max_workers: int = 32

    def check(self) -> None:
        if self.idle_timeout <= 0 or self.drain_seconds < 0:
            raise ConfigurationError(
                "--idle-timeout must be positive and --drain-seconds not negative"
            )
        if self.checks_per_organisation < 1:
            raise ConfigurationError("--max-checks-per-org must be at least 1")
        if self.max_workers <= RESERVED_WORKERS:
            raise ConfigurationError(f"--max-workers must be more than {RESERVED_WORKERS}")


log = structlog.get_logger("ndop.server")


@dataclass(frozen=True)
class ServerTls:
    """TLS for the listening ports, and where client certificates are accepted.

    grpcio can require a client certificate on a port or not ask for one; it cannot ask for
    one and accept its absence. So with `client_ca`, certificates are either required on the
    main port (`require_client_cert`), or required on a second port (`client_cert_listen`) while
    the main port serves token holders: one server, one register, either credential.
    """

    cert: Path
    key: Path
    client_ca: Path | None = None
    require_client_cert: bool = False
    client_cert_listen: str | None = None

    def check(self) -> None:
        """ConfigurationError unless the options fit together."""
        if self.client_ca is None and (self.require_client_cert or self.client_cert_listen):
            raise ConfigurationError(
                "--require-client-cert and --client-cert-listen need --client-ca"
            )
        if self.require_client_cert and self.client_cert_listen:
            raise ConfigurationError(
                "--require-client-cert already requires certificates on --listen; "
                "drop --client-cert-listen"
            )
        if self.client_ca is not None and not (self.require_client_cert or self.client_cert_listen):
            raise ConfigurationError(
                "with --client-ca, give --require-client-cert (certificates on --listen) or "
                "--client-cert-listen HOST:PORT (certificates there, tokens on --listen)"
            )

    @property
    def mode(self) -> str:
        if self.require_client_cert:
            return "mutual-required"
        return "on+mutual-port" if self.client_cert_listen else "on"


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    holder: RegisterHolder
    accounts: Accounts
    health: health.HealthServicer
    safeguards: Safeguards
    limits: ServingLimits
    client_cert_port: int | None = None
    monitoring: MonitoringEndpoint | None = None
    """The HTTP server of /metrics and /status (`metrics_listen`), if any."""

    @property
    def metrics_port(self) -> int | None:
        return None if self.monitoring is None else self.monitoring.port

    def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let checks in flight run for `grace` seconds (the limits' drain
        time by default), cut off the rest, audit them as aborted, then close the store."""
        drain = self.limits.drain_seconds if grace is None else grace
        open_checks = self.safeguards.open_checks
        open_checks.draining = True
        self.health.enter_graceful_shutdown()
        self.server.stop(drain).wait()
        for session in open_checks.wait_closed(timeout=10.0):
            session.end(ABORTED)
        self.safeguards.watchdog.stop()
        if self.monitoring is not None:
            self.monitoring.stop()
        self.holder.stop()
        self.accounts.close()


def start_server(
    store: StoreLocation,
    keys: RegisterKeys,
    listen: str,
    *,
    tls: ServerTls | None,
    insecure: bool = False,
    poll_seconds: float = 1.0,
    limits: ServingLimits | None = None,
    allow_insecure_non_loopback: bool = False,
    metrics_listen: str | None = None,
    allow_metrics_non_loopback: bool = False,
) -> RunningServer:
    """Serve the store on `listen` (HOST:PORT). Plaintext (`insecure`, no `tls`) is refused
    on any address but loopback unless `allow_insecure_non_loopback`. With `metrics_listen`,
    Prometheus metrics (/metrics) and the status page (/status) are served over HTTP there,
    on loopback only unless `allow_metrics_non_loopback`."""
    limits = limits or ServingLimits()
    limits.check()
    address = parse_listen(listen)
    addresses = [address]
    if tls is None:
        _check_insecure(address, insecure=insecure, any_address=allow_insecure_non_loopback)
    else:
        tls.check()
        if tls.client_cert_listen:
            addresses.append(parse_listen(tls.client_cert_listen))
    for each in addresses:
        _check_bindable(each)
    monitor_at = (
        None
        if metrics_listen is None
        else metrics_address(metrics_listen, any_address=allow_metrics_non_loopback)
    )
    metrics = ServerMetrics()
    credentials = None if tls is None else _credentials(tls, require=tls.require_client_cert)
    health_servicer = health.HealthServicer()
    holder: RegisterHolder | None = None

    def update_health(*_: object) -> None:
        """SERVING only while a version is held and the store can be reached: a replica that
        cannot reach its store cannot audit, so it must not be sent checks."""
        if holder is not None:
            _set_health(health_servicer, serving=holder.current is not None and holder.reachable)

    _set_health(health_servicer, serving=False)
    holder = RegisterHolder(
        store,
        poll_seconds,
        on_version=update_health,
        on_reachability=update_health,
        key_id=keys.oprf_key_id,
    )
    update_health()
    metrics.watch_register(holder)
    accounts = Accounts(store, keys.audit_key)
    indexed = True
    monitoring: MonitoringEndpoint | None = None
    safeguards = Safeguards(
        watchdog=IdleWatchdog(limits.idle_timeout),
        streams=StreamLimiter(
            limits.checks_per_organisation, limits.max_workers - RESERVED_WORKERS
        ),
    )
    try:
        with suppress(StoreError):  # only for a warning; reachability is watched elsewhere
            indexed = accounts.has_audit_time_index()
        if holder.register_id not in (None, keys.register_id):
            raise ConfigurationError(
                f"the store belongs to register {holder.register_id} "
                f"but the keys file is for {keys.register_id}"
            )
        server = grpc.server(
            ThreadPoolExecutor(max_workers=limits.max_workers, thread_name_prefix="rpc"),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                # grpc shares a port in use with SO_REUSEPORT by default, so a second server
                # would silently take half the connections instead of failing to start.
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=limits.max_workers * 4,
            interceptors=[metrics.interceptor(SERVICE_NAME)],
        )
        ndop_pb2_grpc.add_OptOutRegisterServicer_to_server(
            OptOutRegisterService(holder, keys, accounts, safeguards, metrics), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        enable_reflection((SERVICE_NAME, health.SERVICE_NAME), server)
        port = _bind(server, address, credentials)
        client_cert_port = None
        if tls is not None and len(addresses) > 1:
            client_cert_port = _bind(server, addresses[1], _credentials(tls, require=True))
        if monitor_at is not None:
            status = StatusSource(store, accounts, holder, metrics, keys.audit_key)
            monitoring = MonitoringEndpoint(monitor_at, metrics, status)
    except BaseException:
        holder.stop()
        accounts.close()
        raise
    server.start()
    if monitoring is not None:
        monitoring.start()
    holder.start()
    safeguards.watchdog.start()
    if tls is None and not is_loopback(address[0]):
        log.warning("server.insecure_non_loopback", listen=format_listen(*address))
    if not indexed:
        log.warning(
            "store.audit_time_index_missing",
            detail="the audit log has no time index: the status page and "
            "'ndop audit --since' read the whole log",
            advice="'ndop store migrate --store STORE' adds it while the servers keep serving",
        )
    current = holder.current
    log.info(
        "server.started",
        listen=listen,
        port=port,
        client_cert_port=client_cert_port,
        tls="off" if tls is None else tls.mode,
        register_version=current.version if current else 0,
        metrics_port=None if monitoring is None else monitoring.port,
    )
    return RunningServer(
        server,
        port,
        holder,
        accounts,
        health_servicer,
        safeguards,
        limits,
        client_cert_port,
        monitoring,
    )


def _check_insecure(address: tuple[str, int], *, insecure: bool, any_address: bool) -> None:
    if not insecure:
        raise ConfigurationError(
            "serving needs --tls-cert and --tls-key; use --insecure only for local development"
        )
    if not any_address and not is_loopback(address[0]):
        raise ConfigurationError(
            "--insecure serves plaintext, so only on a loopback address (127.0.0.1, [::1], "
            f"localhost), which {format_listen(*address)} is not: give --tls-cert and "
            "--tls-key, or add --insecure-any-address if plaintext on the network is meant"
        )


def _set_health(servicer: health.HealthServicer, *, serving: bool) -> None:
    """SERVING once a register version is held: before that every check would fail."""
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for service in ("", SERVICE_NAME):
        servicer.set(service, status)


def _check_bindable(address: tuple[str, int]) -> None:
    """Refuse an address that cannot be bound before loading anything, with the reason."""
    problem = bind_problem(*address)
    if problem is not None:
        raise ConfigurationError(f"cannot listen on {format_listen(*address)}: {problem}")


def _bind(
    server: grpc.Server, address: tuple[str, int], credentials: grpc.ServerCredentials | None
) -> int:
    """The port bound; ConfigurationError if grpc cannot bind the address after all (another
    process may have taken it since `_check_bindable`)."""
    listen = format_listen(*address)
    try:
        if credentials is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        _check_bindable(address)
        raise ConfigurationError(f"cannot listen on {listen}: grpc could not bind it")
    return port


def _credentials(tls: ServerTls, *, require: bool) -> grpc.ServerCredentials:
    """Server TLS; with `require`, a client certificate from `tls.client_ca` is mandatory."""
    try:
        pair = (tls.key.read_bytes(), tls.cert.read_bytes())
        client_ca = tls.client_ca.read_bytes() if require and tls.client_ca else None
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read TLS material: {exc.strerror}: {exc.filename}"
        ) from exc
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


@dataclass
class StopSignal:
    """Set by SIGTERM or SIGINT. The handler only records: it runs on the main thread at any
    moment, perhaps while that thread holds the log's lock, so it must not log itself."""

    event: threading.Event
    name: str = ""


def stop_signals() -> StopSignal:
    """Install the handlers before starting, so that a signal that arrives while the server
    starts still drains it rather than killing the process."""
    stop = StopSignal(threading.Event())

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.name = signal.Signals(signum).name
        stop.event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def serve_until(running: RunningServer, stop: StopSignal) -> None:
    """Block until a stop signal, then drain in-flight calls and stop."""
    stop.event.wait()
    log.info("server.stopping", signal=stop.name)
    running.stop()
    log.info("server.stopped")
