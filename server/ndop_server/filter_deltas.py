"""Filter deltas for GetFilter: from the filter a client holds to a version this server serves.

Every version whose filter keeps its predecessor's slices stores its filter as a delta from the
predecessor's (store.DELTA_ARTIFACT, kept for store.DELTAS_KEPT versions). A client's base is
brought to the target through the chain of those deltas, composed into one; the result is sent
only if it is smaller than the whole filter. Composed deltas are cached: most clients ask from
the same few versions, within a bound on the memory they take.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from typing import Final

import numpy as np

from ndop_core import filter_delta
from ndop_server.store import DELTA_ARTIFACT, Store, VersionRecord

CACHED: Final = 16
CACHED_BYTES: Final = 16 * 1024 * 1024
"""A daily delta at 3.5 million entries is about 0.4 MB; this holds weeks of them."""


class FilterDeltas:
    """Deltas to held versions, read from `store` (shared with the caller; it locks itself)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, bytes, int], bytes | None] = OrderedDict()

    def between(self, base_version: int, base_sha256: bytes, target: VersionRecord) -> bytes | None:
        """The delta from the client's filter of `base_version` (whose digest it gives) to the
        filter of `target`, or None when the whole filter must be sent."""
        if not 0 < base_version < target.version or len(base_sha256) != 32:
            return None
        key = (base_version, base_sha256, target.version)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        found = self._compose(base_version, base_sha256, target)
        if found is not None and len(found) > CACHED_BYTES:
            return found
        with self._lock:
            self._cache[key] = found
            while len(self._cache) > CACHED or self._cached_bytes() > CACHED_BYTES:
                self._cache.popitem(last=False)
        return found

    def _cached_bytes(self) -> int:
        return sum(len(data) for data in self._cache.values() if data is not None)

    def _compose(
        self, base_version: int, base_sha256: bytes, target: VersionRecord
    ) -> bytes | None:
        records = self._store.records(base_version, target.version)
        if [r.version for r in records] != list(range(base_version, target.version + 1)):
            return None
        if records[0].filter_sha256 != base_sha256 or records[-1] != target:
            return None
        if any(r.key_id != target.key_id for r in records):
            return None
        stored = self._store.artifacts(DELTA_ARTIFACT, base_version + 1, target.version)
        flips: list[np.ndarray] = []
        header = b""
        size = 0
        for previous, record in itertools.pairwise(records):
            data = stored.get(record.version)
            if data is None:
                return None  # too old, or the layout changed on the way: no delta chain
            delta = filter_delta.decode(data)
            if delta.base_sha256 != previous.filter_sha256:
                return None
            flips.append(delta.flips)
            header = delta.target_header
            size += len(data)
            if size > 4 * target.filter_size:
                return None  # so much has changed that composing cannot pay
        if len(flips) == 1:
            data = stored[target.version]  # the stored delta itself: nothing to compose
        else:
            data = filter_delta.encode(base_sha256, header, filter_delta.compose(flips))
        return data if len(data) < target.filter_size else None
