"""Closing streams whose client has gone quiet, so an idle or stalled client cannot hold one
of the server's worker threads.

A stream is waiting on its client while the servicer waits for the next request, or for the
client to take the last answer (gRPC resumes the response generator only then). One watchdog
thread looks at every open stream a few times a second and cancels any that has waited longer
than the idle timeout; the servicer then sees its request iterator fail and ends the check.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc

Item = TypeVar("Item")


class StreamWatch:
    def __init__(self, watchdog: IdleWatchdog, context: grpc.ServicerContext) -> None:
        self._watchdog = watchdog
        self.context = context
        self.waiting_since: float | None = None
        self.timed_out = False

    def wait_on_client(self) -> None:
        self.waiting_since = self._watchdog.clock()

    def client_moved(self) -> None:
        self.waiting_since = None

    def requests(self, iterator: Iterator[Item]) -> Iterator[Item]:
        """The request stream, each wait for the next request watched."""
        while True:
            self.wait_on_client()
            try:
                item = next(iterator)
            except StopIteration:
                return
            finally:
                self.client_moved()
            yield item

    def close(self) -> None:
        self._watchdog.forget(self)


class IdleWatchdog:
    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self.clock = clock
        self._watches: set[StreamWatch] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, context: grpc.ServicerContext) -> StreamWatch:
        watch = StreamWatch(self, context)
        with self._lock:
            self._watches.add(watch)
        return watch

    def forget(self, watch: StreamWatch) -> None:
        with self._lock:
            self._watches.discard(watch)

    def sweep(self) -> int:
        """Cancel every stream idle for longer than the timeout; how many were cancelled."""
        now = self.clock()
        with self._lock:
            idle = [
                w
                for w in self._watches
                if w.waiting_since is not None and now - w.waiting_since > self.timeout
            ]
            for watch in idle:
                self._watches.discard(watch)
        for watch in idle:
            watch.timed_out = True
            watch.context.cancel()  # type: ignore[no-untyped-call]
        return len(idle)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="idle-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        interval = min(max(self.timeout / 4, 0.05), 1.0)
        while not self._stopping.wait(interval):
            self.sweep()
