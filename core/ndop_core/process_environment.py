"""Settings for processes that are ndop's own: the `ndop` command and its worker processes.

NumPy's BLAS (OpenBLAS) starts a thread per core as NumPy loads, and those threads spin for a
while before they sleep: about 60 ms of CPU per process on this project's 2-core reference
machine, taken from the cores a check is using. ndop never multiplies matrices, so its own
processes ask for one BLAS thread, unless the environment already says otherwise. A library
must not decide this for the program that imports it, so the SDK leaves it alone.
"""

from __future__ import annotations

import os
from typing import Final

ONE_BLAS_THREAD: Final = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def use_one_blas_thread() -> None:
    """Before NumPy loads: one BLAS thread for this process and its children."""
    for name, value in ONE_BLAS_THREAD.items():
        os.environ.setdefault(name, value)
