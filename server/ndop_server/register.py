"""Publishing register versions: a full snapshot, or a change set of opt-outs set and withdrawn.

For every opted-out number y the store keeps two keyed values and nothing else:
- its token: the client's hashed-mode digest keyed with the store key (see tokens.py);
- its filter key: the first 32 bytes of the OPRF output F_k(y) (see ndop_client.bloom).
Each version publishes two artifacts built from its members: the sorted 64-bit index the
server answers hashed mode from, and the Bloom filter private-mode clients download.

Everything, including the slow OPRF evaluations, happens inside one write transaction, so a
crash at any point leaves the previous version as it was.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import numpy as np
import structlog

from ndop_client import bloom
from ndop_client.check import InvalidRow, invalid_rows
from ndop_client.cohort import CohortFile
from ndop_client.crypto import oprf
from ndop_client.hashing import CANONICAL_SIZE, DIGEST_SIZE, Hasher
from ndop_client.nhs_number import INVALID, canonical_bytes, parse_values
from ndop_server.errors import ConfigurationError
from ndop_server.keys import RegisterKeys
from ndop_server.store import Publication, Store, VersionRecord
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
        values, reasons = parse_values(chunk.texts)
        chunks.append(values[values != INVALID])
        invalid.extend(invalid_rows(reasons, chunk.line_numbers))
    every = np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)
    unique = np.unique(every)
    return NumberFile(unique, invalid, len(every) - len(unique))


def _filter_keys(oprf_key: bytes, canonical_blob: bytes) -> bytes:
    inputs = [
        canonical_blob[i : i + CANONICAL_SIZE]
        for i in range(0, len(canonical_blob), CANONICAL_SIZE)
    ]
    outputs = oprf.evaluate_input_batch(oprf_key, inputs)
    return b"".join(output[: bloom.KEY_BYTES] for output in outputs)


def _bloom_shard(capacity: int, keys_blob: bytes) -> tuple[bytes, int]:
    shard = bloom.empty(capacity)
    bloom.add_all(
        shard,
        (
            keys_blob[i : i + bloom.KEY_BYTES].hex()
            for i in range(0, len(keys_blob), bloom.KEY_BYTES)
        ),
    )
    return shard.bitarray.tobytes(), len(keys_blob) // bloom.KEY_BYTES


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
        with self._pool() as pool, self._store.publication() as publication:
            log.info("register.stage", stage="staging", version=publication.version)
            publication.stage_incoming(_token_rows(tokens))
            new_positions = publication.incoming_not_live()
            unchanged = len(numbers.values) - len(new_positions)
            removed = publication.remove_live_not_incoming()
            self._add(publication, pool, numbers.values, tokens, new_positions)
            record = self._finish(publication, pool, "snapshot", len(new_positions), removed)
        return Published(record, numbers.invalid, numbers.duplicates, unchanged)

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
        remove_tokens = self._tokens(removing.values)
        with self._pool() as pool, self._store.publication() as publication:
            log.info("register.stage", stage="staging", version=publication.version)
            publication.stage_incoming(_token_rows(remove_tokens))
            removed = publication.remove_live_incoming()
            publication.stage_incoming(_token_rows(add_tokens))
            new_positions = publication.incoming_not_live()
            self._add(publication, pool, adding.values, add_tokens, new_positions)
            record = self._finish(publication, pool, "changes", len(new_positions), removed)
        unchanged = (len(adding.values) - len(new_positions)) + (len(removing.values) - removed)
        return Published(
            record,
            adding.invalid + removing.invalid,
            adding.duplicates + removing.duplicates,
            unchanged,
        )

    def _pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._workers, mp_context=multiprocessing.get_context("spawn")
        )

    def _tokens(self, values: np.ndarray) -> list[bytes]:
        tokens: list[bytes] = []
        for start in range(0, len(values), 65536):
            digests = self._hasher.digest_packed(canonical_bytes(values[start : start + 65536]))
            packed = self._tokenizer.tokens(digests, DIGEST_SIZE)
            tokens.extend(packed[i : i + TOKEN_SIZE] for i in range(0, len(packed), TOKEN_SIZE))
        return tokens

    def _add(
        self,
        publication: Publication,
        pool: ProcessPoolExecutor,
        values: np.ndarray,
        tokens: Sequence[bytes],
        positions: Sequence[int],
    ) -> None:
        log.info("register.stage", stage="evaluating", entries=len(positions))
        chosen = values[np.asarray(positions, dtype=np.int64)]
        blobs = [
            canonical_bytes(chosen[start : start + _WORK_ITEMS])
            for start in range(0, len(chosen), _WORK_ITEMS)
        ]
        key_blobs = pool.map(_filter_keys, [self._keys.oprf_key] * len(blobs), blobs)
        filter_keys = (
            blob[i : i + bloom.KEY_BYTES]
            for blob in key_blobs
            for i in range(0, len(blob), bloom.KEY_BYTES)
        )
        publication.add(zip((tokens[p] for p in positions), filter_keys, strict=True))

    def _finish(
        self,
        publication: Publication,
        pool: ProcessPoolExecutor,
        source: str,
        added: int,
        removed: int,
    ) -> VersionRecord:
        log.info("register.stage", stage="building artifacts", version=publication.version)
        tokens = bytearray()
        keys = bytearray()
        for token, key in publication.live_entries():
            tokens += token
            keys += key
        count = len(tokens) // TOKEN_SIZE
        index = np.sort(index_keys(bytes(tokens)))
        filter_bytes = self._build_filter(pool, bytes(keys), count)
        record = VersionRecord(
            version=publication.version,
            published_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
            count=count,
            source=source,
            added=added,
            removed=removed,
            key_id=self._keys.oprf_key_id,
            filter_sha256=hashlib.sha256(filter_bytes).digest(),
            filter_size=len(filter_bytes),
        )
        publication.finish(
            record, {INDEX_ARTIFACT: index.astype("<u8").tobytes(), FILTER_ARTIFACT: filter_bytes}
        )
        log.info(
            "register.published", version=record.version, count=count, added=added, removed=removed
        )
        return record

    def _build_filter(self, pool: ProcessPoolExecutor, keys: bytes, count: int) -> bytes:
        combined = bloom.empty(count)
        entries_per_shard = -(-count // self._workers) or 1
        shard_bytes = entries_per_shard * bloom.KEY_BYTES
        shards = [keys[i : i + shard_bytes] for i in range(0, len(keys), shard_bytes)]
        for bits, shard_count in pool.map(_bloom_shard, [max(count, 1)] * len(shards), shards):
            bloom.merge(combined, bits, shard_count)
        return bloom.serialize(combined)


def _token_rows(tokens: Sequence[bytes]) -> list[tuple[bytes, int]]:
    return [(token, position) for position, token in enumerate(tokens)]
