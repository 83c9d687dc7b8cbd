"""Progress: a bar on a terminal, a widget (or text) in a notebook, silence in a pipe or a
Spark executor; or whatever the caller passes.

A caller passes None (automatic), False (nothing), an object with start/advance/finish, or a
tqdm-like class (`tqdm.tqdm`, `tqdm.notebook.tqdm`, or anything called as
`factory(total=..., desc=...)` that has update() and close()).
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from typing import Any, Protocol, TextIO, TypeAlias

from ndop_core.errors import UsageError


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


class TqdmProgress:
    """A tqdm bar (or anything called like one)."""

    def __init__(self, factory: Callable[..., Any]) -> None:
        self._factory = factory
        self._bar: Any = None

    def start(self, total: int, label: str) -> None:
        self._bar = self._factory(total=total, desc=label, unit=" numbers", unit_scale=True)

    def advance(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(done)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


ProgressChoice: TypeAlias = "Progress | Callable[..., Any] | bool | None"


def for_stream(stream: TextIO = sys.stderr) -> Progress:
    """A bar when `stream` is a terminal, nothing otherwise."""
    return TerminalProgress(stream) if _is_terminal(stream) else NoProgress()


def chosen_progress(choice: ProgressChoice) -> Progress:
    if choice is None or choice is True:
        return automatic()
    if choice is False:
        return NoProgress()
    if all(hasattr(choice, name) for name in ("start", "advance", "finish")):
        chosen: Progress = choice  # type: ignore[assignment]
        return chosen
    if callable(choice):
        return TqdmProgress(choice)
    raise UsageError("progress must be None, a bool, a tqdm-like class or a Progress")


def automatic() -> Progress:
    """A notebook widget in Jupyter, a bar on a terminal, nothing anywhere else."""
    if in_notebook():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from tqdm.auto import tqdm
        return TqdmProgress(tqdm)
    return for_stream(sys.stderr)


def in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    get_ipython = getattr(shell, "get_ipython", None)
    if get_ipython is None:
        return False
    return type(get_ipython()).__name__ == "ZMQInteractiveShell"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
