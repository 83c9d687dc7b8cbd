"""Prometheus metrics of one server process: what its checks, refusals and filter downloads
did, and which register version it serves.

The servicer tells `ServerMetrics` the few things only it knows (a check opened, a batch
answered, a check closed with its outcome, a refused credential, a store error); a gRPC
interceptor records how every call of the service ended (its status code) and the filter
bytes sent, so that a refusal added anywhere later is counted without touching this module.

Labels are bounded by construction: mode (hashed, private), the audit outcome of a check (a
fixed vocabulary), the RPC method, the gRPC status code and the call kind. There is no
per-organisation label: organisations come and go (names stay after revocation), each would
multiply every series, and per-organisation use is exact in the store across all replicas —
the status page shows it. Nothing here is ever an identifier, digest, element or token.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import grpc
from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from ndop_server.accounts import MODES
from ndop_server.audit_record import COMPLETED
from ndop_server.register_view import RegisterHolder

BATCH_SECONDS_BUCKETS: Final = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30)
"""A hashed batch takes milliseconds; a private one about 40 us per element."""
CHECK_SECONDS_BUCKETS: Final = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
FILTER_METHODS: Final = frozenset({"GetFilter"})
"""Methods whose responses carry filter bytes in a `data` field."""


class ServerMetrics:
    """The metrics of one server, in a registry of their own (several servers may run in
    one process, as in the tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(GC_COLLECTOR)
        registry = self.registry
        self.checks = Counter(
            "ndop_checks",
            "Checks closed, by mode and outcome (the audit log's closing outcome: completed, "
            "cancelled, idle-timeout, aborted, or the refusal's gRPC status).",
            ["mode", "outcome"],
            registry=registry,
        )
        self.numbers = Counter(
            "ndop_numbers_checked",
            "Numbers (digests or blinded elements) answered, by mode.",
            ["mode"],
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "ndop_batch_seconds",
            "Server time to charge, match and pack one batch, by mode.",
            ["mode"],
            buckets=BATCH_SECONDS_BUCKETS,
            registry=registry,
        )
        self.check_seconds = Histogram(
            "ndop_check_seconds",
            "Wall time of completed checks, first message to summary, by mode.",
            ["mode"],
            buckets=CHECK_SECONDS_BUCKETS,
            registry=registry,
        )
        self.open_checks = Gauge(
            "ndop_open_check_streams",
            "Check streams open now, by mode.",
            ["mode"],
            registry=registry,
        )
        self.refusals = Counter(
            "ndop_refusals",
            "Calls the server ended with a status other than OK, by method and gRPC code.",
            ["method", "code"],
            registry=registry,
        )
        self.auth_failures = Counter(
            "ndop_authentication_failures",
            "Calls refused because no valid credential was presented, by call.",
            ["call"],
            registry=registry,
        )
        self.filter_downloads = Counter(
            "ndop_filter_downloads",
            "Filter downloads sent to the end.",
            registry=registry,
        )
        self.filter_bytes = Counter(
            "ndop_filter_bytes",
            "Filter bytes sent, downloads cut short included.",
            registry=registry,
        )
        self.store_errors = Counter(
            "ndop_store_errors",
            "Calls that failed because the register store could not be reached, by call.",
            ["call"],
            registry=registry,
        )
        for mode in MODES:
            self.checks.labels(mode, COMPLETED)
            self.numbers.labels(mode)
            self.open_checks.labels(mode)
        self._started = time.time()

    def watch_register(self, holder: RegisterHolder) -> None:
        """Gauges read from `holder` at each scrape: the version and count served, and
        whether the store can be reached."""
        version = Gauge(
            "ndop_register_version",
            "The register version this server answers from (0 before the first).",
            registry=self.registry,
        )
        count = Gauge(
            "ndop_register_count",
            "Opted-out entries in the register version served.",
            registry=self.registry,
        )
        reachable = Gauge(
            "ndop_store_reachable",
            "1 while the register store can be reached, 0 while it cannot.",
            registry=self.registry,
        )
        version.set_function(lambda: _current(holder, lambda view: view.version))
        count.set_function(lambda: _current(holder, lambda view: view.record.count))
        reachable.set_function(lambda: 1.0 if holder.reachable else 0.0)

    # --- what the servicer tells ------------------------------------------------------------

    def check_opened(self, mode: str) -> CheckObservation:
        return CheckObservation(self, mode)

    def authentication_failed(self, call: str) -> None:
        self.auth_failures.labels(call).inc()

    def store_error(self, call: str) -> None:
        self.store_errors.labels(call).inc()

    def open_check_count(self) -> int:
        return int(
            sum(
                self.registry.get_sample_value("ndop_open_check_streams", {"mode": mode}) or 0
                for mode in MODES
            )
        )

    def interceptor(self, service: str) -> MetricsInterceptor:
        return MetricsInterceptor(self, service)


def _current(holder: RegisterHolder, read: Callable[[Any], int]) -> float:
    view = holder.current
    return 0.0 if view is None else float(read(view))


class CheckObservation:
    """One check stream as metrics see it: open until `closed`, which counts once."""

    def __init__(self, metrics: ServerMetrics, mode: str) -> None:
        self._metrics = metrics
        self._mode = mode
        self._opened = time.perf_counter()
        self._items = 0
        self._closed = False
        self._lock = threading.Lock()
        metrics.open_checks.labels(mode).inc()

    def batch(self, items_so_far: int, seconds: float) -> None:
        """A batch answered in `seconds`; the check has now answered `items_so_far`."""
        self._metrics.batch_seconds.labels(self._mode).observe(seconds)
        self._metrics.numbers.labels(self._mode).inc(max(items_so_far - self._items, 0))
        self._items = max(items_so_far, self._items)

    def closed(self, outcome: str) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        metrics = self._metrics
        metrics.open_checks.labels(self._mode).dec()
        metrics.checks.labels(self._mode, outcome).inc()
        if outcome == COMPLETED:
            metrics.check_seconds.labels(self._mode).observe(time.perf_counter() - self._opened)


def call_status(context: grpc.ServicerContext) -> grpc.StatusCode:
    """The status a call is ending with: what `abort` set, or UNKNOWN for an exception
    nothing handled. (ServicerContext.code() exists since grpcio 1.38; grpc-stubs lacks it.)"""
    code = context.code()  # type: ignore[attr-defined]
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


class MetricsInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Counts how each call of `service` ends, and the filter bytes it sends."""

    def __init__(self, metrics: ServerMetrics, service: str) -> None:
        self._metrics = metrics
        self._prefix = f"/{service}/"

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],  # type: ignore[type-arg]
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:  # type: ignore[type-arg]
        handler = continuation(handler_call_details)
        full_name = handler_call_details.method
        if handler is None or not full_name.startswith(self._prefix):
            return handler
        method = full_name[len(self._prefix) :]
        serializers = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary), **serializers
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(method, handler.stream_unary), **serializers
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(method, handler.unary_stream), **serializers
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(method, handler.stream_stream), **serializers
            )
        return handler

    def _refused(self, method: str, context: grpc.ServicerContext) -> None:
        self._metrics.refusals.labels(method, call_status(context).name).inc()

    def _unary(
        self, method: str, behaviour: Callable[[Any, grpc.ServicerContext], Any]
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return behaviour(request, context)
            except Exception:
                self._refused(method, context)
                raise

        return observed

    def _stream(
        self, method: str, behaviour: Callable[[Any, grpc.ServicerContext], Iterator[Any]]
    ) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
        filter_bytes = self._metrics.filter_bytes if method in FILTER_METHODS else None

        def observed(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            responses: Iterator[Any] | None = None
            try:
                responses = behaviour(request, context)
                for response in responses:
                    if filter_bytes is not None:
                        filter_bytes.inc(len(getattr(response, "data", b"")))
                    yield response
            except Exception:
                self._refused(method, context)
                raise
            finally:
                # Close the servicer's generator now (a client that hung up closes this one),
                # so that its own cleanup, the check's closing audit row, runs at once.
                close = getattr(responses, "close", None)
                if close is not None:
                    close()
            if filter_bytes is not None:
                self._metrics.filter_downloads.inc()

        return observed
