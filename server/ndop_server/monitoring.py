"""The monitoring port (`ndop serve --metrics-listen HOST:PORT`): Prometheus metrics at
/metrics and the status page at /status, read-only, over plain HTTP.

Neither holds an identifier, but both tell who checks how much and when, and the port has no
authentication: like `--insecure`, it listens only on loopback unless the operator says
otherwise (`--metrics-any-address`), for a scraper or a reverse proxy that adds TLS and
access control in front of it.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog
from prometheus_client import make_wsgi_app

from ndop_server.errors import ConfigurationError
from ndop_server.listen import bind_problem, format_listen, is_loopback, parse_listen
from ndop_server.metrics import ServerMetrics
from ndop_server.status_page import CONTENT_SECURITY_POLICY, render_status
from ndop_server.status_source import StatusSource

log = structlog.get_logger("ndop.server")
REQUEST_TIMEOUT_SECONDS: Final = 10.0
_HEADERS: Final = [
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]
StartResponse = Callable[..., Any]
Environ = dict[str, Any]


def metrics_address(listen: str, *, any_address: bool) -> tuple[str, int]:
    """(host, port) of `--metrics-listen`; refused on any address but loopback unless
    `any_address`, and refused when it cannot be bound."""
    address = parse_listen(listen)
    if not any_address and not is_loopback(address[0]):
        raise ConfigurationError(
            "--metrics-listen serves metrics and the status page over plain HTTP without "
            f"authentication, so only on a loopback address, which {format_listen(*address)} "
            "is not: add --metrics-any-address if it is meant to be reachable from the network"
        )
    problem = bind_problem(*address)
    if problem is not None:
        raise ConfigurationError(f"cannot listen on {format_listen(*address)}: {problem}")
    return address


def monitoring_app(
    metrics: ServerMetrics, page: Callable[[], str]
) -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    """The WSGI application: /metrics, /status, and / leading to /status."""
    prometheus = make_wsgi_app(metrics.registry)

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            return _text(start_response, "405 Method Not Allowed", "read-only: GET only\n")
        if path == "/metrics":
            return prometheus(environ, start_response)  # type: ignore[no-any-return]
        if path in ("/status", "/status/"):
            try:
                body = page().encode("utf-8")
            except Exception as exc:
                log.error("status.failed", error=type(exc).__name__)
                return _text(
                    start_response,
                    "500 Internal Server Error",
                    "the status page could not be made; see the server's log\n",
                )
            start_response(
                "200 OK",
                [
                    ("Content-Type", "text/html; charset=utf-8"),
                    ("Content-Length", str(len(body))),
                    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
                    ("X-Frame-Options", "DENY"),
                    *_HEADERS,
                ],
            )
            return [b"" if method == "HEAD" else body]
        if path == "/":
            start_response("302 Found", [("Location", "/status"), *_HEADERS])
            return [b""]
        return _text(start_response, "404 Not Found", "not found: try /status or /metrics\n")

    return app


def _text(start_response: StartResponse, status: str, message: str) -> list[bytes]:
    body = message.encode("utf-8")
    start_response(
        status,
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            *_HEADERS,
        ],
    )
    return [body]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    block_on_close = False

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host's name up (socket.getfqdn), which can hang
        # without DNS; the name is only used for SERVER_NAME.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)
        self.setup_environ()


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    """No access log (it would name client addresses); a slow client is dropped."""

    timeout = REQUEST_TIMEOUT_SECONDS

    def log_message(self, format: str, *args: Any) -> None:
        return


class MonitoringEndpoint:
    """The HTTP server of /metrics and /status, in a thread of its own."""

    def __init__(self, address: tuple[str, int], metrics: ServerMetrics, status: StatusSource):
        host, port = address
        server_class = _Server6 if ":" in host else _Server
        try:
            self._server = make_server(
                host,
                port,
                monitoring_app(metrics, lambda: render_status(status.data())),
                server_class=server_class,
                handler_class=_QuietHandler,
            )
        except OSError as exc:
            reason = exc.strerror or "it cannot be bound"
            raise ConfigurationError(
                f"cannot listen on {format_listen(host, port)}: {reason[0].lower()}{reason[1:]}"
            ) from exc
        self._status = status
        self.host = host
        self.port = int(self._server.server_port)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="monitoring-http", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        listen = format_listen(self.host, self.port)
        log.info("monitoring.started", listen=listen, paths=["/metrics", "/status"])
        if not is_loopback(self.host):
            log.warning("monitoring.non_loopback", listen=listen)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
        self._status.close()
