"""A progress bar on a terminal; silence in a pipe."""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO


class Progress(Protocol):
    def start(self, total: int, label: str) -> None: ...
    def advance(self, done: int) -> None: ...
    def finish(self) -> None: ...


class NoProgress:
    def start(self, total: int, label: str) -> None:
        pass

    def advance(self, done: int) -> None:
        pass

    def finish(self) -> None:
        pass


class TerminalProgress:
    """Redraws one line on `stream` at most ten times a second."""

    WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._total = 0
        self._done = 0
        self._label = ""
        self._started = 0.0
        self._drawn = 0.0

    def start(self, total: int, label: str) -> None:
        self._total, self._done, self._label = total, 0, label
        self._started = time.monotonic()
        self._draw(force=True)

    def advance(self, done: int) -> None:
        self._done += done
        self._draw(force=False)

    def finish(self) -> None:
        self._draw(force=True)
        self._stream.write("\n")
        self._stream.flush()

    def _draw(self, *, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._drawn < 0.1:
            return
        self._drawn = now
        fraction = self._done / self._total if self._total else 1.0
        filled = int(fraction * self.WIDTH)
        rate = self._done / max(now - self._started, 1e-9)
        self._stream.write(
            f"\r{self._label:<10} [{'#' * filled}{'.' * (self.WIDTH - filled)}] "
            f"{self._done:,}/{self._total:,} ({rate:,.0f}/s)"
        )
        self._stream.flush()


def for_stream(stream: TextIO = sys.stderr) -> Progress:
    """A bar when `stream` is a terminal, nothing otherwise."""
    return TerminalProgress(stream) if stream.isatty() else NoProgress()
