"""Publishing register versions: a full snapshot, or a change set of opt-outs set and withdrawn.

For every opted-out number y the store keeps two keyed values and nothing else:
- its token: the client's hashed-mode digest keyed with the store key (see tokens.py);
- its filter key: the first 32 bytes of the OPRF output F_k(y) (see ndop_core.filter).
Each version publishes two artifacts built from its members: the sorted 64-bit index the
server answers hashed mode from, and the Bloom filter private-mode clients download.

The slow work (OPRF evaluations, the filter) is prepared from a read snapshot; the new version
is then written in one short transaction, so a crash at any point leaves the previous version
as it was, and a version published meanwhile by someone else makes this one refuse, not merge.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import numpy as np
import structlog

from ndop_core import filter as published_filter
from ndop_core.cohort_files import CohortFile, InvalidRow, parse_chunk
from ndop_core.crypto import oprf
from ndop_core.hashing import CANONICAL_SIZE, DIGEST_SIZE, Hasher
from ndop_core.nhs_number import INVALID, canonical_bytes, distinct
from ndop_core.packing import split
from ndop_core.worker_pool import WorkerPool
from ndop_server import filter_builder
from ndop_server.errors import ConfigurationError
from ndop_server.keys import RegisterKeys
from ndop_server.store import Store, VersionRecord
from ndop_server.tokens import TOKEN_SIZE, Tokenizer, index_keys

INDEX_ARTIFACT: Final = "index"
FILTER_ARTIFACT: Final = "filter"
_WORK_ITEMS: Final = 4096

log = structlog.get_logger("ndop.register")


@dataclass
class NumberFile:
    """The unique valid numbers of an input file, and the rows that were not valid."""

    values: np.ndarray
    invalid: list[InvalidRow] = field(default_factory=list)
    duplicates: int = 0


@dataclass
class Published:
    record: VersionRecord
    invalid: list[InvalidRow]
    duplicates: int
    unchanged: int


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


def _evaluate_filter_keys(oprf_key: bytes, canonical_blob: bytes) -> bytes:
    outputs = oprf.evaluate_input_batch(oprf_key, split(canonical_blob, CANONICAL_SIZE))
    return b"".join(output[: published_filter.KEY_BYTES] for output in outputs)


def _bloom_shard(capacity: int, keys_blob: bytes) -> tuple[bytes, int]:
    shard = filter_builder.empty(capacity)
    filter_builder.add_all(
        shard, (key.hex() for key in split(keys_blob, published_filter.KEY_BYTES))
    )
    return shard.bitarray.tobytes(), len(keys_blob) // published_filter.KEY_BYTES


class Publisher:
    """Builds and publishes register versions, using `workers` processes for the heavy parts."""

    def __init__(self, store: Store, keys: RegisterKeys, workers: int | None = None) -> None:
        store.bind(keys.register_id)
        self._store = store
        self._keys = keys
        self._workers = workers or os.cpu_count() or 1
        self._hasher = Hasher(keys.salt)
        self._tokenizer = Tokenizer(keys.store_key)

    def load_snapshot(self, path: Path) -> Published:
        numbers = read_numbers(path)
        tokens = self._tokens(numbers.values)
        with self._store.preparation() as preparation:
            preparation.stage(tokens)
            new_positions = preparation.staged_not_live()
            withdrawn = preparation.live_not_staged()
            kept = _entries_except(preparation.live_entries(), withdrawn)
            base = preparation.base_version
        change = self._prepare(base, numbers.values, tokens, new_positions, withdrawn, kept)
        record = self._publish(change, "snapshot")
        unchanged = len(numbers.values) - len(new_positions)
        return Published(record, numbers.invalid, numbers.duplicates, unchanged)

    def rekey(self, path: Path) -> Published:
        """A new version holding exactly the snapshot's numbers, every entry made again with
        this publisher's keys (after `ndop keys rotate --register`). The store holds no
        numbers, so it cannot re-key its entries itself: the current snapshot is needed."""
        numbers = read_numbers(path)
        tokens = self._tokens(numbers.values)
        with self._store.preparation() as preparation:
            withdrawn = {entry for entry, _, _ in preparation.live_entries()}
            base = preparation.base_version
        everything = list(range(len(tokens)))
        change = self._prepare(
            base, numbers.values, tokens, everything, withdrawn, (bytearray(), bytearray())
        )
        record = self._publish(change, "rekey")
        return Published(record, numbers.invalid, numbers.duplicates, 0)

    def apply_changes(self, add: Path | None, remove: Path | None) -> Published:
        if add is None and remove is None:
            raise ConfigurationError("give --add FILE, --remove FILE, or both")
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
            preparation.stage(self._tokens(removing.values))
            withdrawn = preparation.live_staged()
            preparation.stage(add_tokens)
            new_positions = preparation.staged_not_live()
            kept = _entries_except(preparation.live_entries(), withdrawn)
            base = preparation.base_version
        change = self._prepare(base, adding.values, add_tokens, new_positions, withdrawn, kept)
        record = self._publish(change, "changes")
        unchanged = (len(adding.values) - len(new_positions)) + (
            len(removing.values) - len(withdrawn)
        )
        return Published(
            record,
            adding.invalid + removing.invalid,
            adding.duplicates + removing.duplicates,
            unchanged,
        )

    def _prepare(
        self,
        base_version: int,
        values: np.ndarray,
        tokens: Sequence[bytes],
        new_positions: Sequence[int],
        withdrawn: set[int],
        kept: tuple[bytearray, bytearray],
    ) -> _Change:
        """Everything slow, done before taking the write lock."""
        with self._pool() as pool:
            new_keys = self._filter_keys(pool, values[np.asarray(new_positions, dtype=np.int64)])
            kept_tokens, kept_keys = kept
            all_tokens = bytes(kept_tokens) + b"".join(tokens[p] for p in new_positions)
            all_keys = bytes(kept_keys) + new_keys
            count = len(all_tokens) // TOKEN_SIZE
            log.info("register.stage", stage="building artifacts", entries=count)
            index = np.sort(index_keys(all_tokens)).astype("<u8").tobytes()
            filter_bytes = self._build_filter(pool, all_keys, count)
        added = sorted(
            zip(
                (tokens[p] for p in new_positions),
                split(new_keys, published_filter.KEY_BYTES),
                strict=True,
            )
        )
        return _Change(base_version, added, withdrawn, count, index, filter_bytes)

    def _publish(self, change: _Change, source: str) -> VersionRecord:
        with self._store.publication(change.base_version) as publication:
            record = VersionRecord(
                version=publication.version,
                published_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
                count=change.count,
                source=source,
                added=len(change.added),
                removed=len(change.withdrawn),
                key_id=self._keys.oprf_key_id,
                filter_sha256=hashlib.sha256(change.filter_bytes).digest(),
                filter_size=len(change.filter_bytes),
            )
            publication.remove(change.withdrawn)
            publication.add(change.added)
            publication.finish(
                record, {INDEX_ARTIFACT: change.index, FILTER_ARTIFACT: change.filter_bytes}
            )
        log.info(
            "register.published",
            version=record.version,
            count=record.count,
            added=record.added,
            removed=record.removed,
        )
        return record

    def _pool(self) -> WorkerPool:
        return WorkerPool(self._workers)

    def _tokens(self, values: np.ndarray) -> list[bytes]:
        tokens: list[bytes] = []
        for start in range(0, len(values), 65536):
            digests = self._hasher.digest_packed(canonical_bytes(values[start : start + 65536]))
            packed = self._tokenizer.tokens(digests, DIGEST_SIZE)
            tokens.extend(split(packed, TOKEN_SIZE))
        return tokens

    def _filter_keys(self, pool: WorkerPool, values: np.ndarray) -> bytes:
        log.info("register.stage", stage="evaluating", entries=len(values))
        blobs = [
            canonical_bytes(values[start : start + _WORK_ITEMS])
            for start in range(0, len(values), _WORK_ITEMS)
        ]
        return b"".join(pool.map(_evaluate_filter_keys, [self._keys.oprf_key] * len(blobs), blobs))

    def _build_filter(self, pool: WorkerPool, keys: bytes, count: int) -> bytes:
        combined = filter_builder.empty(count)
        entries_per_shard = -(-count // self._workers) or 1
        shard_bytes = entries_per_shard * published_filter.KEY_BYTES
        shards = [keys[i : i + shard_bytes] for i in range(0, len(keys), shard_bytes)]
        for bits, shard_count in pool.map(_bloom_shard, [max(count, 1)] * len(shards), shards):
            filter_builder.merge(combined, bits, shard_count)
        return filter_builder.serialize(combined)


@dataclass
class _Change:
    base_version: int
    added: list[tuple[bytes, bytes]]
    withdrawn: set[int]
    count: int
    index: bytes
    filter_bytes: bytes


def _entries_except(
    entries: Iterable[tuple[int, bytes, bytes]], withdrawn: set[int]
) -> tuple[bytearray, bytearray]:
    """Concatenated tokens and filter keys of the entries not withdrawn."""
    tokens = bytearray()
    keys = bytearray()
    for rowid, token, key in entries:
        if rowid not in withdrawn:
            tokens += token
            keys += key
    return tokens, keys
