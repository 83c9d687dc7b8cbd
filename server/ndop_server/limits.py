"""Limits held in the server's memory, so that no organisation can starve the others:
how many check streams each may hold open, how fast its numbers are answered, and how often
failed authentications from one peer reach the audit log.

Clocks and sleeps are passed in, so the limits are tested without waiting on the wall clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


class TooBusy(Exception):
    """The stream cannot be opened now; the message is safe to send and says to retry."""


class StreamLimiter:
    """At most `per_organisation` open check streams for each organisation, and `total` in
    all, so the worker threads left over always serve health checks and other callers."""

    def __init__(self, per_organisation: int, total: int) -> None:
        self._per_organisation = per_organisation
        self._total = total
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, organisation: str) -> Iterator[None]:
        with self._lock:
            mine = self._open.get(organisation, 0)
            if mine >= self._per_organisation:
                raise TooBusy(
                    f"this organisation already has {mine} checks open, the most allowed at "
                    "once; retry when one has finished"
                )
            if sum(self._open.values()) >= self._total:
                raise TooBusy("the server is at its limit of open checks; retry in a few seconds")
            self._open[organisation] = mine + 1
        try:
            yield
        finally:
            with self._lock:
                self._open[organisation] -= 1
                if not self._open[organisation]:
                    del self._open[organisation]


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class RateLimiter:
    """A token bucket per organisation: numbers per second, with a burst of one second's worth.
    A batch larger than the bucket drives it below zero and waits for the difference. Callers
    wait rather than fail, so an honest client is slowed, not refused."""

    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def delay(self, organisation: str, rate: int, items: int) -> float:
        """Take `items` tokens; the seconds the caller must wait before answering."""
        if rate <= 0 or items <= 0:
            return 0.0
        capacity = float(rate)
        with self._lock:
            now = self.clock()
            bucket = self._buckets.setdefault(organisation, _Bucket(capacity, now))
            bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
            bucket.tokens -= items
            return max(0.0, -bucket.tokens / rate)

    def wait(self, organisation: str, rate: int, items: int) -> None:
        pause = self.delay(organisation, rate, items)
        if pause:
            self.sleep(pause)


@dataclass
class EventBudget:
    """At most `per_minute` events a minute per key (a peer address), so that a flood of failed
    authentications cannot flood the audit log or the logs; the rest are only counted."""

    per_minute: int = 20
    clock: Callable[[], float] = time.monotonic
    _window: dict[str, tuple[float, int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def allow(self, key: str) -> bool:
        with self._lock:
            now = self.clock()
            started, seen = self._window.get(key, (now, 0))
            if now - started >= 60:
                started, seen = now, 0
            self._window[key] = (started, seen + 1)
            if len(self._window) > 10_000:
                self._window = {k: v for k, v in self._window.items() if now - v[0] < 60}
            return seen < self.per_minute
