"""Run the ndop benchmarks: `python -m benchmarks.run [--full] [--register N] [--cohort N]
[--skip-psi] [--clients K] [--out DIR]`.

This module only checks that the environment can run them (psutil present, ndop's protobuf code
loadable) before importing anything of ndop; the steps are in benchmarks/bench.py.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

PROTOBUF_HINT = (
    "openmined.psi 2.0.x pins protobuf==6.30.2, and installing it downgrades protobuf below "
    "the 7.x that ndop's generated code needs. Repair the environment with:\n"
    "  pip install 'protobuf>=7.35.1' && pip install --no-deps 'openmined.psi>=2.0.5'\n"
    "(OpenMined PSI itself runs with protobuf 7.)"
)


def preflight() -> str | None:
    """Why the benchmarks cannot run here, or None when they can."""
    try:
        importlib.import_module("psutil")
    except ImportError:
        return "psutil is not installed: pip install 'psutil>=5.9' (the `bench` extra)"
    try:
        importlib.import_module("ndop_core.proto.ndop_pb2")
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return (
            f"ndop cannot load its protobuf code ({type(exc).__name__}: {first}).\n{PROTOBUF_HINT}"
        )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    problem = preflight()
    if problem:
        print(f"benchmarks: {problem}", file=sys.stderr)
        return 2
    bench = importlib.import_module("benchmarks.bench")
    code: int = bench.main(argv)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
