"""The gRPC servicer: thin. It unpacks requests, calls the matchers, and packs answers.

Any malformed request ends the call with INVALID_ARGUMENT and a sentence naming the rule
broken; nothing a client sends can stop the server or reach a log.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from typing import Final

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from ndop_client import bloom
from ndop_client.crypto import oprf
from ndop_client.hashing import DIGEST_SIZE, SCHEME
from ndop_client.proto import ndop_pb2, ndop_pb2_grpc
from ndop_server.keys import RegisterKeys
from ndop_server.matching import MAX_BATCH_ITEMS, BatchRejected, Evaluator, HashedMatcher
from ndop_server.register_view import RegisterHolder, RegisterView
from ndop_server.tokens import Tokenizer

FILTER_CHUNK_BYTES: Final = 1 << 20
log = structlog.get_logger("ndop.server")


def _timestamp(iso: str) -> Timestamp:
    stamp = Timestamp()
    stamp.FromJsonString(iso.replace("+00:00", "Z"))
    return stamp


class OptOutRegisterService(ndop_pb2_grpc.OptOutRegisterServicer):  # type: ignore[misc]
    def __init__(self, holder: RegisterHolder, keys: RegisterKeys) -> None:
        self._holder = holder
        self._keys = keys
        self._hashed = HashedMatcher(Tokenizer(keys.store_key))
        self._evaluator = Evaluator(keys.oprf_key)

    def _view(self, context: grpc.ServicerContext) -> RegisterView:
        view = self._holder.current
        if view is None:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "no register version has been published yet; load a snapshot first",
            )
        return view

    def GetRegisterInfo(
        self, request: ndop_pb2.GetRegisterInfoRequest, context: grpc.ServicerContext
    ) -> ndop_pb2.RegisterInfo:
        view = self._view(context)
        record = view.record
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
                filter_scheme=bloom.SCHEME,
                filter_size=record.filter_size,
                filter_sha256=record.filter_sha256,
                filter_false_positive_rate=bloom.FALSE_POSITIVE_RATE,
            ),
            max_batch_items=MAX_BATCH_ITEMS,
        )

    def CheckHashed(
        self,
        request_iterator: Iterator[ndop_pb2.HashedCheckRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[ndop_pb2.HashedCheckResponse]:
        view = self._view(context)
        started = time.monotonic()
        request_id = ""
        checked = opted_out = 0
        submitted = hashlib.sha256()
        try:
            for position, request in enumerate(request_iterator):
                if position == 0:
                    request_id = request.context.request_id or str(uuid.uuid4())
                if not request.digests:
                    continue
                count, bits, hits = self._hashed.answer(view, request.batch_id, request.digests)
                submitted.update(request.digests)
                checked += count
                opted_out += hits
                yield ndop_pb2.HashedCheckResponse(
                    batch=ndop_pb2.MembershipBatch(
                        batch_id=request.batch_id,
                        register_version=view.version,
                        count=count,
                        opted_out=bits,
                    )
                )
        except BatchRejected as exc:
            log.info("check.rejected", mode="hashed", request_id=request_id, reason=str(exc))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        log.info(
            "check.completed",
            mode="hashed",
            request_id=request_id,
            register_version=view.version,
            items=checked,
            opted_out=opted_out,
            seconds=round(time.monotonic() - started, 3),
        )
        yield ndop_pb2.HashedCheckResponse(
            summary=ndop_pb2.CheckSummary(
                request_id=request_id,
                register_version=view.version,
                register_count=view.record.count,
                items_checked=checked,
                items_opted_out=opted_out,
            )
        )

    def GetFilter(
        self, request: ndop_pb2.GetFilterRequest, context: grpc.ServicerContext
    ) -> Iterator[ndop_pb2.FilterChunk]:
        view = self._view(context) if request.version == 0 else self._holder.view(request.version)
        if view is None:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"register version {request.version} is no longer served; ask for the current one",
            )
        record = view.record
        data = view.filter_bytes
        header = ndop_pb2.FilterHeader(
            register_version=record.version,
            count=record.count,
            key_id=record.key_id,
            filter_scheme=bloom.SCHEME,
            size=len(data),
            sha256=record.filter_sha256,
            false_positive_rate=bloom.FALSE_POSITIVE_RATE,
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
        view = self._view(context)
        started = time.monotonic()
        request_id = ""
        evaluated = 0
        submitted = hashlib.sha256()
        try:
            for position, request in enumerate(request_iterator):
                if position == 0:
                    request_id = request.context.request_id or str(uuid.uuid4())
                if not request.blinded_elements:
                    continue
                count, elements = self._evaluator.answer(request.batch_id, request.blinded_elements)
                submitted.update(request.blinded_elements)
                evaluated += count
                current = self._holder.current or view
                yield ndop_pb2.EvaluateResponse(
                    batch=ndop_pb2.EvaluatedBatch(
                        batch_id=request.batch_id,
                        register_version=current.version,
                        key_id=self._keys.oprf_key_id,
                        count=count,
                        evaluated_elements=elements,
                    )
                )
        except BatchRejected as exc:
            log.info("check.rejected", mode="private", request_id=request_id, reason=str(exc))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        current = self._holder.current or view
        log.info(
            "check.completed",
            mode="private",
            request_id=request_id,
            register_version=current.version,
            items=evaluated,
            seconds=round(time.monotonic() - started, 3),
        )
        yield ndop_pb2.EvaluateResponse(
            summary=ndop_pb2.CheckSummary(
                request_id=request_id,
                register_version=current.version,
                register_count=current.record.count,
                items_checked=evaluated,
            )
        )
