"""Writing output files so that a reader never sees half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ndop_core.errors import InputError


def write_json_atomically(data: Any, path: Path, what: str) -> None:
    """Write JSON to a temporary sibling, then rename it over `path`."""
    temp = path.with_name(f".{path.name}.tmp")
    try:
        temp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise InputError(f"cannot write {what} {path}: {exc.strerror}") from exc
