"""Event counters that their owner increments and observers read, never the other way round.

The worker counts what happens between frames (drops, repeats, frames the pipeline failed on), the pipeline's
profiler what happens inside one (detections, swaps, fail-closed events). Stats and metrics code reads both through
`CounterSource.counters()`, a copy, so no reader can change a count or needs to know whose it is.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Protocol


class CounterSource(Protocol):
    def counters(self) -> dict[str, int]:
        """A copy of the counts by name, safe to read from any thread."""
        ...


class Counters:
    """Named counts, each starting at 0; `add` from any thread, `counters()` a copy."""

    def __init__(self, names: Iterable[str]) -> None:
        self._counts = dict.fromkeys(names, 0)
        self._lock = threading.Lock()

    def add(self, name: str, n: int = 1) -> None:
        if name not in self._counts:  # a typo would otherwise count silently under a name nobody reads
            raise KeyError(f"unknown counter {name!r}; known: {', '.join(self._counts)}")
        with self._lock:
            self._counts[name] += n

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def read_counters(*sources: CounterSource | None) -> dict[str, int]:
    """All sources' counts in one dict (None sources are skipped; on a shared name the later source wins)."""
    merged: dict[str, int] = {}
    for source in sources:
        if source is not None:
            merged.update(source.counters())
    return merged
