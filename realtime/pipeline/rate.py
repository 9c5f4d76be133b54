"""`RateMeter`: events per second over a sliding window (frames in, frames out), for sessions, cameras and sinks."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

IDLE_S = 1.0  # after this long without an event the span runs on to now, so a stalled stream's rate falls


class RateMeter:
    """Events per second over the last `window` seconds. `tick` from one thread, `rate` from any."""

    def __init__(self, window: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not window > 0:
            raise ValueError(f"window must be positive, got {window!r}")
        self.window = window
        self.clock = clock
        self._times: deque[float] = deque(maxlen=4096)
        self._lock = threading.Lock()

    def tick(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        with self._lock:
            self._times.append(now)
            while now - self._times[0] > self.window:  # only the window is kept: `rate` walks ~window * fps entries
                self._times.popleft()

    def rate(self, now: float | None = None) -> float:
        now = self.clock() if now is None else now
        with self._lock:
            times = [t for t in self._times if now - t <= self.window]
        if len(times) < 2:
            return 0.0
        span = times[-1] - times[0]
        if now - times[-1] > IDLE_S:
            span = max(span, now - times[0])
        return (len(times) - 1) / span if span > 0 else 0.0
