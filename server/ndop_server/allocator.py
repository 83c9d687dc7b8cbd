"""Keep the server's resident memory proportional to the register, not to past traffic.

Each check passes megabyte-sized request and answer buffers through up to 32 threads. glibc
gives each thread its own arena and, after the first large buffer is freed, raises its mmap
threshold so later ones come from those arenas and stay resident. Fixing the threshold (big
buffers are mmapped and returned to the system when freed) and capping the arenas keeps
resident memory near the index and filter the server actually holds.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Final

_M_MMAP_THRESHOLD: Final = -3
_M_ARENA_MAX: Final = -8
MMAP_THRESHOLD_BYTES: Final = 256 * 1024
ARENAS: Final = 2


def limit_growth() -> bool:
    """Tune glibc's allocator for a long-running server; False where it does not apply."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, ARENAS) and mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
