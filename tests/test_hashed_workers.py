"""Large hashed checks are hashed by worker processes as well as the caller's own: the answers
are the same, and a worker that dies fails the check in one sentence."""

from __future__ import annotations

import os
import signal
import sys

import numpy as np
import pytest

from ndop_client import Client, Status, hashed_mode
from ndop_client import client as client_module
from ndop_core.worker_pool import WorkerFailed, WorkerPool
from ndop_server.server import RunningServer
from tests.conftest import Register


def _cohort(register: Register) -> tuple[list[str], list[Status]]:
    opted = register.opted_out[:150].tolist()
    kept = register.not_opted_out[:250].tolist()
    values = np.array(opted + kept)
    order = np.random.default_rng(5).permutation(len(values))
    rows = [f"{int(v):010d}" for v in values[order]]
    expected = [Status.OPTED_OUT if v in set(opted) else Status.CLEARED for v in values[order]]
    return rows, expected


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many small batches, and the workers used for any size of check."""
    monkeypatch.setattr(hashed_mode, "HASHED_BATCH_ITEMS", 7)
    monkeypatch.setattr(client_module, "HASH_IN_WORKERS_FROM", 1)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_workers_give_the_answers_this_process_gives(
    register: Register, server: RunningServer, address: str, small_batches: None, workers: int
) -> None:
    rows, expected = _cohort(register)
    with Client(address, insecure=True, purpose="research", workers=workers) as client:
        result = client.check(rows, mode="hashed", progress=False)
        pool = client._hashing_pool
        assert (pool is not None) == (workers > 1)
        if pool is not None:
            assert len(pool.pids) == workers - 1
    assert result.statuses == expected


def test_a_killed_hashing_worker_fails_the_check(
    register: Register, server: RunningServer, address: str, small_batches: None
) -> None:
    rows, _ = _cohort(register)
    with Client(address, insecure=True, purpose="research", workers=2) as client:
        client.check(rows[:10], mode="hashed", progress=False)
        assert client._hashing_pool is not None
        for pid in client._hashing_pool.pids:
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerFailed, match="killed by signal 9"):
            client.check(rows, mode="hashed", progress=False)


def _loaded(module: str) -> bool:
    return module in sys.modules


def test_a_pool_started_early_has_its_modules_loaded() -> None:
    pool = WorkerPool(2)
    try:
        pool.start(preload=("wave",))
        pool.start(preload=("this_module_does_not_exist",))  # already started: no effect
        assert len(pool.pids) == 2
        assert all(pool.map(_loaded, ["wave", "wave"]))
    finally:
        pool.shutdown()
