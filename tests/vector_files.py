"""Test vectors: data files inside the repository, loaded by this one helper.

`tests/vectors/` holds the standards' vectors as published (see its README for sources) and
ndop's own vectors for the formats it publishes. A missing file is an error, not a skip.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VECTORS_DIR = Path(__file__).resolve().parent / "vectors"


class VectorsMissingError(FileNotFoundError):
    """A test-vector file is absent from the repository."""


def vector_path(relative_path: str) -> Path:
    path = VECTORS_DIR / relative_path
    if not path.is_file():
        raise VectorsMissingError(f"test-vector file {path} not found")
    return path


def load_json(relative_path: str) -> Any:
    """Load ``tests/vectors/<relative_path>`` as JSON."""
    with vector_path(relative_path).open(encoding="utf-8") as f:
        return json.load(f)
