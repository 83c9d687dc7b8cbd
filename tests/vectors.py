"""Access to the standards' test vectors (data files, never inlined in tests).

The directory is ``$NDOP_VECTORS_DIR`` if set, else ``<repo root>/../shared/vectors``. A missing
directory is an error, not a skip: tests that need vectors must fail without them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
VECTORS_DIR = Path(os.environ.get("NDOP_VECTORS_DIR") or REPO_ROOT.parent / "shared" / "vectors")


class VectorsMissingError(FileNotFoundError):
    """The test-vector directory or file is absent."""


def load_json(relative_path: str) -> Any:
    """Load ``VECTORS_DIR / relative_path`` as JSON; raise VectorsMissingError if absent."""
    if not VECTORS_DIR.is_dir():
        raise VectorsMissingError(
            f"test-vector directory {VECTORS_DIR} not found: set NDOP_VECTORS_DIR or provide "
            "../shared/vectors next to the repository"
        )
    path = VECTORS_DIR / relative_path
    if not path.is_file():
        raise VectorsMissingError(f"test-vector file {path} not found")
    with path.open(encoding="utf-8") as f:
        return json.load(f)
