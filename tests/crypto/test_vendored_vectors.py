"""The vendored standards' vectors are the published ones: an optional cross-check against the
shared copy named by NDOP_SHARED_VECTORS (skipped when it is not set, as on a fresh clone)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.vector_files import VECTORS_DIR

STANDARDS = ("oprf", "hash-to-curve")


def _vendored() -> list[Path]:
    return sorted(p for d in STANDARDS for p in (VECTORS_DIR / d).glob("*.json"))


def test_every_standard_vector_file_is_vendored() -> None:
    names = {p.relative_to(VECTORS_DIR).as_posix() for p in _vendored()}
    assert "oprf/ristretto255-SHA512.json" in names
    assert "hash-to-curve/expand_message_xmd_SHA512_38.json" in names


@pytest.mark.skipif(not os.environ.get("NDOP_SHARED_VECTORS"), reason="NDOP_SHARED_VECTORS unset")
def test_vendored_vectors_equal_the_shared_copy() -> None:
    shared = Path(os.environ["NDOP_SHARED_VECTORS"])
    for path in _vendored():
        relative = path.relative_to(VECTORS_DIR)
        assert path.read_bytes() == (shared / relative).read_bytes(), relative
