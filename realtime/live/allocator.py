"""Giving the memory an ended session freed back to the system (glibc's malloc).

Design notes: docs/design-notes.md, section realtime/live/allocator.py.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from typing import Any

M_ARENA_MAX = -8  # mallopt parameter, from glibc's malloc.h
# benchmarks/memory.py, 100 sessions on 2 cores: RSS x1.12 with glibc's 16 arenas, x1.07 with 4 (fewer arenas would
# make the threads of many sessions wait on each other's malloc locks)
ARENAS = 4


@functools.cache
def _glibc(name: str) -> Any | None:
    """glibc's function `name` (returning int), or None where the C library has none (not glibc)."""
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.c_int
    return function


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Let at most `arenas` malloc arenas be created from now on (call it before the sessions' threads start);
    True when set. A MALLOC_ARENA_MAX in the environment is the operator's choice and is left alone."""
    mallopt = _glibc("mallopt")
    if mallopt is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(mallopt(ctypes.c_int(M_ARENA_MAX), ctypes.c_int(arenas)))


def trim() -> bool:
    """Return the free pages of every malloc arena to the system; True when some were returned.

    Blocking (tens of milliseconds with hundreds of MiB free; each arena is locked while it is trimmed): call it
    from a thread, not the event loop."""
    malloc_trim = _glibc("malloc_trim")
    return bool(malloc_trim(ctypes.c_size_t(0))) if malloc_trim is not None else False
