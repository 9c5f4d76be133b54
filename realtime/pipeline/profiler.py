"""The pipeline's profiler: per-stage and end-to-end times per frame, rolling percentiles, fps and counters.

Design notes: docs/design-notes.md, section realtime/pipeline/profiler.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

MAX_PENDING = 64  # finished CUDA frames waiting for their events; more means the GPU is far behind
EVENT_POOL = 512  # completed CUDA events kept for reuse, so the hot path rarely creates or destroys one
DEFAULT_COUNTERS = ("fail_closed",)  # always present, so a dashboard shows 0 rather than nothing (drops: the worker)
PERCENTILES = (50, 95, 99)

Clock = Callable[[], float]


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a profiler name must be a non-empty string, got {name!r}")


def _stats(values: list[float]) -> dict[str, float | int]:
    """p50/p95/p99 (numpy's linear interpolation), mean and count of one window, in milliseconds."""
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "mean": 0.0, "count": 0}
    a = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(a, PERCENTILES)
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(a.mean()), "count": len(values)}


@dataclass(slots=True)
class _GpuFrame:
    """A finished CUDA frame whose events may still be in flight on the GPU."""

    generation: int
    start: Any  # torch.cuda.Event
    end: Any
    stages: list[tuple[str, Any, Any]]
    marks: dict[str, float]

    def complete(self) -> bool:
        # the frame's end event first: in the usual case (one stream) it is the last to complete
        if not self.end.query() or not self.start.query():
            return False
        return all(start.query() and end.query() for _, start, end in self.stages)

    def events(self) -> Iterator[Any]:
        yield self.start
        yield self.end
        for _, start, end in self.stages:
            yield start
            yield end


class FrameRecord:
    """The timing record of one frame, used by one thread: `stage()` blocks, `mark()`s, then `finish()` once."""

    __slots__ = ("_done", "_events", "_generation", "_profiler", "_start", "_start_event", "_times")

    def __init__(self, profiler: Profiler, generation: int, start: float, start_event: Any | None) -> None:
        self._profiler = profiler
        self._generation = generation
        self._start = start
        self._start_event = start_event
        self._times: dict[str, float] = {}  # host-measured stage times (CPU) and marks, ms, summed per name
        self._events: list[tuple[str, Any, Any]] = []  # CUDA stage events
        self._done = False

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage `name`; a name used twice in one frame adds up, and a block that raises counts."""
        _check_name(name)
        self._check_open()
        p = self._profiler
        if p.is_cuda:
            start = p._event()
            start.record(p._current_stream())
            try:
                yield
            finally:
                end = p._event()
                end.record(p._current_stream())
                self._events.append((name, start, end))
        else:
            t0 = p.clock()
            try:
                yield
            finally:
                self._add(name, (p.clock() - t0) * 1e3)

    def mark(self, name: str, ms: float) -> None:
        """Add a stage time measured elsewhere (e.g. host-side work around the GPU stages), in milliseconds."""
        _check_name(name)
        self._check_open()
        ms = float(ms)
        if not math.isfinite(ms) or ms < 0:
            raise ValueError(f"stage {name!r}: a time must be a finite number of milliseconds >= 0, got {ms!r}")
        self._add(name, ms)

    def finish(self) -> None:
        """End the frame: end-to-end is start..now. On CUDA this only records an event; nothing waits for the GPU."""
        self._check_open()
        self._done = True
        p = self._profiler
        now = p.clock()
        host_ms = (now - self._start) * 1e3
        if p.is_cuda:
            end = p._event()
            end.record(p._current_stream())
            p._finish_gpu(_GpuFrame(self._generation, self._start_event, end, self._events, self._times), now, host_ms)
        else:
            p._finish_cpu(self._generation, self._times, now, host_ms)

    def _add(self, name: str, ms: float) -> None:
        self._times[name] = self._times.get(name, 0.0) + ms

    def _check_open(self) -> None:
        if self._done:
            raise RuntimeError("this frame's record is finished: start the next frame with Profiler.frame()")


class Profiler:
    """Rolling per-stage and end-to-end latency, fps and event counters for one pipeline."""

    def __init__(self, device: torch.device | str = "cpu", window: int = 600, clock: Clock = time.perf_counter) -> None:
        if int(window) < 1:
            raise ValueError(f"the profiler window must hold at least one frame, got {window!r}")
        self.device = torch.device(device)
        self.is_cuda = self.device.type == "cuda"
        self.window = int(window)
        self.clock = clock
        self._lock = threading.Lock()
        self._free_events: deque[Any] = deque(maxlen=EVENT_POOL)  # append/pop are atomic: no lock needed
        self._generation = 0
        self._reset_locked()

    # --- recording (worker thread) --------------------------------------------------------------------------

    def frame(self) -> FrameRecord:
        """Start timing one frame; on CUDA also record its start event on the current stream."""
        start_event = None
        if self.is_cuda:
            start_event = self._event()
            start_event.record(self._current_stream())
        return FrameRecord(self, self._generation, self.clock(), start_event)

    def count(self, name: str, n: int = 1) -> None:
        """Add `n` to counter `name` (dropped frames, fail-closed events, detections...)."""
        _check_name(name)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"counter {name!r}: add a whole number >= 0, got {n!r}")
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + n

    def counters(self) -> dict[str, int]:
        """A copy of the counters (the `CounterSource` observers read), without computing any percentile."""
        with self._lock:
            return dict(self._counters)

    def reset(self) -> None:
        """Forget everything; frames started before the reset are ignored when they finish."""
        with self._lock:
            self._reset_locked()

    # --- reading (any thread) -------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able summary; all times in milliseconds. Resolves CUDA frames that are ready, never waits."""
        self._resolve()
        with self._lock:
            stages = {name: list(values) for name, values in self._stages.items()}
            end_to_end = list(self._end_to_end)
            host = list(self._host_end_to_end)
            finished_at = list(self._finished_at)
            counters = dict(self._counters)
            frames = self._frames
            pending = len(self._pending)
        fps = 0.0
        if len(finished_at) >= 2 and finished_at[-1] > finished_at[0]:
            fps = (len(finished_at) - 1) / (finished_at[-1] - finished_at[0])
        return {
            "device": str(self.device),
            "frames": frames,
            "fps": float(fps),
            "window": self.window,
            "pending": pending,
            "stages": {name: _stats(values) for name, values in stages.items() if values},
            "end_to_end": _stats(end_to_end),
            "host_end_to_end": _stats(host),
            "counters": counters,
        }

    def to_json(self) -> str:
        """`snapshot()` as strict JSON (no NaN or Infinity, which browsers' JSON.parse rejects)."""
        return json.dumps(self.snapshot(), allow_nan=False)

    # --- internals ------------------------------------------------------------------------------------------

    def _reset_locked(self) -> None:
        self._generation += 1
        self._stages: dict[str, deque[float]] = {}
        self._end_to_end: deque[float] = deque(maxlen=self.window)
        self._host_end_to_end: deque[float] = deque(maxlen=self.window)
        self._finished_at: deque[float] = deque(maxlen=self.window)
        self._counters: dict[str, int] = dict.fromkeys(DEFAULT_COUNTERS, 0)
        self._frames = 0
        self._pending: deque[_GpuFrame] = deque()  # dropped frames' events are left to the garbage collector

    def _make_event(self) -> Any:
        return torch.cuda.Event(enable_timing=True)

    def _current_stream(self) -> Any:
        return torch.cuda.current_stream(self.device)

    def _event(self) -> Any:
        try:
            return self._free_events.pop()
        except IndexError:
            return self._make_event()

    def _append_stages(self, times: dict[str, float]) -> None:
        for name, ms in times.items():
            window = self._stages.get(name)
            if window is None:
                window = self._stages[name] = deque(maxlen=self.window)
            window.append(ms)

    def _finish_cpu(self, generation: int, times: dict[str, float], now: float, host_ms: float) -> None:
        with self._lock:
            if generation != self._generation:
                return
            self._frames += 1
            self._finished_at.append(now)
            self._host_end_to_end.append(host_ms)
            self._end_to_end.append(host_ms)
            self._append_stages(times)

    def _finish_gpu(self, frame: _GpuFrame, now: float, host_ms: float) -> None:
        with self._lock:
            if frame.generation != self._generation:
                return
            self._frames += 1
            self._finished_at.append(now)
            self._host_end_to_end.append(host_ms)
            if len(self._pending) >= MAX_PENDING:
                self._pending.popleft()  # still in flight: its events go to the garbage collector, not the pool
                self._counters["profiler_overflow"] = self._counters.get("profiler_overflow", 0) + 1
            self._pending.append(frame)
        self._resolve()

    def _resolve(self) -> None:
        """Move CUDA frames whose events have all completed into the windows; a frame still in flight stops the scan."""
        if not self.is_cuda:
            return
        ready: list[_GpuFrame] = []
        # query() takes no device guard of its own: on cuda:N from a thread whose current device is 0 (the event
        # loop's), it would make a context there
        guard = torch.cuda.device(self.device) if self.device.index is not None else contextlib.nullcontext()
        with self._lock, guard:
            # oldest first: on one stream frames complete in order, so the first one in flight ends the scan
            while self._pending and self._pending[0].complete():
                ready.append(self._pending.popleft())
        if not ready:
            return
        results: list[tuple[int, dict[str, float], float]] = []
        unreadable = 0
        for frame in ready:
            try:
                times = dict(frame.marks)
                for name, start, end in frame.stages:
                    times[name] = times.get(name, 0.0) + float(start.elapsed_time(end))
                results.append((frame.generation, times, float(frame.start.elapsed_time(frame.end))))
            except RuntimeError:  # e.g. an event that was never recorded: lose this frame, not the pipeline
                unreadable += 1
                continue
            self._free_events.extend(frame.events())  # completed and read: safe to record again
        with self._lock:
            for generation, times, end_to_end in results:
                if generation == self._generation:
                    self._end_to_end.append(end_to_end)
                    self._append_stages(times)
            if unreadable:
                self._counters["profiler_unreadable"] = self._counters.get("profiler_unreadable", 0) + unreadable
