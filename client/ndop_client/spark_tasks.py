"""The work a Spark executor does for ndop_client.spark, on Arrow record batches: read the
NHS number column, blind unique numbers, unblind and test evaluated elements against the
broadcast filter, and keep or label each row. Only NumPy, PyArrow and ndop run here; the
executors never talk to the ndop server.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Final

import numpy as np
import pyarrow as pa

from ndop_client import private_workers
from ndop_client.check import numbers_of
from ndop_client.column_values import texts_of
from ndop_client.frames import status_names_of
from ndop_core import filter as published_filter
from ndop_core.nhs_number import INVALID, InvalidReason, canonical_bytes

BATCH_ITEMS: Final = 2048
"""Unique numbers per blinded batch: one Evaluate message each."""
VALID, FLOAT_EXPORT = 0, 1
REASONS: Final = tuple(InvalidReason)
"""An invalid row's note is 2 + the index of its reason here."""
PARSED_SCHEMA: Final = "value long, note byte"
BLINDED_SCHEMA: Final = "values binary, counts binary, blinds binary, blinded binary"

_filters: dict[bytes, published_filter.BloomFilter] = {}


def _column(batch: pa.RecordBatch, index: int) -> list[object] | np.ndarray:
    column = batch.column(index)
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        if column.null_count == 0:
            array: np.ndarray = column.to_numpy(zero_copy_only=False)
            return array
        listed: list[object] = column.to_pylist()
        return listed
    return [str(v) if isinstance(v, bytes | bytearray) else v for v in column.to_pylist()]


def notes_of(batch: pa.RecordBatch, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(value, note) of each row of `batch`'s column `index`."""
    numbers = numbers_of(texts_of(_column(batch, index)))
    notes = np.where(numbers.from_float, FLOAT_EXPORT, VALID).astype(np.int8)
    for position, reason in numbers.reasons.items():
        notes[position] = 2 + REASONS.index(reason)
    return numbers.values, notes


def parse(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Rows of one column in, (value, note) out: value -1 where the row has no valid number."""
    for batch in batches:
        values, notes = notes_of(batch, 0)
        yield pa.RecordBatch.from_arrays(
            [pa.array(values, pa.int64()), pa.array(notes, pa.int8())], ["value", "note"]
        )


def blind(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """(value, count) rows of unique numbers in; one row per batch of BATCH_ITEMS out, with
    the numbers, their row counts, the blinds (which stay in the cluster) and the blinded
    elements (which go to the server)."""
    for batch in batches:
        values = batch.column(0).to_numpy(zero_copy_only=False).astype("<i8")
        counts = batch.column(1).to_numpy(zero_copy_only=False).astype("<i8")
        rows: dict[str, list[bytes]] = {"values": [], "counts": [], "blinds": [], "blinded": []}
        for start in range(0, len(values), BATCH_ITEMS):
            chunk = values[start : start + BATCH_ITEMS]
            blinds, blinded = private_workers.blind(canonical_bytes(chunk))
            rows["values"].append(chunk.tobytes())
            rows["counts"].append(counts[start : start + BATCH_ITEMS].tobytes())
            rows["blinds"].append(blinds)
            rows["blinded"].append(blinded)
        if rows["values"]:
            yield pa.RecordBatch.from_pydict(rows)


def unblind(
    rows: Iterator[tuple[bytes, bytes, bytes, bytes]], filter_bytes: bytes
) -> Iterator[tuple[bytes, bytes]]:
    """(values, counts, blinds, evaluated) in; the opted-out values and their row counts out."""
    bloom = _bloom(filter_bytes)
    for values_blob, counts_blob, blinds, evaluated in rows:
        values = np.frombuffer(values_blob, dtype="<i8")
        counts = np.frombuffer(counts_blob, dtype="<i8")
        flags = np.frombuffer(
            private_workers.test_outputs(bloom, canonical_bytes(values), blinds, evaluated),
            dtype=np.uint8,
        ).astype(bool)
        yield values[flags].tobytes(), counts[flags].tobytes()


def _bloom(filter_bytes: bytes) -> published_filter.BloomFilter:
    key = hashlib.sha256(filter_bytes).digest()
    if key not in _filters:
        _filters.clear()
        _filters[key] = published_filter.BloomFilter(filter_bytes)
    return _filters[key]


def keep_or_label(
    batches: Iterator[pa.RecordBatch],
    index: int,
    opted_out: np.ndarray,
    status_column: str | None,
) -> Iterator[pa.RecordBatch]:
    """The cleared rows of each batch, or (with `status_column`) every row labelled."""
    for batch in batches:
        values, _ = notes_of(batch, index)
        valid = values != INVALID
        out = np.zeros(len(values), dtype=bool)
        out[valid] = np.isin(values[valid], opted_out, assume_unique=False)
        if status_column is None:
            yield batch.filter(pa.array(valid & ~out))
        else:
            codes = np.where(valid, out.astype(np.uint8), 2).astype(np.uint8)
            yield batch.append_column(status_column, pa.array(status_names_of(codes).tolist()))
