"""Publishing register versions: a full snapshot, or a change set of opt-outs set and withdrawn.

For every opted-out number y the store keeps two keyed values and nothing else:
- its token: the client's hashed-mode digest keyed with the store key (see tokens.py);
- its filter key: the first 32 bytes of the OPRF output F_k(y) (see ndop_core.filter).
Each version publishes artifacts built from its members: the sorted 64-bit index the server
answers hashed mode from, the Bloom filter private-mode clients download, how many members set
each of the filter's bits, and, when the filter keeps its predecessor's slices, the filter as a
delta from the predecessor's (see version_build).

A version is derived from the one before it whenever it can be: only the numbers that enter the
register are evaluated and only the entries that change are hashed, so a daily change set takes
seconds whatever the register's size. A change set that changes nothing publishes nothing.

The slow work (OPRF evaluations, the artifacts) is prepared from a read snapshot; the new version
is then written in one short transaction, so a crash at any point leaves the previous version
as it was, and a version published meanwhile by someone else makes this one refuse, not merge.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import numpy as np
import structlog

from ndop_core import filter as published_filter
from ndop_core.cohort_files import CohortFile, InvalidRow, parse_chunk
from ndop_core.hashing import DIGEST_SIZE, Hasher
from ndop_core.nhs_number import INVALID, canonical_bytes, distinct
from ndop_core.packing import split
from ndop_core.worker_pool import WorkerPool
from ndop_server import filter_builder, register_work, version_build
from ndop_server.errors import ConfigurationError, StoreError
from ndop_server.keys import RegisterKeys
from ndop_server.store import (
    COUNTS_ARTIFACT,
    DELTA_ARTIFACT,
    FILTER_ARTIFACT,
    INDEX_ARTIFACT,
    Preparation,
    Store,
    VersionRecord,
)
from ndop_server.tokens import TOKEN_SIZE, Tokenizer

__all__ = ["FILTER_ARTIFACT", "INDEX_ARTIFACT", "Published", "Publisher", "read_numbers"]

_WORK_ITEMS: Final = 4096
_HASH_ITEMS: Final = 65536
STAGES: Final = ("reading", "evaluating", "index", "filter", "writing")

log = structlog.get_logger("ndop.register")


@dataclass
class NumberFile:
    """The unique valid numbers of an input file, and the rows that were not valid."""

    values: np.ndarray
    invalid: list[InvalidRow] = field(default_factory=list)
    duplicates: int = 0


@dataclass
class Published:
    """What a load or change set did. `record` is the version published, or, when `published`
    is False because nothing changed, the version that stays current."""

    record: VersionRecord
    invalid: list[InvalidRow]
    duplicates: int
    unchanged: int
    published: bool = True
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent in each of STAGES."""


def read_numbers(path: Path) -> NumberFile:
    """Unique valid numbers of a register input file; invalid rows are reported, not fatal."""
    cohort = CohortFile(path)
    chunks: list[np.ndarray] = []
    invalid: list[InvalidRow] = []
    for chunk in cohort.chunks():
        values, _, chunk_invalid = parse_chunk(chunk)
        chunks.append(values[values != INVALID])
        invalid.extend(chunk_invalid)
    every = np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)
    unique = distinct(every)
    return NumberFile(unique, invalid, len(every) - len(unique))


Entry = tuple[int, bytes, bytes]
"""(entry id, token, filter key) of a current member."""


@dataclass
class _Change:
    values: np.ndarray
    """The numbers entering the register."""
    tokens: bytes | None
    """Their concatenated tokens, or None to compute them while they are evaluated."""
    withdrawn: list[Entry]
    rekey: bool = False
    """Every member is withdrawn and entered again: nothing of the base is reused."""


@dataclass
class _Kept:
    """Concatenated tokens and filter keys of the members that stay."""

    tokens: bytes
    keys: bytes


@dataclass
class _Plan:
    base: VersionRecord | None
    change: _Change
    count: int
    params: published_filter.FilterParameters
    base_index: bytes | None
    base_filter: bytes | None
    base_counts: bytes | None
    kept: _Kept | None

    @property
    def base_version(self) -> int:
        return 0 if self.base is None else self.base.version

    @property
    def unchanged(self) -> bool:
        """Nothing enters, nothing leaves, and a version exists already (a first version is
        published even when empty: no version and an empty one are not the same)."""
        change = self.change
        nothing = not len(change.values) and not change.withdrawn and not change.rekey
        return self.base is not None and nothing


@dataclass
class _Stages:
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    @contextmanager
    def stage(self, name: str, **details: object) -> Iterator[None]:
        if name != STAGES[0]:  # reading comes first: a refused input then logs nothing
            log.info("register.stage", stage=name, **details)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started


class Publisher:
    """Builds and publishes register versions, using `workers` processes for the heavy parts."""

    def __init__(self, store: Store, keys: RegisterKeys, workers: int | None = None) -> None:
        store.bind(keys.register_id)
        self._store = store
        self._keys = keys
        self._workers = workers or os.cpu_count() or 1
        self._hasher = Hasher(keys.salt)
        self._tokenizer = Tokenizer(keys.store_key)

    # --- the three ways to a new version ----------------------------------------------------

    def load_snapshot(self, path: Path) -> Published:
        stages = _Stages()
        with stages.stage("reading"):
            numbers = read_numbers(path)
            with self._store.preparation() as preparation:
                if preparation.base is None or preparation.base.count == 0:
                    # Nothing to compare with: every number enters, tokens come later.
                    change = _Change(numbers.values, None, [])
                else:
                    tokens = self._tokens(numbers.values)
                    preparation.stage(split(tokens, TOKEN_SIZE))
                    change = _entering(
                        numbers.values,
                        tokens,
                        preparation.staged_not_live(),
                        preparation.live_not_staged(),
                    )
                plan = self._plan(preparation, change)
        unchanged = len(numbers.values) - len(change.values)
        return self._carry_out(plan, stages, "snapshot", numbers, unchanged)

    def rekey(self, path: Path) -> Published:
        """A new version holding exactly the snapshot's numbers, every entry made again with
        this publisher's keys (after `ndop keys rotate --register`). The store holds no
        numbers, so it cannot re-key its entries itself: the current snapshot is needed."""
        stages = _Stages()
        with stages.stage("reading"):
            numbers = read_numbers(path)
            with self._store.preparation() as preparation:
                change = _Change(numbers.values, None, list(preparation.live_entries()), True)
                plan = self._plan(preparation, change)
        return self._carry_out(plan, stages, "rekey", numbers, 0)

    def apply_changes(self, add: Path | None, remove: Path | None) -> Published:
        if add is None and remove is None:
            raise ConfigurationError("give --add FILE, --remove FILE, or both")
        stages = _Stages()
        with stages.stage("reading"):
            adding = read_numbers(add) if add else NumberFile(np.empty(0, dtype=np.int64))
            removing = read_numbers(remove) if remove else NumberFile(np.empty(0, dtype=np.int64))
            both = np.intersect1d(adding.values, removing.values)
            if len(both):
                raise ConfigurationError(
                    f"{len(both)} numbers appear in both --add and --remove; "
                    "a change set must say one or the other"
                )
            add_tokens = self._tokens(adding.values)
            with self._store.preparation() as preparation:
                preparation.stage(split(self._tokens(removing.values), TOKEN_SIZE))
                withdrawn = preparation.live_staged()
                preparation.stage(split(add_tokens, TOKEN_SIZE))
                change = _entering(
                    adding.values, add_tokens, preparation.staged_not_live(), withdrawn
                )
                plan = self._plan(preparation, change)
        unchanged = (len(adding.values) - len(change.values)) + (
            len(removing.values) - len(withdrawn)
        )
        both_files = NumberFile(
            np.empty(0, dtype=np.int64),
            adding.invalid + removing.invalid,
            adding.duplicates + removing.duplicates,
        )
        return self._carry_out(plan, stages, "changes", both_files, unchanged)

    # --- planning ---------------------------------------------------------------------------

    def _plan(self, preparation: Preparation, change: _Change) -> _Plan:
        """What the new version is made from, read in the preparation's snapshot."""
        base = preparation.base
        staying = 0 if base is None or change.rekey else base.count - len(change.withdrawn)
        count = staying + len(change.values)
        derive = base is not None and not change.rekey and base.key_id == self._keys.oprf_key_id
        base_filter = preparation.artifact(FILTER_ARTIFACT) if derive else None
        previous = (
            published_filter.FilterParameters.from_header(base_filter).capacity
            if base_filter is not None
            else None
        )
        params = filter_builder.parameters(filter_builder.capacity_for(count, previous), count)
        base_index = preparation.artifact(INDEX_ARTIFACT) if derive else None
        base_counts = None
        if base_filter is not None and version_build.same_slices(base_filter, params):
            base_counts = preparation.artifact(COUNTS_ARTIFACT)
        kept = None
        if change.rekey or base is None:
            kept = _Kept(b"", b"")
        elif base_index is None or base_counts is None:
            kept = _kept(preparation.live_entries(), change.withdrawn)
        return _Plan(base, change, count, params, base_index, base_filter, base_counts, kept)

    def _kept(self, plan: _Plan) -> _Kept:
        """The members that stay, read now if the plan did not need them."""
        if plan.kept is None:
            with self._store.preparation() as preparation:
                if preparation.base_version != plan.base_version:
                    raise StoreError(
                        f"version {preparation.base_version} was published while this one was "
                        f"being prepared from version {plan.base_version}; run the command again"
                    )
                plan.kept = _kept(preparation.live_entries(), plan.change.withdrawn)
        return plan.kept

    # --- building and publishing ------------------------------------------------------------

    def _carry_out(
        self, plan: _Plan, stages: _Stages, source: str, numbers: NumberFile, unchanged: int
    ) -> Published:
        if plan.unchanged:
            assert plan.base is not None
            log.info("register.unchanged", version=plan.base.version, count=plan.base.count)
            return Published(
                plan.base, numbers.invalid, numbers.duplicates, unchanged, False, stages.seconds
            )
        with self._pool() as pool:
            with stages.stage("evaluating", entries=len(plan.change.values)):
                new_tokens, new_keys, new_values = self._evaluate(pool, plan)
            with stages.stage("index", entries=plan.count):
                index = self._index(plan, new_tokens)
            with stages.stage("filter", entries=plan.count):
                artifacts = self._filter(pool, plan, new_keys, new_values)
        with stages.stage("writing"):
            record = self._write(plan, source, new_tokens, new_keys, index, artifacts)
        log.info(
            "register.timings",
            version=record.version,
            **{f"{name}_seconds": round(seconds, 3) for name, seconds in stages.seconds.items()},
        )
        return Published(
            record, numbers.invalid, numbers.duplicates, unchanged, True, stages.seconds
        )

    def _evaluate(self, pool: WorkerPool, plan: _Plan) -> tuple[bytes, bytes, np.ndarray]:
        """Tokens, filter keys and slice values of the entering numbers. The workers evaluate
        while this process computes any tokens not known yet."""
        values = plan.change.values
        params = plan.params
        futures = deque(
            pool.submit(
                register_work.evaluate,
                self._keys.oprf_key,
                canonical_bytes(values[start : start + _WORK_ITEMS]),
                params,
            )
            for start in range(0, len(values), _WORK_ITEMS)
        )
        tokens = plan.change.tokens
        if tokens is None:
            tokens = self._tokens(values)
        chunk = f"<u{published_filter.chunk_bytes(params.bits_per_slice)}"
        slice_values = np.empty((params.num_slices, len(values)), dtype=chunk)
        keys = bytearray()
        start = 0
        while futures:  # popped as they are used: a done future holds its result
            batch_keys, batch_values = futures.popleft().result()
            keys += batch_keys
            slice_values[:, start : start + batch_values.shape[1]] = batch_values
            start += batch_values.shape[1]
        return tokens, bytes(keys), slice_values

    def _index(self, plan: _Plan, new_tokens: bytes) -> bytes:
        if plan.base_index is not None:
            withdrawn = b"".join(token for _, token, _ in plan.change.withdrawn)
            try:
                return version_build.index_changed(plan.base_index, new_tokens, withdrawn)
            except version_build.BaseMismatch as exc:
                log.warning("register.rebuilding_index", reason=str(exc))
        return version_build.index_whole(self._kept(plan).tokens + new_tokens)

    def _filter(
        self, pool: WorkerPool, plan: _Plan, new_keys: bytes, new_values: np.ndarray
    ) -> version_build.FilterArtifacts:
        params = plan.params
        if plan.base_filter is not None and plan.base_counts is not None:
            withdrawn = b"".join(key for _, _, key in plan.change.withdrawn)
            try:
                return version_build.filter_changed(
                    params,
                    plan.base_filter,
                    plan.base_counts,
                    new_values,
                    self._slice_values(pool, params, withdrawn),
                )
            except version_build.BaseMismatch as exc:
                log.warning("register.rebuilding_filter", reason=str(exc))
        kept = self._kept(plan).keys
        every = new_values
        if kept:
            every = np.concatenate([self._slice_values(pool, params, kept), new_values], axis=1)
        return version_build.filter_whole(params, every, plan.base_filter)

    def _write(
        self,
        plan: _Plan,
        source: str,
        new_tokens: bytes,
        new_keys: bytes,
        index: bytes,
        artifacts: version_build.FilterArtifacts,
    ) -> VersionRecord:
        change = plan.change
        with self._store.publication(plan.base_version) as publication:
            record = VersionRecord(
                version=publication.version,
                published_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
                count=plan.count,
                source=source,
                added=len(change.values),
                removed=len(change.withdrawn),
                key_id=self._keys.oprf_key_id,
                filter_sha256=hashlib.sha256(artifacts.filter).digest(),
                filter_size=len(artifacts.filter),
            )
            publication.remove(entry for entry, _, _ in change.withdrawn)
            publication.add(
                _in_token_order(new_tokens, new_keys), TOKEN_SIZE, published_filter.KEY_BYTES
            )
            stored = {
                INDEX_ARTIFACT: index,
                FILTER_ARTIFACT: artifacts.filter,
                COUNTS_ARTIFACT: artifacts.counts,
            }
            if artifacts.delta is not None:
                stored[DELTA_ARTIFACT] = artifacts.delta
            publication.finish(record, stored)
        log.info(
            "register.published",
            version=record.version,
            count=record.count,
            added=record.added,
            removed=record.removed,
            filter_bytes=record.filter_size,
            delta_bytes=None if artifacts.delta is None else len(artifacts.delta),
        )
        return record

    # --- helpers ----------------------------------------------------------------------------

    def _pool(self) -> WorkerPool:
        return WorkerPool(self._workers)

    def _tokens(self, values: np.ndarray) -> bytes:
        """Concatenated tokens of the numbers, in order."""
        tokens = []
        for start in range(0, len(values), _HASH_ITEMS):
            digests = self._hasher.digest_packed(
                canonical_bytes(values[start : start + _HASH_ITEMS])
            )
            tokens.append(self._tokenizer.tokens(digests, DIGEST_SIZE))
        return b"".join(tokens)

    def _slice_values(
        self, pool: WorkerPool, params: published_filter.FilterParameters, keys: bytes
    ) -> np.ndarray:
        """Slice values of concatenated filter keys, in the workers when there are many."""
        size = published_filter.KEY_BYTES
        if len(keys) <= _HASH_ITEMS * size:
            return register_work.slice_values(params, keys)
        shard = -(-len(keys) // size // self._workers) * size
        shards = [keys[start : start + shard] for start in range(0, len(keys), shard)]
        parts = pool.map(register_work.slice_values, [params] * len(shards), shards)
        return np.concatenate(list(parts), axis=1)


def _entering(
    values: np.ndarray, tokens: bytes, positions: list[int], withdrawn: list[Entry]
) -> _Change:
    """The change where the numbers at `positions` of `values` (whose concatenated tokens are
    `tokens`) enter the register and the `withdrawn` entries leave it."""
    at = np.asarray(positions, dtype=np.intp)
    picked = np.frombuffer(tokens, dtype=f"V{TOKEN_SIZE}")[at].tobytes()
    return _Change(values[at], picked, withdrawn)


def _kept(entries: Iterable[Entry], withdrawn: list[Entry]) -> _Kept:
    """Concatenated tokens and filter keys of the entries not withdrawn."""
    leaving = {entry for entry, _, _ in withdrawn}
    tokens = bytearray()
    keys = bytearray()
    for entry, token, key in entries:
        if entry not in leaving:
            tokens += token
            keys += key
    return _Kept(bytes(tokens), bytes(keys))


def _in_token_order(tokens: bytes, keys: bytes) -> bytes:
    """Each token followed by its filter key, ordered by the token's first 8 bytes: B-tree
    inserts of sorted keys run about twice as fast as random ones (nearly sorted is enough)."""
    count = len(tokens) // TOKEN_SIZE
    order = np.argsort(np.frombuffer(tokens, dtype=">u8")[::2].astype(np.uint64))
    rows = np.empty((count, TOKEN_SIZE + published_filter.KEY_BYTES), dtype=np.uint8)
    for columns, packed, size in (
        (slice(0, TOKEN_SIZE), tokens, TOKEN_SIZE),
        (slice(TOKEN_SIZE, None), keys, published_filter.KEY_BYTES),
    ):
        records = np.frombuffer(packed, dtype=f"V{size}")[order]
        rows[:, columns] = records.view(np.uint8).reshape(count, size)
    return rows.tobytes()
