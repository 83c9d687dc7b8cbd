"""A request stream a test releases message by message, for holding a gRPC stream open at a
chosen point (mid-check, idle, before a batch) and then letting it go on or end."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

GIVE_UP_SECONDS = 30.0


class Gate:
    """A request stream the test releases message by message: `first` is ready at once, each
    `send` adds one, `close` ends the stream once what was sent has gone. It gives up (ends)
    `give_up_seconds` after iteration starts, so a test that fails half-way cannot hang."""

    def __init__(self, first: Any, give_up_seconds: float = GIVE_UP_SECONDS) -> None:
        self._queue: list[Any] = [first]
        self._ready = threading.Condition()
        self._closed = False
        self._give_up_seconds = give_up_seconds

    def send(self, message: Any) -> None:
        with self._ready:
            self._queue.append(message)
            self._ready.notify_all()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def __iter__(self) -> Iterator[Any]:
        deadline = time.monotonic() + self._give_up_seconds
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    self._ready.wait(left)
                if not self._queue:
                    return
                message = self._queue.pop(0)
            yield message
