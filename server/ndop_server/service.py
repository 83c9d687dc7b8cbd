"""The gRPC servicer: thin. It authenticates, unpacks requests, calls the matchers and the
check session, and packs answers.

Any malformed request ends the call with INVALID_ARGUMENT and a sentence naming the rule
broken; nothing a client sends can stop the server or reach a log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final, NoReturn, TypeVar

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from ndop_core import filter as published_filter
from ndop_core.crypto import oprf
from ndop_core.hashing import DIGEST_SIZE, SCHEME
from ndop_core.proto import ndop_pb2, ndop_pb2_grpc
from ndop_server.access import AccessDenied, Gatekeeper
from ndop_server.accounts import Accounts, Mode, Organisation, QuotaExhausted
from ndop_server.keys import RegisterKeys
from ndop_server.matching import MAX_BATCH_ITEMS, BatchRejected, Evaluator, HashedMatcher
from ndop_server.receipts import ReceiptSigner
from ndop_server.register_view import RegisterHolder, RegisterView
from ndop_server.sessions import CheckRefused, CheckSession, Served, VersionNotHeld
from ndop_server.tokens import Tokenizer

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


class OptOutRegisterService(ndop_pb2_grpc.OptOutRegisterServicer):  # type: ignore[misc]
    def __init__(self, holder: RegisterHolder, keys: RegisterKeys, accounts: Accounts) -> None:
        self._holder = holder
        self._keys = keys
        self._accounts = accounts
        self._gatekeeper = Gatekeeper(accounts)
        self._signer = ReceiptSigner(keys.signing_key)
        self._hashed = HashedMatcher(Tokenizer(keys.store_key))
        self._evaluator = Evaluator(keys.oprf_key)

    # --- common -----------------------------------------------------------------------------

    def _organisation(self, context: grpc.ServicerContext) -> Organisation:
        try:
            return self._gatekeeper.organisation(context)
        except AccessDenied as exc:
            _abort(context, exc.code, str(exc))

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
        answer: Callable[[Request, CheckSession], Response | None],
        served: Callable[[CheckSession], Served],
        summary: Callable[[ndop_pb2.CheckSummary], Response],
    ) -> Iterator[Response]:
        """The stream both modes share: context first, then batches, then a signed summary."""
        organisation = self._organisation(context)
        session = CheckSession(
            self._accounts, self._signer, self._keys.register_id, organisation, mode
        )
        outcome = "cancelled"
        try:
            for position, request in enumerate(requests):
                if position == 0:
                    session.begin(request.context)
                response = answer(request, session)
                if response is not None:
                    yield response
            if not session.purpose:
                raise CheckRefused("a check must open with its context: purpose and request id")
            if not context.is_active():
                return
            done = served(session)
            yield summary(
                ndop_pb2.CheckSummary(
                    request_id=session.request_id,
                    register_version=done.version,
                    register_count=done.count,
                    items_checked=session.items,
                    items_opted_out=session.opted_out,
                    receipt=session.receipt(done),
                )
            )
            # Only reached once gRPC has taken the summary; a client that hung up before it
            # closes this generator at the yield above and the check is audited as cancelled.
            outcome = "completed"
        except (BatchRejected, CheckRefused) as exc:
            self._refuse(context, session, served(session), grpc.StatusCode.INVALID_ARGUMENT, exc)
        except QuotaExhausted as exc:
            self._refuse(context, session, served(session), grpc.StatusCode.RESOURCE_EXHAUSTED, exc)
        except VersionNotHeld as exc:
            self._refuse(
                context, session, served(session), grpc.StatusCode.FAILED_PRECONDITION, exc
            )
        finally:
            session.end(served(session), outcome)
        log.info(
            "check.completed",
            organisation=organisation.name,
            mode=mode,
            purpose=session.purpose,
            request_id=session.request_id,
            register_version=done.version,
            items=session.items,
            opted_out=session.opted_out if mode == "hashed" else None,
        )

    def _refuse(
        self,
        context: grpc.ServicerContext,
        session: CheckSession,
        served: Served,
        code: grpc.StatusCode,
        reason: Exception,
    ) -> NoReturn:
        """Audit the check as refused and end the call; `reason` is a safe sentence."""
        message = str(reason)
        session.end(served, code.name.lower().replace("_", "-"))
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
        self._organisation(context)
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
        pinned = Served(view.version, view.record.count)

        def answer(
            request: ndop_pb2.HashedCheckRequest, session: CheckSession
        ) -> ndop_pb2.HashedCheckResponse | None:
            if not request.digests:
                return None
            count = self._hashed.count(request.batch_id, request.digests)
            session.charge(count, request.digests)
            bits, hits = self._hashed.answer(view, request.digests)
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
            answer,
            lambda session: pinned,
            lambda summary: ndop_pb2.HashedCheckResponse(summary=summary),
        )

    def GetFilter(
        self, request: ndop_pb2.GetFilterRequest, context: grpc.ServicerContext
    ) -> Iterator[ndop_pb2.FilterChunk]:
        self._organisation(context)
        view = self._view(context) if request.version == 0 else self._holder.view(request.version)
        if view is None:
            _abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"register version {request.version} is no longer served; ask for the current one",
            )
        record = view.record
        data = view.filter_bytes
        header = ndop_pb2.FilterHeader(
            register_version=record.version,
            count=record.count,
            key_id=record.key_id,
            filter_scheme=published_filter.SCHEME,
            size=len(data),
            sha256=record.filter_sha256,
            false_positive_rate=published_filter.FALSE_POSITIVE_RATE,
        )
        for offset in range(0, max(len(data), 1), FILTER_CHUNK_BYTES):
            yield ndop_pb2.FilterChunk(
                header=header if offset == 0 else None,
                offset=offset,
                data=data[offset : offset + FILTER_CHUNK_BYTES],
            )

    def Evaluate(
        self,
        request_iterator: Iterator[ndop_pb2.EvaluateRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[ndop_pb2.EvaluateResponse]:
        self._view(context)
        pinned: list[RegisterView] = []

        def answer(
            request: ndop_pb2.EvaluateRequest, session: CheckSession
        ) -> ndop_pb2.EvaluateResponse | None:
            if not pinned:
                pinned.append(self._filter_view(request.context.register_version))
            if not request.blinded_elements:
                return None
            count = self._evaluator.count(request.batch_id, request.blinded_elements)
            session.charge(count, request.blinded_elements)
            elements = self._evaluator.answer(request.batch_id, request.blinded_elements)
            return ndop_pb2.EvaluateResponse(
                batch=ndop_pb2.EvaluatedBatch(
                    batch_id=request.batch_id,
                    register_version=pinned[0].version,
                    key_id=self._keys.oprf_key_id,
                    count=count,
                    evaluated_elements=elements,
                )
            )

        def served(session: CheckSession) -> Served:
            view = pinned[0] if pinned else self._holder.current
            return Served(view.version, view.record.count) if view else Served(0, 0)

        return self._run_check(
            context,
            "private",
            request_iterator,
            answer,
            served,
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
