"""The session limit and how it was found (`Capacity`), as the session manager holds it and /api/info shows it;
`realtime.live.capacity` measures one."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Capacity:
    """The session limit and how it was found; `to_json` is what /api/info shows."""

    max_sessions: int
    reason: str  # one line for the log and the page
    source: str  # "measured", "--max-sessions", or "not measured"
    target_fps: float = 30.0
    cores: int = 0
    cpu_ms_per_frame: float | None = None  # median over the runs, every thread of the process
    wall_ms_per_frame: float | None = None
    memory_mib: float = 0.0  # device memory a session takes (CUDA)
    runs_cpu_ms: list[float] = field(default_factory=list)
    probe: dict[str, Any] = field(default_factory=dict)  # what one probe frame carried

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def cpu_cores() -> int:
    """The cores this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def not_measured(why: str, target_fps: float = 30.0) -> Capacity:
    return Capacity(1, f"capacity not measured: {why}", "not measured", target_fps, cpu_cores())


def given(max_sessions: int, target_fps: float = 30.0) -> Capacity:
    return Capacity(max_sessions, f"{max_sessions} session(s), as --max-sessions says", "--max-sessions", target_fps)
