"""Clear a Spark DataFrame of opted-out patients as ONE check: `pip install 'ndop[spark]'`.

    from ndop_client.spark import clear_dataframe
    with ndop_client.Client(...) as client:
        checked = clear_dataframe(df, "nhs_number", client, manifest="run-42.manifest.json")
        checked.frame.write.parquet(...)       # the cleared rows, every column kept

How the work is split (private mode only):
- executors read the column and count every row by partition and reason, and group the valid
  numbers so that each is checked once however many rows or partitions hold it;
- the driver fetches the register's filter once (from its cache when it has it) and
  broadcasts it;
- executors blind the unique numbers, a batch of 2,048 per row of a small DataFrame;
- the driver alone talks to the server: ONE Evaluate stream, one request id, one audit trail,
  one receipt, whatever the number of partitions (so neither the per-organisation cap on
  open checks nor the daily check and filter limits are touched by a wide frame);
- executors unblind the evaluated elements and test them against the broadcast filter, in waves
  of WAVE_ITEMS while the stream goes on, so the driver holds at most a wave of elements;
- the opted-out numbers (a few per cent of the unique ones) are broadcast, and executors keep or
  label each row of the frame;
- the driver writes one manifest: the signed receipt, the totals and each input partition's
  counts, with the receipt also beside it for `ndop receipt verify`.

NHS numbers, blinds and blinded elements stay inside the Spark application; nothing of them
is logged. ndop must be installed where the executors run Python.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
from pyspark import Broadcast, StorageLevel, TaskContext
from pyspark.sql import DataFrame
from pyspark.sql.types import StringType, StructField, StructType

from ndop_client import spark_tasks
from ndop_client.check_stream import CheckStream
from ndop_client.client import Client, Connection
from ndop_client.compatibility import require_private
from ndop_client.filter_cache import CachedFilter, filter_for
from ndop_client.frames import STATUS_COLUMN, Output, require_column, require_output
from ndop_client.private_mode import evaluate_request
from ndop_client.progress import NoProgress
from ndop_client.register_info import RegisterInfo
from ndop_client.report import receipt_path_for
from ndop_core import receipts
from ndop_core.crypto import oprf
from ndop_core.errors import IntegrityError, NdopError, RequestRejected
from ndop_core.files import write_json_atomically
from ndop_core.proto import ndop_pb2

MANIFEST_FORMAT: Final = "ndop-spark-manifest/1"
PARTITION_ITEMS: Final = 100_000
"""Unique numbers per blinding task: bounded work per partition the driver waits on."""
WAVE_ITEMS: Final = 1_000_000
"""Evaluated elements the driver holds before executors unblind them."""


class SparkJobFailed(NdopError):
    """A Spark job ndop started failed; Spark's own logs say why."""


@dataclass(repr=False)
class SparkCheck:
    """The cleared (or labelled) frame, lazily computed from the answers, and the check."""

    frame: DataFrame
    manifest: dict[str, Any]
    receipt: ndop_pb2.Receipt
    request_id: str
    register_version: int
    counts: dict[str, int] = field(default_factory=dict)

    def __repr__(self) -> str:
        c = self.counts
        return (
            f"<SparkCheck private v{self.register_version}: {c['rows']:,} rows, "
            f"{c['cleared']:,} cleared, {c['opted_out']:,} opted out, {c['invalid']:,} invalid, "
            f"{c['duplicates']:,} duplicates>"
        )


def clear_dataframe(
    df: DataFrame,
    column: str,
    client: Client,
    *,
    output: Output = "cleared",
    status_column: str = STATUS_COLUMN,
    purpose: str | None = None,
    manifest: Path | str | None = None,
) -> SparkCheck:
    """Check `df[column]` in private mode as one check. output="cleared" keeps the rows whose
    number is valid and not opted out; output="status" labels every row in `status_column`.
    With `manifest`, the driver writes the manifest there and the receipt beside it."""
    require_column(df.columns, column)
    require_output(output, status_column, df.columns)
    declared = client.declared_purpose(purpose)
    connection = client.connection()
    manifest_path = Path(manifest) if manifest is not None else None
    spark = df.sparkSession
    parsed = _spark(
        lambda: (
            df.select(column)
            .mapInArrow(_parse_partition, "partition int, " + spark_tasks.PARSED_SCHEMA)
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
    )
    grouped = parsed.where("value >= 0").groupBy("value").count()
    try:
        by_partition = _spark(lambda: parsed.groupBy("partition", "note").count().collect())
        grouped = _spark(lambda: grouped.persist(StorageLevel.MEMORY_AND_DISK))
        unique = int(_spark(grouped.count))
        info = client.info()
        require_private(info)
        with connection.errors():
            cached = filter_for(
                connection.stub, connection.cache_dir, info, connection.metadata, connection.stall
            )
        context = ndop_pb2.CheckContext(
            purpose=declared,
            request_id=str(uuid.uuid4()),
            expected_items=unique,
            register_version=cached.register_version,
        )
        sc = spark.sparkContext
        filter_broadcast = sc.broadcast(cached.path.read_bytes())
        blinded = grouped.repartition(max(1, math.ceil(unique / PARTITION_ITEMS))).mapInArrow(
            spark_tasks.blind, spark_tasks.BLINDED_SCHEMA
        )
        answer = _Evaluation(connection, info, cached, context, sc, filter_broadcast).run(
            blinded, unique
        )
    finally:
        grouped.unpersist()
        parsed.unpersist()
    counts = _counts(by_partition, unique, answer)
    opted_broadcast = sc.broadcast(np.sort(answer.opted_out))
    index = df.columns.index(column)
    if output == "status":
        schema = StructType([*df.schema.fields, StructField(status_column, StringType(), False)])
        frame = df.mapInArrow(partial(_label, opted_broadcast, index, status_column), schema)
    else:
        frame = df.mapInArrow(partial(_label, opted_broadcast, index, None), df.schema)
    document = _manifest(declared, info, cached, answer, counts, by_partition, sc.applicationId)
    if manifest_path is not None:
        _write_manifest(document, answer.summary.receipt, manifest_path)
    return SparkCheck(
        frame,
        document,
        answer.summary.receipt,
        context.request_id,
        cached.register_version,
        counts,
    )


def _spark(action: Any) -> Any:
    """Run a Spark action; a failed job is one sentence, not a JVM stack trace."""
    try:
        return action()
    except NdopError:
        raise
    except Exception as exc:
        raise SparkJobFailed(
            f"a Spark job of the check failed ({type(exc).__name__}); Spark's logs say why"
        ) from None


def _parse_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    context = TaskContext.get()
    partition = context.partitionId() if context is not None else 0
    for parsed in spark_tasks.parse(batches):
        ids = pa.array(np.full(parsed.num_rows, partition, dtype=np.int32))
        yield pa.RecordBatch.from_arrays([ids, *parsed.columns], ["partition", "value", "note"])


def _label(
    opted_out: Broadcast[np.ndarray],
    index: int,
    status_column: str | None,
    batches: Iterator[pa.RecordBatch],
) -> Iterator[pa.RecordBatch]:
    return spark_tasks.keep_or_label(batches, index, opted_out.value, status_column)


def _unblind_partition(
    filter_bytes: Broadcast[bytes], rows: Iterator[tuple[bytes, bytes, bytes, bytes]]
) -> Iterator[tuple[bytes, bytes]]:
    return spark_tasks.unblind(rows, filter_bytes.value)


@dataclass
class _Answer:
    opted_out: np.ndarray
    opted_out_rows: int
    summary: ndop_pb2.CheckSummary


class _Evaluation:
    """The one Evaluate stream of a Spark check, fed by the blinding job partition by
    partition, answered into waves that executors unblind while the stream goes on."""

    def __init__(
        self,
        connection: Connection,
        info: RegisterInfo,
        cached: CachedFilter,
        context: ndop_pb2.CheckContext,
        sc: Any,
        filter_broadcast: Broadcast[bytes],
    ) -> None:
        self._connection = connection
        self._info = info
        self._cached = cached
        self._context = context
        self._sc = sc
        self._filter = filter_broadcast
        self._sent: dict[int, tuple[bytes, bytes, bytes]] = {}
        self._waves: list[Future[list[tuple[bytes, bytes]]]] = []
        self._limit = min(spark_tasks.BATCH_ITEMS, info.max_batch_items or spark_tasks.BATCH_ITEMS)

    def run(self, blinded: DataFrame, unique: int) -> _Answer:
        connection, context = self._connection, self._context
        stream = CheckStream(
            "private", self._info.register_id, context, unique, None, connection.stall, NoProgress()
        )
        requests = stream.requests(
            ndop_pb2.EvaluateRequest(context=context), self._blinded(blinded), evaluate_request
        )
        wave: list[tuple[bytes, bytes, bytes, bytes]] = []
        wave_items = 0
        with ThreadPoolExecutor(1, thread_name_prefix="ndop-wave") as unblinding:
            with (
                connection.errors(),
                stream.answers(connection.stub.Evaluate, requests, connection.metadata) as batches,
            ):
                for batch in batches:
                    wave.append(self._answered(batch))
                    wave_items += batch.count
                    if wave_items >= WAVE_ITEMS:
                        self._waves.append(unblinding.submit(self._unblind, wave))
                        wave, wave_items = [], 0
            if wave:
                self._waves.append(unblinding.submit(self._unblind, wave))
            found = [pair for future in self._waves for pair in future.result()]
        summary = stream.summary(
            self._cached.register_version, "the server did not answer every batch of the check"
        )
        values = [np.frombuffer(v, dtype="<i8") for v, _ in found]
        counts = [np.frombuffer(c, dtype="<i8") for _, c in found]
        opted = np.concatenate(values) if values else np.empty(0, dtype=np.int64)
        rows = int(np.concatenate(counts).sum()) if counts else 0
        return _Answer(opted.astype(np.int64), rows, summary)

    def _blinded(self, blinded: DataFrame) -> Iterator[tuple[int, bytes]]:
        """(batch id, blinded elements) of each batch as Spark blinds the partitions, what
        unblinds the answer kept; a failed Spark job is SparkJobFailed."""
        try:
            rows = _spark(lambda: blinded.toLocalIterator(prefetchPartitions=True))
            batches = (batch for row in rows for batch in self._split(row))
            for batch_id, (values, counts, blinds, elements) in enumerate(batches):
                self._sent[batch_id] = (values, counts, blinds)
                yield batch_id, elements
        except NdopError:
            raise
        except Exception as exc:
            raise SparkJobFailed(
                f"the Spark job blinding the numbers failed ({type(exc).__name__}); "
                "Spark's logs say why"
            ) from exc

    def _split(self, row: Any) -> Iterator[tuple[bytes, bytes, bytes, bytes]]:
        """A blinded row as batches the server accepts (it may take fewer than 2,048)."""
        values, counts, blinds, elements = (
            row["values"],
            row["counts"],
            row["blinds"],
            row["blinded"],
        )
        items = len(values) // 8
        for start in range(0, items, self._limit):
            end = min(start + self._limit, items)
            yield (
                bytes(values[start * 8 : end * 8]),
                bytes(counts[start * 8 : end * 8]),
                bytes(blinds[start * oprf.SCALAR_SIZE : end * oprf.SCALAR_SIZE]),
                bytes(elements[start * oprf.ELEMENT_SIZE : end * oprf.ELEMENT_SIZE]),
            )

    def _answered(self, batch: ndop_pb2.EvaluatedBatch) -> tuple[bytes, bytes, bytes, bytes]:
        if batch.register_version != self._cached.register_version:
            raise IntegrityError(
                "the server answered from another register version than the filter's; "
                "the check was discarded"
            )
        if batch.key_id != self._cached.key_id:
            raise IntegrityError("the server's OPRF key changed during the check; run it again")
        sent = self._sent.pop(batch.batch_id, None)
        if sent is None:
            raise RequestRejected("the server answered a batch that was never sent")
        values, counts, blinds = sent
        items = len(values) // 8
        if batch.count != items or len(batch.evaluated_elements) != items * oprf.ELEMENT_SIZE:
            raise RequestRejected("the server answered a batch with the wrong number of items")
        return values, counts, blinds, batch.evaluated_elements

    def _unblind(self, wave: list[tuple[bytes, bytes, bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        slices = max(1, min(len(wave), self._sc.defaultParallelism * 2))
        rdd = self._sc.parallelize(wave, slices)
        found: list[tuple[bytes, bytes]] = _spark(
            lambda: rdd.mapPartitions(partial(_unblind_partition, self._filter)).collect()
        )
        return found


def _counts(by_partition: list[Any], unique: int, answer: _Answer) -> dict[str, int]:
    notes: Counter[int] = Counter()
    for row in by_partition:
        notes[int(row["note"])] += int(row["count"])
    valid = notes[spark_tasks.VALID] + notes[spark_tasks.FLOAT_EXPORT]
    rows = sum(notes.values())
    return {
        "rows": rows,
        "valid": valid,
        "invalid": rows - valid,
        "float_exports": notes[spark_tasks.FLOAT_EXPORT],
        "duplicates": valid - unique,
        "unique_checked": unique,
        "opted_out": answer.opted_out_rows,
        "opted_out_unique": len(answer.opted_out),
        "cleared": valid - answer.opted_out_rows,
    }


def _manifest(
    purpose: str,
    info: RegisterInfo,
    cached: CachedFilter,
    answer: _Answer,
    counts: dict[str, int],
    by_partition: list[Any],
    application_id: str,
) -> dict[str, Any]:
    partitions: dict[int, Counter[str]] = {}
    reasons: Counter[str] = Counter()
    for row in by_partition:
        note, count = int(row["note"]), int(row["count"])
        tally = partitions.setdefault(int(row["partition"]), Counter())
        tally["rows"] += count
        if note in (spark_tasks.VALID, spark_tasks.FLOAT_EXPORT):
            tally["valid"] += count
            tally["float_exports"] += count if note == spark_tasks.FLOAT_EXPORT else 0
        else:
            tally["invalid"] += count
            reasons[str(spark_tasks.REASONS[note - 2])] += count
    return {
        "format": MANIFEST_FORMAT,
        "request_id": answer.summary.request_id,
        "mode": "private",
        "purpose": purpose,
        "register": {
            "id": info.register_id,
            "version": cached.register_version,
            "count": cached.count,
        },
        **counts,
        "invalid_reasons": dict(reasons),
        "cohort_opt_out_rate": round(counts["opted_out_unique"] / counts["unique_checked"], 6)
        if counts["unique_checked"]
        else 0.0,
        "spark": {"application_id": application_id, "input_partitions": len(partitions)},
        "partitions": [
            {"partition": p, **{k: t[k] for k in ("rows", "valid", "invalid", "float_exports")}}
            for p, t in sorted(partitions.items())
        ],
        "receipt": receipts.to_json(answer.summary.receipt),
    }


def _write_manifest(document: dict[str, Any], receipt: ndop_pb2.Receipt, path: Path) -> None:
    write_json_atomically(document, path, "manifest")
    receipts.write(receipt, receipt_path_for(path))
