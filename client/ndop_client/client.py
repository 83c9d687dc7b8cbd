"""The SDK entry point: a client object used as a context manager.

with ndop_client.Client("ndop.example.nhs.uk:443", token=..., purpose="research") as client:
    result = client.check(numbers)            # private mode by default
    print(result.register_version, len(result.cleared))
"""

from __future__ import annotations

import multiprocessing
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import grpc
import numpy as np

from ndop_client.check import CheckResult, FileCheck, check_file, check_sequence
from ndop_client.filter_cache import default_cache_dir
from ndop_client.hashed_mode import match_hashed
from ndop_client.matching import MatchOutcome
from ndop_client.private_mode import match_private
from ndop_client.progress import NoProgress, Progress
from ndop_client.register_info import RegisterInfo
from ndop_client.transport import TlsSettings, open_channel, translate
from ndop_core.cohort_files import CohortFile
from ndop_core.errors import FilterOutdated, UsageError
from ndop_core.proto import ndop_pb2, ndop_pb2_grpc
from ndop_core.purposes import PURPOSES

Mode = Literal["private", "hashed"]
MODES: tuple[Mode, ...] = ("private", "hashed")


class Client:
    """A connection to one ndop server. Not shared between threads.

    `timeout` bounds each single request (register info); check streams run as long as the
    cohort needs.
    """

    def __init__(
        self,
        server: str,
        *,
        insecure: bool = False,
        ca_file: Path | str | None = None,
        client_cert: Path | str | None = None,
        client_key: Path | str | None = None,
        token: str | None = None,
        purpose: str | None = None,
        workers: int | None = None,
        cache_dir: Path | str | None = None,
        timeout: float | None = 30.0,
    ) -> None:
        self.server = server
        self.purpose = purpose
        self.timeout = timeout
        self._workers = workers or os.cpu_count() or 1
        self._cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        token = token if token is not None else os.environ.get("NDOP_TOKEN")
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        tls = TlsSettings(
            insecure=insecure,
            ca_file=Path(ca_file) if ca_file else None,
            client_cert=Path(client_cert) if client_cert else None,
            client_key=Path(client_key) if client_key else None,
        )
        self._pool: ProcessPoolExecutor | None = None
        self._channel = open_channel(server, tls)
        self._stub = ndop_pb2_grpc.OptOutRegisterStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def info(self) -> RegisterInfo:
        """The register version the server is answering from, and its parameters."""
        with self._rpc_errors():
            reply = self._stub.GetRegisterInfo(
                ndop_pb2.GetRegisterInfoRequest(), metadata=self._metadata, timeout=self.timeout
            )
        return RegisterInfo.from_proto(reply)

    def check(
        self,
        numbers: Sequence[str],
        *,
        mode: Mode = "private",
        purpose: str | None = None,
        progress: Progress | None = None,
    ) -> CheckResult:
        """Check NHS numbers in any accepted written form; answers one status per input."""
        matcher = self._matcher(mode, purpose, progress or NoProgress())
        return check_sequence(list(numbers), matcher, mode)

    def check_file(
        self,
        input_path: Path,
        out: Path,
        *,
        mode: Mode = "private",
        column: str | None = None,
        purpose: str | None = None,
        progress: Progress | None = None,
    ) -> FileCheck:
        """Check a cohort file and write the cleared rows to `out` in the same format."""
        cohort = CohortFile(input_path, column)
        matcher = self._matcher(mode, purpose, progress or NoProgress())
        return check_file(cohort, out, matcher, mode)

    def _matcher(
        self, mode: Mode, purpose: str | None, progress: Progress
    ) -> Callable[[np.ndarray], MatchOutcome]:
        if mode not in MODES:
            raise UsageError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        declared = purpose or self.purpose
        if declared not in PURPOSES:
            raise UsageError(f"declare the purpose of the check, one of: {', '.join(PURPOSES)}")
        context = ndop_pb2.CheckContext(purpose=declared, request_id=str(uuid.uuid4()))

        def match(unique_values: np.ndarray) -> MatchOutcome:
            context.expected_items = len(unique_values)
            info = self.info()
            with self._rpc_errors():
                if mode == "hashed":
                    return match_hashed(
                        self._stub, info, unique_values, context, self._metadata, progress
                    )
                try:
                    return self._match_private(info, unique_values, context, progress)
                except FilterOutdated:
                    # The server moved on while this client held an older filter: once more,
                    # with the filter of the version it serves now, as a new request.
                    context.request_id = str(uuid.uuid4())
                    return self._match_private(self.info(), unique_values, context, progress)

        return match

    def _match_private(
        self,
        info: RegisterInfo,
        values: np.ndarray,
        context: ndop_pb2.CheckContext,
        progress: Progress,
    ) -> MatchOutcome:
        return match_private(
            self._stub,
            info,
            values,
            context,
            self._metadata,
            progress,
            self._process_pool(),
            self._workers,
            self._cache_dir,
        )

    def _process_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the process already runs gRPC threads.
            self._pool = ProcessPoolExecutor(
                max_workers=self._workers, mp_context=multiprocessing.get_context("spawn")
            )
        return self._pool

    @contextmanager
    def _rpc_errors(self) -> Iterator[None]:
        try:
            yield
        except grpc.RpcError as exc:
            raise translate(exc, self.server) from None
