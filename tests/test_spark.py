"""ndop_client.spark on PySpark in local mode: a 100,000-row frame over 16 partitions is cleared
as ONE check (one request id in the audit, one filter download, one receipt) with the same
answers as `ndop check` on the same cohort, duplicates counted across partitions, and a
manifest whose receipt verifies.

Only synthetic 999-range numbers are used. One SparkSession for the module, local[2].
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pyspark = pytest.importorskip("pyspark")

from pyspark.sql import SparkSession  # noqa: E402

from ndop_client import Client, UsageError  # noqa: E402
from ndop_client.spark import SparkCheck, clear_dataframe  # noqa: E402
from ndop_core.nhs_number import InvalidReason  # noqa: E402
from ndop_server.accounts import Accounts, Limits  # noqa: E402
from ndop_server.server import RunningServer, start_server  # noqa: E402
from tests.conftest import GENEROUS, Register, make_register  # noqa: E402

NDOP = [sys.executable, "-m", "ndop_client"]
ROWS = 100_000
PARTITIONS = 16
ONE_CHECK = Limits(
    daily_quota=50_000_000, rate_per_second=0, daily_checks=1, daily_filter_downloads=1
)
"""An organisation that may run one check and download one filter a day."""


@dataclass
class World:
    root: Path
    register: Register
    server: RunningServer
    address: str
    tokens: dict[str, str]
    cohort_rows: list[tuple[int, str | None]]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("spark")
    register = make_register(root, total=110_000, opted_out=15_000, seed=21)
    with Accounts(register.store_path) as accounts:
        tokens = {
            "cli-org": accounts.add("cli-org", GENEROUS),
            "spark-org": accounts.add("spark-org", ONE_CHECK),
            "other-org": accounts.add("other-org", GENEROUS),
        }
    server = start_server(
        register.store_path, register.keys, "127.0.0.1:0", tls=None, insecure=True
    )
    try:
        yield World(root, register, server, f"127.0.0.1:{server.port}", tokens, _cohort(register))
    finally:
        server.stop(grace=1)


def _cohort(register: Register) -> list[tuple[int, str | None]]:
    """100,000 rows: 85,000 distinct numbers (10,000 opted out), 12,000 repeats, 1,000 decimal
    exports of numbers also present, 2,000 invalid or empty rows; shuffled."""
    rng = np.random.default_rng(3)
    unique = [*register.opted_out[:10_000].tolist(), *register.not_opted_out[:75_000].tolist()]
    texts: list[str | None] = [f"{v:010d}" for v in unique]
    texts += [f"{v:010d}" for v in rng.choice(unique, 12_000).tolist()]
    texts += [f"{v:010d}.0" for v in rng.choice(unique, 1_000).tolist()]
    texts += ["not a number"] * 700 + ["12345"] * 600 + [None] * 700
    order = rng.permutation(len(texts))
    return [(i, texts[j]) for i, j in enumerate(order.tolist())]


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = (
        SparkSession.builder.master("local[2]")
        .appName("ndop-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "8")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()


@pytest.fixture(scope="module")
def cli_report(world: World) -> tuple[dict[str, Any], list[int]]:
    """`ndop check` on the same cohort as a CSV: its report and the ids it kept."""
    cohort = world.root / "cohort.csv"
    with open(cohort, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "nhs_number"])
        writer.writerows((i, "" if text is None else text) for i, text in world.cohort_rows)
    env = {
        **os.environ,
        "NDOP_TOKEN": world.tokens["cli-org"],
        "XDG_CACHE_HOME": str(world.root / "cli-cache"),
    }
    command: list[str | Path] = [*NDOP, "check", cohort, "--server", world.address]
    command += ["--insecure", "--purpose", "research", "--out", world.root / "cleared.csv"]
    done = subprocess.run(
        [*command, "--report", world.root / "report.json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    with open(world.root / "cleared.csv", newline="") as handle:
        kept = [int(row["id"]) for row in csv.DictReader(handle)]
    return json.loads((world.root / "report.json").read_text()), kept


@pytest.fixture(scope="module")
def spark_check(world: World, spark: SparkSession) -> SparkCheck:
    frame = spark.createDataFrame(world.cohort_rows, "id long, nhs string").repartition(PARTITIONS)
    with Client(
        world.address,
        insecure=True,
        token=world.tokens["spark-org"],
        purpose="research",
        cache_dir=world.root / "spark-cache",
    ) as client:
        return clear_dataframe(frame, "nhs", client, manifest=world.root / "run.manifest.json")


def test_the_same_answers_as_ndop_check(
    spark_check: SparkCheck, cli_report: tuple[dict[str, Any], list[int]]
) -> None:
    report, kept = cli_report
    assert report["rows"] == ROWS
    spark_kept = sorted(row["id"] for row in spark_check.frame.select("id").collect())
    assert spark_kept == sorted(kept)
    counts = spark_check.counts
    for key in ("rows", "valid", "duplicates", "unique_checked", "opted_out", "cleared"):
        assert counts[key] == report[key], key
    assert counts["invalid"] == report["invalid"]["count"] == 1_300 + 700
    assert counts["float_exports"] == report["float_exports"] == 1_000
    assert counts["opted_out_unique"] == report["opted_out_unique"] == 10_000
    assert counts["duplicates"] == 13_000
    by_reason = dict(report["invalid"]["by_reason"])
    by_reason[str(InvalidReason.MISSING)] = by_reason.pop(str(InvalidReason.EMPTY))
    assert spark_check.manifest["invalid_reasons"] == by_reason  # None, not an empty field


def test_every_partition_is_one_check_in_the_audit(world: World, spark_check: SparkCheck) -> None:
    with Accounts(world.register.store_path) as accounts:
        rows = accounts.audit("spark-org")
    checks = {row.request_id for row in rows if row.outcome != "filter-download"}
    assert checks == {spark_check.request_id}
    assert [row.outcome for row in rows].count("completed") == 1
    assert [row.outcome for row in rows].count("filter-download") == 1
    answered = sum(row.items_checked for row in rows if row.outcome == "answered")
    assert answered == spark_check.counts["unique_checked"]


def test_the_manifest_lists_every_partition_and_its_receipt_verifies(
    world: World, spark_check: SparkCheck
) -> None:
    manifest = json.loads((world.root / "run.manifest.json").read_text())
    assert manifest["format"] == "ndop-spark-manifest/1"
    assert manifest["request_id"] == spark_check.request_id
    assert manifest["receipt"]["statement"]["request_id"] == spark_check.request_id
    assert manifest["receipt"]["statement"]["items_checked"] == manifest["unique_checked"]
    assert len(manifest["partitions"]) == PARTITIONS
    assert sum(p["rows"] for p in manifest["partitions"]) == ROWS
    public = subprocess.run(
        [*NDOP, "keys", "public", "--keys", world.register.keys_path],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    receipt = world.root / "run.manifest.receipt.json"
    verified = subprocess.run(
        [*NDOP, "receipt", "verify", receipt, "--public-key", public],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    text = json.dumps(manifest) + repr(spark_check)
    for _, number in world.cohort_rows[:200]:
        assert number is None or number not in text


def test_status_output_labels_every_row(world: World, spark: SparkSession) -> None:
    opted = [f"{v:010d}" for v in world.register.opted_out[:3].tolist()]
    kept = [f"{v:010d}" for v in world.register.not_opted_out[:4].tolist()]
    rows = [(i, n) for i, n in enumerate([*opted, *kept, None, "x", opted[0]])]
    frame = spark.createDataFrame(rows, "id long, nhs string").repartition(3)
    with Client(
        world.address,
        insecure=True,
        token=world.tokens["other-org"],
        purpose="research",
        cache_dir=world.root / "other-cache",
    ) as client:
        labelled = clear_dataframe(frame, "nhs", client, output="status")
        with pytest.raises(UsageError, match="its columns are 'id', 'nhs'"):
            clear_dataframe(frame, "nhs_number", client)
    statuses = {row["id"]: row["ndop_status"] for row in labelled.frame.collect()}
    assert statuses == {
        **dict.fromkeys(range(3), "opted_out"),
        **dict.fromkeys(range(3, 7), "cleared"),
        7: "invalid",
        8: "invalid",
        9: "opted_out",
    }
    assert labelled.counts["duplicates"] == 1


def test_the_sdk_runs_inside_a_spark_executor(world: World, spark: SparkSession) -> None:
    """A Client made in an executor (a process Spark's daemon forked, no __main__ guard in
    sight) checks in private mode with its own worker process."""
    address, token = world.address, world.tokens["other-org"]
    cache = str(world.root / "executor-cache")
    opted = [f"{v:010d}" for v in world.register.opted_out[100:103].tolist()]
    kept = [f"{v:010d}" for v in world.register.not_opted_out[100:104].tolist()]

    def check_partition(rows: Iterable[str]) -> Iterator[tuple[int, int]]:
        import ndop_client

        with ndop_client.Client(
            address, insecure=True, token=token, purpose="research", cache_dir=cache, workers=1
        ) as client:
            result = client.check(list(rows), mode="private", progress=False)
        yield result.tally.opted_out_rows, result.tally.cleared

    answers = spark.sparkContext.parallelize([*opted, *kept], 1).mapPartitions(check_partition)
    assert answers.collect() == [(3, 4)]
