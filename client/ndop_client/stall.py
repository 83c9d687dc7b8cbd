"""A stall deadline for streaming calls: a server that owes an answer and sends nothing for
`seconds` (frozen, overloaded, or behind a dead link that TCP has not noticed) ends the call
with one clear sentence instead of leaving the client waiting for ever.

gRPC keepalive pings (transport.CHANNEL_OPTIONS) notice a dead connection; this notices a live
connection to a server that has stopped working.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Protocol

import grpc

from ndop_core.errors import ServerUnavailable

DEFAULT_STALL_SECONDS: Final = 60.0


class _Cancellable(Protocol):
    def cancel(self) -> bool: ...


@dataclass(frozen=True)
class StallPolicy:
    seconds: float
    server: str

    def watch(self, what: str) -> StallWatch:
        return StallWatch(self.seconds, self.server, what)


class StallWatch:
    """Cancels the call it guards (`guarding(call)`) when answers are owed and none has come
    for `seconds`; on leaving the block the cancelled call's error becomes ServerUnavailable.
    `expect` and `received` may be called from any thread, before the call exists too."""

    def __init__(self, seconds: float, server: str, what: str) -> None:
        self._call: _Cancellable | None = None
        self._seconds = seconds
        self._server = server
        self._what = what
        self._owed = 0
        self._last = time.monotonic()
        self._done = False
        self._condition = threading.Condition()
        self.stalled = False
        self._thread = threading.Thread(target=self._run, name="ndop-stall", daemon=True)

    def guarding(self, call: _Cancellable) -> StallWatch:
        self._call = call
        return self

    def __enter__(self) -> StallWatch:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with self._condition:
            self._done = True
            self._condition.notify_all()
        self._thread.join()
        if self.stalled and (exc is None or isinstance(exc, grpc.RpcError)):
            at = f" at {self._server}" if self._server else ""
            raise ServerUnavailable(
                f"the ndop server{at} stopped answering during {self._what} "
                f"(nothing for {self._seconds:g} s); nothing was written: try again later or "
                "ask the register operator"
            ) from None

    def expect(self, answers: int = 1) -> None:
        """A request went out that the server must answer."""
        with self._condition:
            if self._owed == 0:
                self._last = time.monotonic()
            self._owed += answers

    def received(self, settles: int = 1) -> None:
        """An answer came (settling `settles` of those owed)."""
        with self._condition:
            self._last = time.monotonic()
            self._owed = max(0, self._owed - settles)

    def _run(self) -> None:
        with self._condition:
            while not self._done:
                waited = time.monotonic() - self._last
                if self._owed and waited >= self._seconds:
                    self.stalled = True
                    break
                self._condition.wait(max(0.05, self._seconds - waited) if self._owed else 0.5)
        if self.stalled and self._call is not None:
            self._call.cancel()
