"""The register version a server answers from, held in memory and swapped when a newer one
is published.

A view is immutable. A check takes the current view once and answers every batch from it,
so swapping in a new version never changes or fails a check already in flight.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import structlog

from ndop_server.errors import StoreError
from ndop_server.filter_deltas import FilterDeltas
from ndop_server.locations import StoreLocation
from ndop_server.membership import SortedKeys
from ndop_server.store import FILTER_ARTIFACT, INDEX_ARTIFACT, Store, VersionRecord

log = structlog.get_logger("ndop.server")


@dataclass(frozen=True)
class RegisterView:
    record: VersionRecord
    index: np.ndarray
    filter_bytes: bytes
    lookup: SortedKeys = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lookup", SortedKeys(self.index))

    @property
    def version(self) -> int:
        return self.record.version

    def members(self, keys: np.ndarray) -> np.ndarray:
        """Which of `keys` (64-bit token prefixes) are in this version."""
        return self.lookup.contains(keys)


def load_view(store: Store, record: VersionRecord) -> RegisterView:
    index = np.frombuffer(store.artifact(record.version, INDEX_ARTIFACT), dtype="<u8")
    return RegisterView(record, index, store.artifact(record.version, FILTER_ARTIFACT))


class RegisterHolder:
    """The current view plus the one before it, refreshed from the store by a watcher thread.

    `on_version`, if given, is called with each version number as it is loaded, the first one
    included (which may be during construction).
    """

    def __init__(
        self,
        store_location: StoreLocation,
        poll_seconds: float = 1.0,
        on_version: Callable[[int], None] | None = None,
        on_reachability: Callable[[bool], None] | None = None,
        key_id: str | None = None,
    ) -> None:
        self._store = Store(store_location)
        self.deltas = FilterDeltas(self._store)
        self._poll_seconds = poll_seconds
        self._on_version = on_version
        self._on_reachability = on_reachability
        self._key_id = key_id
        self._foreign_warned = 0
        self.reachable = True
        self._lock = threading.Lock()
        self._current: RegisterView | None = None
        self._previous: RegisterView | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.refresh()

    @property
    def register_id(self) -> str | None:
        return self._store.register_id()

    @property
    def current(self) -> RegisterView | None:
        return self._current

    def view(self, version: int) -> RegisterView | None:
        """The view of `version` if it is still held (the current one or the one before)."""
        for view in (self._current, self._previous):
            if view is not None and view.version == version:
                return view
        return None

    def refresh(self) -> bool:
        """Load the newest published version if it is not the one held; True if it swapped."""
        with self._lock:
            record = self._servable(self._store.latest())
            if record is None or (self._current and self._current.version == record.version):
                return False
            view = load_view(self._store, record)
            self._previous, self._current = self._current, view
        log.info("register.version_loaded", version=record.version, count=record.count)
        if self._on_version is not None:
            self._on_version(record.version)
        return True

    def _servable(self, newest: VersionRecord | None) -> VersionRecord | None:
        """The newest version made with this server's keys. A newer one made with other keys
        (after `ndop keys rotate --register`) is not served: this server's keys could not
        answer for it. Say so once per such version. The store is read a second time only
        then: every poll reads the newest version, and it is nearly always this server's."""
        if newest is None or self._key_id is None or newest.key_id == self._key_id:
            return newest
        if newest.version != self._foreign_warned:
            self._foreign_warned = newest.version
            log.warning(
                "register.rekeyed_version_not_served",
                version=newest.version,
                advice="restart this server with the new keys file",
            )
        return self._store.latest(self._key_id)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="register-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        self._store.close()

    def _watch(self) -> None:
        """Refresh when the store says a version was published (PostgreSQL), and at least
        every poll interval; a store that cannot be reached turns health NOT_SERVING until
        it can."""
        while not self._stopping.is_set():
            try:
                self._store.wait_for_publication(self._poll_seconds)
                if self._stopping.is_set():
                    return
                self.refresh()
                self._set_reachable(True)
            except StoreError as exc:
                self._set_reachable(False, str(exc))
                self._stopping.wait(self._poll_seconds)
            except Exception:
                # Anything else (a damaged artifact, say) must not end the watcher: the server
                # would go on serving this version without a word. Say so, try again later.
                log.exception("register.refresh_failed")
                self._stopping.wait(self._poll_seconds)

    def _set_reachable(self, reachable: bool, reason: str = "") -> None:
        if reachable == self.reachable:
            return
        self.reachable = reachable
        if reachable:
            log.info("store.reachable_again")
        else:
            log.warning("store.unreachable", reason=reason)
        if self._on_reachability is not None:
            self._on_reachability(reachable)
