"""OpenMined PSI (`openmined.psi`) on the same register and cohort, for the side-by-side figure.

Everything runs in this one process, single-threaded as the library is. The server's setup
message (its encrypted set in a Golomb-compressed set) is built before the clock starts and is
timed separately; the figure compared with ndop private mode is

    client.CreateRequest(cohort) + server.ProcessRequest(request) + client.GetIntersection(...)
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.generate import as_strings
from benchmarks.measure import BenchmarkFailed, CpuUsage, CpuWatch

FALSE_POSITIVE_RATE = 1e-9
"""As ndop's filter. OpenMined's fpr is for a whole query of num_client_inputs items (ndop's is
per number), so PSI's setting is the stricter of the two."""


@dataclass
class PsiFigures:
    setup_seconds: float
    request_seconds: float
    process_seconds: float
    intersection_seconds: float
    intersection_size: int
    setup_bytes: int
    request_bytes: int
    response_bytes: int
    version: str

    @property
    def seconds(self) -> float:
        """The compared figure: request + process + intersection, setup not counted."""
        return self.request_seconds + self.process_seconds + self.intersection_seconds


def load_psi() -> Any | None:
    """The `private_set_intersection.python` module, or None when it cannot be imported."""
    try:
        return importlib.import_module("private_set_intersection.python")
    except Exception:
        return None


def _size(message: Any) -> int:
    try:
        return int(message.ByteSize())
    except Exception:
        return -1


def run_psi(
    psi: Any,
    register: np.ndarray,
    cohort: np.ndarray,
    members: np.ndarray,
    log: Callable[[str], None],
    server_pid: int | None = None,
    settle: Callable[[], None] = lambda: None,
) -> tuple[PsiFigures, CpuUsage]:
    """Time OpenMined PSI and check its intersection is exactly the cohort rows in `members`;
    also the CPU used while the clock ran (`server_pid`: an idle ndop server, counted as ours)."""
    register_items = as_strings(register)
    cohort_items = as_strings(cohort)
    server = psi.server.CreateWithNewKey(True)
    client = psi.client.CreateWithNewKey(True)

    log(
        f"  PSI setup: encrypting {len(register_items):,} register items into a GCS "
        "(not counted; takes minutes at 3.5M) ..."
    )
    began = time.perf_counter()
    setup = server.CreateSetupMessage(
        FALSE_POSITIVE_RATE, len(cohort_items), register_items, psi.DataStructure.GCS
    )
    setup_seconds = time.perf_counter() - began
    log(f"  PSI setup done in {setup_seconds:.1f} s; timing request + process + intersection ...")
    del register_items

    settle()
    watch = CpuWatch(server_pid)
    began = time.perf_counter()
    request = client.CreateRequest(cohort_items)
    requested = time.perf_counter()
    log(f"  PSI CreateRequest {requested - began:.1f} s")
    response = server.ProcessRequest(request)
    processed = time.perf_counter()
    log(f"  PSI ProcessRequest {processed - requested:.1f} s")
    intersection = client.GetIntersection(setup, response)
    finished = time.perf_counter()
    cpu = watch.stop()
    log(f"  PSI GetIntersection {finished - processed:.1f} s")

    found = np.sort(np.asarray(list(intersection), dtype=np.int64))
    expected = np.flatnonzero(members)
    if not np.array_equal(found, expected):
        raise BenchmarkFailed(
            f"OpenMined PSI found {len(found):,} cohort rows in the register, "
            f"expected exactly the {len(expected):,} known members"
        )
    figures = PsiFigures(
        setup_seconds=setup_seconds,
        request_seconds=requested - began,
        process_seconds=processed - requested,
        intersection_seconds=finished - processed,
        intersection_size=len(found),
        setup_bytes=_size(setup),
        request_bytes=_size(request),
        response_bytes=_size(response),
        version=str(getattr(psi, "__version__", "unknown")),
    )
    return figures, cpu
