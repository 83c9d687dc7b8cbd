"""The SDK entry point: a client object used as a context manager.

with ndop_client.Client("ndop.example.nhs.uk:443", token=..., purpose="research") as client:
    result = client.check(numbers)            # private mode by default
    print(result.register_version, len(result.cleared))
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import grpc
import numpy as np

from ndop_client import report
from ndop_client.check import FileCheck, check_column, check_file
from ndop_client.column_values import as_sequence, texts_of
from ndop_client.hashed_mode import match_hashed
from ndop_client.matching import MatchOutcome
from ndop_client.progress import Progress, ProgressChoice, chosen_progress
from ndop_client.register_info import RegisterInfo
from ndop_client.replicas import ReplicaSet
from ndop_client.results import CheckResult
from ndop_client.stall import DEFAULT_STALL_SECONDS, StallPolicy
from ndop_client.transport import TlsSettings, translate
from ndop_core.cohort_files import CohortFile
from ndop_core.errors import AuthenticationFailed, FilterOutdated, ServerUnavailable, UsageError
from ndop_core.proto import ndop_pb2, ndop_pb2_grpc
from ndop_core.purposes import PURPOSES
from ndop_core.worker_pool import WorkerPool

Answer = TypeVar("Answer")
HASH_IN_WORKERS_FROM: Final = 200_000
"""Hashed checks of this many numbers or more are hashed in the worker processes, on every
core; below it, starting them costs more than it saves."""
_BYTES_PER_ROW: Final = 13
"""What a row of a cohort file takes at least, roughly (a .dat row is 13 bytes with CRLF)."""
Mode = Literal["private", "hashed"]
MODES: tuple[Mode, ...] = ("private", "hashed")


@dataclass(frozen=True)
class Connection:
    """What helpers that run their own check (ndop_client.spark) need from a Client."""

    stub: ndop_pb2_grpc.OptOutRegisterStub
    metadata: tuple[tuple[str, str], ...]
    cache_dir: Path
    stall: StallPolicy
    errors: Callable[[], AbstractContextManager[None]]


class Client:
    """A connection to one ndop server. Not shared between threads.

    `timeout` bounds each single request (register info); check streams run as long as the
    cohort needs, but end with ServerUnavailable when the server owes an answer and sends
    nothing for `stall_timeout` seconds.
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
        stall_timeout: float = DEFAULT_STALL_SECONDS,
    ) -> None:
        if stall_timeout <= 0:
            raise UsageError("the stall timeout must be a positive number of seconds")
        self.server = server
        self.purpose = purpose
        self.timeout = timeout
        self.stall_timeout = stall_timeout
        self._authenticates = bool(token or os.environ.get("NDOP_TOKEN") or client_cert)
        self._workers = workers or os.cpu_count() or 1
        self._chosen_cache_dir = Path(cache_dir) if cache_dir else None
        token = token if token is not None else os.environ.get("NDOP_TOKEN")
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self._tls = TlsSettings(
            insecure=insecure,
            ca_file=Path(ca_file) if ca_file else None,
            client_cert=Path(client_cert) if client_cert else None,
            client_key=Path(client_key) if client_key else None,
        )
        self._pool: WorkerPool | None = None
        self._hashing_pool: WorkerPool | None = None
        self._replicas = ReplicaSet(server, self._tls)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _stub(self) -> ndop_pb2_grpc.OptOutRegisterStub:
        return self._replicas.current.stub

    @property
    def _address(self) -> str:
        return self._replicas.current.address

    def close(self) -> None:
        self._replicas.close()
        for pool in (self._pool, self._hashing_pool):
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        self._pool = self._hashing_pool = None

    def info(self) -> RegisterInfo:
        """The register version the server is answering from, and its parameters (from the
        next replica that answers, when several were given)."""
        return self._on_any_replica(self._info)

    def _info(self) -> RegisterInfo:
        deadline = min(self.timeout or self.stall_timeout, self.stall_timeout)
        with self._rpc_errors(deadline):
            reply = self._stub.GetRegisterInfo(
                ndop_pb2.GetRegisterInfoRequest(), metadata=self._metadata, timeout=deadline
            )
        return RegisterInfo.from_proto(reply)

    def _on_any_replica(self, call: Callable[[], Answer]) -> Answer:
        """`call` on the current replica, then on each other one while they cannot be
        reached; the last failure if none can."""
        for attempt in range(len(self._replicas)):
            try:
                return call()
            except ServerUnavailable:
                if attempt == len(self._replicas) - 1:
                    raise
                self._replicas.advance()
        raise AssertionError("a replica set is never empty")

    def check(
        self,
        numbers: Iterable[Any],
        *,
        mode: Mode = "private",
        purpose: str | None = None,
        progress: ProgressChoice = None,
        max_invalid_rate: float | None = None,
    ) -> CheckResult:
        """Check a column of NHS numbers: a list, NumPy array, pandas or polars Series of str,
        int or float (None and NaN are invalid, never an error). One status per input.

        `progress`: None shows a bar in a notebook or on a terminal, False nothing; or pass a
        tqdm-like class or an object with start/advance/finish."""
        inputs = as_sequence(numbers)
        self._warm_up(mode, len(inputs))
        matcher = self._matcher(mode, purpose, chosen_progress(progress))
        return check_column(inputs, texts_of(inputs), matcher, mode, max_invalid_rate)

    def check_file(
        self,
        input_path: Path | str,
        out: Path | str,
        *,
        mode: Mode = "private",
        column: str | None = None,
        purpose: str | None = None,
        report_path: Path | str | None = None,
        receipt_path: Path | str | None = None,
        encoding: str = "utf-8",
        format: str | None = None,
        max_invalid_rate: float | None = None,
        progress: ProgressChoice = None,
    ) -> FileCheck:
        """What `ndop check` does: check a cohort file (or `-`, standard input), write the
        cleared rows to `out` (or `-`) in the same format, the signed receipt beside the report
        (or beside `out`), and the report when `report_path` is given. `check.report` holds it.
        """
        paths = report.OutputPaths.of(input_path, out, report_path, receipt_path)
        declared = self.declared_purpose(purpose)
        with CohortFile(input_path, column, encoding=encoding, format=format) as cohort:
            self._warm_up(mode, (cohort.size or 0) // _BYTES_PER_ROW)
            matcher = self._matcher(mode, declared, chosen_progress(progress))
            check = check_file(cohort, out, matcher, mode, max_invalid_rate=max_invalid_rate)
        check.report = report.save(check, declared, paths)
        return check

    def connection(self) -> Connection:
        return Connection(
            self._stub, self._metadata, self._cache_dir, self._watch(), self._rpc_errors
        )

    def declared_purpose(self, purpose: str | None) -> str:
        """`purpose`, or the client's, if it is one the service knows; UsageError otherwise."""
        declared = purpose or self.purpose
        if declared not in PURPOSES:
            raise UsageError(f"declare the purpose of the check, one of: {', '.join(PURPOSES)}")
        return declared

    def _matcher(
        self, mode: Mode, purpose: str | None, progress: Progress
    ) -> Callable[[np.ndarray], MatchOutcome]:
        if mode not in MODES:
            raise UsageError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        context = ndop_pb2.CheckContext(
            purpose=self.declared_purpose(purpose), request_id=str(uuid.uuid4())
        )

        def match(unique_values: np.ndarray) -> MatchOutcome:
            def on_this_replica() -> MatchOutcome:
                context.request_id = str(uuid.uuid4())
                return match_here(unique_values)

            try:
                return self._on_any_replica(on_this_replica)
            finally:
                self._replicas.advance()  # the next check starts on the next replica

        def match_here(unique_values: np.ndarray) -> MatchOutcome:
            context.expected_items = len(unique_values)
            info = self._info()
            with self._rpc_errors():
                if mode == "hashed":
                    in_workers = self._hashes_in_workers(len(unique_values))
                    return match_hashed(
                        self._stub,
                        info,
                        unique_values,
                        context,
                        self._metadata,
                        progress,
                        self._watch(),
                        self._hash_pool() if in_workers else None,
                        self._workers - 1,
                    )
                try:
                    return self._match_private(info, unique_values, context, progress)
                except FilterOutdated:
                    # The server moved on while this client held an older filter: once more,
                    # with the filter of the version it serves now, as a new request.
                    context.request_id = str(uuid.uuid4())
                    return self._match_private(self._info(), unique_values, context, progress)

        return match

    def _match_private(
        self,
        info: RegisterInfo,
        values: np.ndarray,
        context: ndop_pb2.CheckContext,
        progress: Progress,
    ) -> MatchOutcome:
        # Imported here: libsodium and the filter code load in ~30 ms that hashed mode saves.
        from ndop_client.private_mode import PrivateResources, match_private

        return match_private(
            self._stub,
            info,
            values,
            context,
            self._metadata,
            progress,
            PrivateResources(self._process_pool(), self._workers, self._cache_dir, self._watch()),
        )

    @cached_property
    def _cache_dir(self) -> Path:
        # The filter cache's code is private mode's, loaded only when a check needs it.
        from ndop_client.filter_cache import default_cache_dir

        return self._chosen_cache_dir or default_cache_dir()

    def _watch(self) -> StallPolicy:
        return StallPolicy(self.stall_timeout, self._address)

    def _hashes_in_workers(self, numbers: int) -> bool:
        return self._workers > 1 and numbers >= HASH_IN_WORKERS_FROM

    def _warm_up(self, mode: Mode, rows: int) -> None:
        """Start the worker processes a check will use while it reads its input."""
        if mode == "private":
            self._process_pool().start(preload=("ndop_client.private_workers",))
        elif mode == "hashed" and self._hashes_in_workers(rows):
            self._hash_pool().start(preload=("ndop_core.hashing",))

    def _hash_pool(self) -> WorkerPool:
        """Hashed mode's workers: one core fewer than private mode's, since this process hashes
        too."""
        if self._hashing_pool is None:
            self._hashing_pool = WorkerPool(self._workers - 1)
        return self._hashing_pool

    def _process_pool(self) -> WorkerPool:
        if self._pool is None:
            self._pool = WorkerPool(self._workers)
        return self._pool

    @contextmanager
    def _rpc_errors(self, deadline: float | None = None) -> Iterator[None]:
        try:
            yield
        except grpc.RpcError as exc:
            error = translate(exc, self._address, deadline, self._tls)
            if isinstance(error, AuthenticationFailed) and not self._authenticates:
                error = AuthenticationFailed(
                    f"the ndop server at {self._address} needs your organisation's token: set "
                    "NDOP_TOKEN or pass --token (token= in Python)"
                )
            raise error from None
