"""The gRPC servicer: thin. It authenticates, unpacks requests, calls the matchers and the
check session, and packs answers.

Any malformed request ends the call with INVALID_ARGUMENT and a sentence naming the rule
broken; nothing a client sends can stop the server or reach a log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from typing import Final, NoReturn, TypeVar

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from ndop_core import filter as published_filter
from ndop_core import filter_delta
from ndop_core.crypto import oprf
from ndop_core.errors import IntegrityError
from ndop_core.hashing import DIGEST_SIZE, SCHEME
from ndop_core.proto import ndop_pb2, ndop_pb2_grpc
from ndop_server.access import AccessDenied, Gatekeeper
from ndop_server.accounts import (
    Accounts,
    DuplicateRequest,
    Mode,
    Organisation,
    QuotaExhausted,
    Revoked,
    now,
)
from ndop_server.audit_record import (
    AUTH_FAILED,
    CANCELLED,
    COMPLETED,
    FILTER_DOWNLOAD,
    IDLE_TIMEOUT,
    AuditRecord,
)
from ndop_server.errors import StoreError
from ndop_server.keys import RegisterKeys
from ndop_server.limits import EventBudget, RateLimiter, StreamLimiter, TooBusy
from ndop_server.matching import MAX_BATCH_ITEMS, BatchRejected, Evaluator, HashedMatcher
from ndop_server.metrics import ServerMetrics
from ndop_server.receipts import ReceiptSigner
from ndop_server.register_view import RegisterHolder, RegisterView
from ndop_server.sessions import CheckRefused, CheckSession, OpenChecks, Served, VersionNotHeld
from ndop_server.tokens import Tokenizer
from ndop_server.watchdog import IdleWatchdog

FILTER_CHUNK_BYTES: Final = 1 << 20
log = structlog.get_logger("ndop.server")
Request = TypeVar("Request", ndop_pb2.HashedCheckRequest, ndop_pb2.EvaluateRequest)
Response = TypeVar("Response", ndop_pb2.HashedCheckResponse, ndop_pb2.EvaluateResponse)


def _timestamp(iso: str) -> Timestamp:
    stamp = Timestamp()
    stamp.FromJsonString(iso.replace("+00:00", "Z"))
    return stamp


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("context.abort returned")


@dataclass
class Safeguards:
    """What keeps one organisation from starving the others, shared by every call."""

    watchdog: IdleWatchdog
    streams: StreamLimiter
    rates: RateLimiter = field(default_factory=RateLimiter)
    open_checks: OpenChecks = field(default_factory=OpenChecks)
    auth_failures: EventBudget = field(default_factory=EventBudget)


_REFUSALS: Final[tuple[tuple[type[Exception], grpc.StatusCode], ...]] = (
    (BatchRejected, grpc.StatusCode.INVALID_ARGUMENT),
    (CheckRefused, grpc.StatusCode.INVALID_ARGUMENT),
    (DuplicateRequest, grpc.StatusCode.ALREADY_EXISTS),
    (Revoked, grpc.StatusCode.PERMISSION_DENIED),
    (QuotaExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (VersionNotHeld, grpc.StatusCode.FAILED_PRECONDITION),
    (StoreError, grpc.StatusCode.UNAVAILABLE),
)
STORE_UNAVAILABLE: Final = "the register store cannot be reached just now; retry shortly"


def _status_of(error: Exception) -> grpc.StatusCode:
    return next(code for kind, code in _REFUSALS if isinstance(error, kind))


class OptOutRegisterService(ndop_pb2_grpc.OptOutRegisterServicer):  # type: ignore[misc]
    def __init__(
        self,
        holder: RegisterHolder,
        keys: RegisterKeys,
        accounts: Accounts,
        safeguards: Safeguards,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self._holder = holder
        self._metrics = metrics or ServerMetrics()
        self._keys = keys
        self._accounts = accounts
        self._guards = safeguards
        self._gatekeeper = Gatekeeper(accounts)
        self._signer = ReceiptSigner(keys.signing_key)
        self._hashed = HashedMatcher(Tokenizer(keys.store_key))
        self._evaluator = Evaluator(keys.oprf_key)

    # --- common -----------------------------------------------------------------------------

    def _organisation(self, context: grpc.ServicerContext, call: str) -> Organisation:
        try:
            return self._gatekeeper.organisation(context)
        except AccessDenied as exc:
            self._authentication_failed(context, call, exc)
            _abort(context, exc.code, str(exc))
        except StoreError as exc:
            self._store_unavailable(call, exc)
            _abort(context, grpc.StatusCode.UNAVAILABLE, STORE_UNAVAILABLE)

    def _store_unavailable(self, call: str, error: StoreError) -> None:
        """Log and count a store the call could not reach; the client is only told to retry
        (STORE_UNAVAILABLE), never the store's own reason."""
        log.warning("store.unavailable", call=call, reason=str(error))
        self._metrics.store_error(call)

    def _authentication_failed(
        self, context: grpc.ServicerContext, call: str, error: AccessDenied
    ) -> None:
        """Log and audit a refused credential (never the credential), at most a few times a
        minute per peer address so that a flood cannot flood the log."""
        self._metrics.authentication_failed(call)
        peer = _peer_address(context.peer())
        if not self._guards.auth_failures.allow(peer):
            return
        log.warning("auth.failed", peer=peer, call=call, code=error.code.name, reason=str(error))
        with suppress(StoreError):
            self._accounts.record(
                AuditRecord(
                    at=now(),
                    organisation="-",
                    request_id="-",
                    mode=call,
                    purpose="-",
                    items_checked=0,
                    items_opted_out=None,
                    register_version=0,
                    outcome=AUTH_FAILED,
                )
            )

    def _view(self, context: grpc.ServicerContext) -> RegisterView:
        view = self._holder.current
        if view is None:
            _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "no register version has been published yet; load a snapshot first",
            )
        return view

    def _run_check(
        self,
        context: grpc.ServicerContext,
        mode: Mode,
        requests: Iterator[Request],
        pin: Callable[[ndop_pb2.CheckContext], Served],
        answer: Callable[[Request, CheckSession], Response | None],
        summary: Callable[[ndop_pb2.CheckSummary], Response],
    ) -> Iterator[Response]:
        """The stream both modes share: context first, then batches, then a signed summary.
        Every exit writes the check's closing audit row."""
        opened = time.perf_counter()
        organisation = self._organisation(context, "check")
        with ExitStack() as stack:
            try:
                stack.enter_context(self._guards.streams.hold(organisation.name))
            except TooBusy as exc:
                log.info("check.busy", organisation=organisation.name, mode=mode)
                _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
            watch = self._guards.watchdog.watch(context)
            stack.callback(watch.close)
            session = CheckSession(
                self._accounts,
                self._signer,
                self._keys.register_id,
                organisation,
                mode,
                self._guards.rates,
                self._guards.open_checks,
            )
            outcome = CANCELLED
            stack.callback(self._log_audit_head)
            # However the stream ended, one the watchdog closed is audited as idle.
            stack.callback(
                lambda: session.end(
                    IDLE_TIMEOUT if watch.timed_out and outcome == CANCELLED else outcome
                )
            )
            observed = self._metrics.check_opened(mode)
            stack.callback(lambda: observed.closed(outcome))
            try:
                for position, request in enumerate(watch.requests(requests)):
                    if position == 0:
                        session.begin(request.context, pin(request.context))
                    started = time.perf_counter()
                    response = answer(request, session)
                    if response is not None:
                        observed.batch(session.items, time.perf_counter() - started)
                        watch.wait_on_client()
                        yield response
                        watch.client_moved()
                if not session.purpose:
                    raise CheckRefused("a check must open with its context: purpose and request id")
                if not context.is_active():
                    # gRPC may end the request stream of a cancelled call as if the client
                    # had finished it; a stream the watchdog closed is still an idle one.
                    outcome = IDLE_TIMEOUT if watch.timed_out else CANCELLED
                    return
                yield summary(
                    ndop_pb2.CheckSummary(
                        request_id=session.request_id,
                        register_version=session.served.version,
                        register_count=session.served.count,
                        items_checked=session.items,
                        items_opted_out=session.opted_out,
                        receipt=session.receipt(),
                    )
                )
                # Only reached once gRPC has taken the summary; a client that hung up before
                # it closes this generator at the yield above and the check stays cancelled.
                outcome = COMPLETED
            except tuple(kind for kind, _ in _REFUSALS) as exc:
                code = _status_of(exc)
                outcome = code.name.lower().replace("_", "-")
                if isinstance(exc, StoreError):
                    self._store_unavailable("check", exc)
                    exc = StoreError(STORE_UNAVAILABLE)
                self._refuse(context, session, code, exc)
            except grpc.RpcError:
                if watch.timed_out:
                    outcome = IDLE_TIMEOUT
                    log.info(
                        "check.idle_closed",
                        organisation=organisation.name,
                        mode=mode,
                        request_id=session.request_id,
                        idle_seconds=self._guards.watchdog.timeout,
                    )
                return
        log.info(
            "check.completed",
            organisation=organisation.name,
            mode=mode,
            purpose=session.purpose,
            request_id=session.request_id,
            register_version=session.served.version,
            items=session.items,
            opted_out=session.opted_out if mode == "hashed" else None,
            seconds=round(time.perf_counter() - opened, 3),
        )

    def _log_audit_head(self) -> None:
        """The chain's head as checks end: rows cut from the end of the log can only be
        noticed against a head noted earlier, and logs live elsewhere than the store."""
        if self._accounts.head is not None:
            row, chain = self._accounts.head
            log.info("audit.head", row=row, head=chain.hex()[:16])

    def _refuse(
        self,
        context: grpc.ServicerContext,
        session: CheckSession,
        code: grpc.StatusCode,
        reason: Exception,
    ) -> NoReturn:
        """End the call with `reason`, a safe sentence; the caller audits the outcome."""
        message = str(reason)
        log.info(
            "check.refused",
            organisation=session.organisation.name,
            mode=session.mode,
            request_id=session.request_id,
            code=code.name,
            reason=message,
        )
        _abort(context, code, message)

    # --- RPCs -------------------------------------------------------------------------------

    def GetRegisterInfo(
        self, request: ndop_pb2.GetRegisterInfoRequest, context: grpc.ServicerContext
    ) -> ndop_pb2.RegisterInfo:
        self._organisation(context, "info")
        record = self._view(context).record
        return ndop_pb2.RegisterInfo(
            register_id=self._keys.register_id,
            version=ndop_pb2.RegisterVersion(
                number=record.version,
                published_at=_timestamp(record.published_at),
                count=record.count,
            ),
            hashed=ndop_pb2.HashedModeParameters(
                scheme=SCHEME, salt=self._keys.salt, digest_size=DIGEST_SIZE
            ),
            private_mode=ndop_pb2.PrivateModeParameters(
                suite=oprf.SUITE_NAME,
                key_id=record.key_id,
                element_size=oprf.ELEMENT_SIZE,
                filter_scheme=published_filter.SCHEME,
                filter_size=record.filter_size,
                filter_sha256=record.filter_sha256,
                filter_false_positive_rate=published_filter.FALSE_POSITIVE_RATE,
            ),
            max_batch_items=MAX_BATCH_ITEMS,
        )

    def CheckHashed(
        self,
        request_iterator: Iterator[ndop_pb2.HashedCheckRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[ndop_pb2.HashedCheckResponse]:
        view = self._view(context)

        def answer(
            request: ndop_pb2.HashedCheckRequest, session: CheckSession
        ) -> ndop_pb2.HashedCheckResponse | None:
            digests = request.digests  # each read of a bytes field copies it
            if not digests:
                return None
            count = self._hashed.count(request.batch_id, digests)
            session.charge(count, digests)
            bits, hits = self._hashed.answer(view, digests)
            session.opted_out += hits
            return ndop_pb2.HashedCheckResponse(
                batch=ndop_pb2.MembershipBatch(
                    batch_id=request.batch_id,
                    register_version=view.version,
                    count=count,
                    opted_out=bits,
                )
            )

        return self._run_check(
            context,
            "hashed",
            request_iterator,
            lambda _: Served(view.version, view.record.count),
            answer,
            lambda summary: ndop_pb2.HashedCheckResponse(summary=summary),
        )

    def GetFilter(
        self, request: ndop_pb2.GetFilterRequest, context: grpc.ServicerContext
    ) -> Iterator[ndop_pb2.FilterChunk]:
        organisation = self._organisation(context, "filter")
        view = self._view(context) if request.version == 0 else self._holder.view(request.version)
        if view is None:
            _abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"register version {request.version} is no longer served; ask for the current one",
            )
        entry = AuditRecord(
            at=now(),
            organisation=organisation.name,
            request_id="-",
            mode="filter",
            purpose="-",
            items_checked=0,
            items_opted_out=None,
            register_version=view.version,
            outcome=FILTER_DOWNLOAD,
        )
        try:
            self._accounts.filter_download(entry)
        except (Revoked, QuotaExhausted) as exc:
            log.info("filter.refused", organisation=organisation.name, reason=str(exc))
            _abort(context, _status_of(exc), str(exc))
        except StoreError as exc:
            self._store_unavailable("filter", exc)
            _abort(context, grpc.StatusCode.UNAVAILABLE, STORE_UNAVAILABLE)
        delta = self._filter_delta(request, view)
        log.info(
            "filter.download",
            organisation=organisation.name,
            version=view.version,
            delta_from=None if delta is None else request.base_version,
        )
        return self._filter_chunks(context, view, delta)

    def _filter_delta(
        self, request: ndop_pb2.GetFilterRequest, view: RegisterView
    ) -> tuple[ndop_pb2.FilterDelta, bytes] | None:
        """A delta from the filter the client holds, when it names one and one is smaller than
        the whole filter; the whole filter otherwise. A delta download is a filter download:
        it is charged and audited as one."""
        if not request.base_version:
            return None
        try:
            data = self._holder.deltas.between(
                request.base_version, request.base_sha256, view.record
            )
        except (StoreError, IntegrityError) as exc:
            log.warning("filter.delta_unavailable", version=view.version, reason=str(exc))
            return None
        if data is None:
            return None
        return ndop_pb2.FilterDelta(
            scheme=filter_delta.SCHEME,
            base_version=request.base_version,
            base_sha256=request.base_sha256,
            size=len(data),
        ), data

    def _filter_chunks(
        self,
        context: grpc.ServicerContext,
        view: RegisterView,
        delta: tuple[ndop_pb2.FilterDelta, bytes] | None = None,
    ) -> Iterator[ndop_pb2.FilterChunk]:
        record = view.record
        data = view.filter_bytes if delta is None else delta[1]
        header = ndop_pb2.FilterHeader(
            register_version=record.version,
            count=record.count,
            key_id=record.key_id,
            filter_scheme=published_filter.SCHEME,
            size=len(view.filter_bytes),
            sha256=record.filter_sha256,
            false_positive_rate=published_filter.FALSE_POSITIVE_RATE,
            delta=None if delta is None else delta[0],
        )
        watch = self._guards.watchdog.watch(context)
        try:
            for offset in range(0, max(len(data), 1), FILTER_CHUNK_BYTES):
                watch.wait_on_client()
                yield ndop_pb2.FilterChunk(
                    header=header if offset == 0 else None,
                    offset=offset,
                    data=data[offset : offset + FILTER_CHUNK_BYTES],
                )
                watch.client_moved()
        finally:
            watch.close()

    def Evaluate(
        self,
        request_iterator: Iterator[ndop_pb2.EvaluateRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[ndop_pb2.EvaluateResponse]:
        self._view(context)
        pinned: list[RegisterView] = []

        def pin(check: ndop_pb2.CheckContext) -> Served:
            view = self._filter_view(check.register_version)
            pinned.append(view)
            return Served(view.version, view.record.count)

        def answer(
            request: ndop_pb2.EvaluateRequest, session: CheckSession
        ) -> ndop_pb2.EvaluateResponse | None:
            blinded = request.blinded_elements  # each read of a bytes field copies it
            if not blinded:
                return None
            count = self._evaluator.count(request.batch_id, blinded)
            session.charge(count, blinded)
            elements = self._evaluator.answer(request.batch_id, blinded)
            return ndop_pb2.EvaluateResponse(
                batch=ndop_pb2.EvaluatedBatch(
                    batch_id=request.batch_id,
                    register_version=pinned[0].version,
                    key_id=self._keys.oprf_key_id,
                    count=count,
                    evaluated_elements=elements,
                )
            )

        return self._run_check(
            context,
            "private",
            request_iterator,
            pin,
            answer,
            lambda summary: ndop_pb2.EvaluateResponse(summary=summary),
        )

    def _filter_view(self, version: int) -> RegisterView:
        """The held version whose filter a private check tests against; every answer and the
        receipt name it. VersionNotHeld unless it is held and made with the current OPRF key."""
        if version == 0:
            raise CheckRefused(
                "a private check must name the register version of the filter it tests against"
            )
        view = self._holder.view(version)
        if view is None or view.record.key_id != self._keys.oprf_key_id:
            raise VersionNotHeld(
                f"register version {version} is not served here; "
                "download the current filter and check again"
            )
        return view


def _peer_address(peer: str) -> str:
    """'ipv4:127.0.0.1:5555' -> '127.0.0.1': the address, without the port that changes."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return kind or "unknown"
