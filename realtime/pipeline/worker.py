"""The pipeline's worker thread, fed through a one-slot latest-frame mailbox.

Design notes: docs/design-notes.md, section realtime/pipeline/worker.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from realtime.pipeline.counters import Counters
from realtime.pipeline.frame import FrameResult
from realtime.pipeline.video import Frame

log = logging.getLogger(__name__)
BROKEN_AFTER = 30  # frames in a row the pipeline raised on before its users give up (a second at 30 fps)
T = TypeVar("T")
WORKER_COUNTERS = ("dropped_frames", "repeated_frames", "pipeline_errors")


class FrameProcessor(Protocol):
    """What the worker runs: a `FramePipeline`, or a session's wrapper around one (a `CounterSource` too)."""

    def process(self, frame: Frame, t: float | None = None) -> FrameResult: ...

    def counters(self) -> dict[str, int]: ...

    def close(self) -> None: ...


class Mailbox(Generic[T]):
    """One slot. `put` replaces an unread item (and says so); `get` waits for an item or for `close`."""

    def __init__(self) -> None:
        self._item: T | None = None
        self._full = False
        self._closed = False
        self._cond = threading.Condition()

    def put(self, item: T) -> bool:
        """Store `item`; True when it replaced one that was never read (a drop)."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the mailbox is closed")
            dropped = self._full
            self._item, self._full = item, True
            self._cond.notify()
            return dropped

    def get(self, timeout: float | None = None) -> T | None:
        """The waiting item, or None after `timeout` seconds or once the mailbox is closed and empty."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._full or self._closed, timeout):
                return None
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass(frozen=True, slots=True)
class InputFrame:
    frame: Frame  # its pts and time base are carried through untouched
    t: float  # capture time in seconds, for the tracker
    submitted: float  # perf_counter at submission, for latency


@dataclass(frozen=True, slots=True)
class ProcessedFrame:
    frame: Frame  # the swapped frame: the input's format, pts and time base
    sequence: int  # counts processed frames: a consumer sees whether it got a new one
    latency_ms: float  # submission to the end of processing
    result: FrameResult


class PipelineWorker:
    """Runs a `FramePipeline` on its own thread; `submit` never blocks, `latest` never waits."""

    def __init__(
        self,
        pipeline: FrameProcessor,
        on_frame: Callable[[ProcessedFrame], None] | None = None,
        name: str = "dancecam-pipeline",
    ) -> None:
        self.pipeline = pipeline
        self.on_frame = on_frame  # called on the worker thread; hand over with loop.call_soon_threadsafe
        self._mailbox: Mailbox[InputFrame] = Mailbox()
        self._latest: ProcessedFrame | None = None
        self._lock = threading.Lock()
        self._sequence = 0
        self._consumed = 0
        self.errors = 0
        self._counts = Counters(WORKER_COUNTERS)
        self.consecutive_errors = 0  # frames in a row the pipeline raised on: a broken device fails every one
        self.last_error = ""
        self.latencies: deque[float] = deque(maxlen=300)  # submission to processed, ms: the server's share of latency
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False

    @property
    def broken(self) -> bool:
        """The pipeline has raised on `BROKEN_AFTER` frames in a row: a failed device, not a bad frame."""
        return self.consecutive_errors >= BROKEN_AFTER

    def start(self) -> PipelineWorker:
        self._thread.start()
        self._started = True
        return self

    def submit(self, frame: Frame, t: float | None = None) -> None:
        """Hand a frame to the worker; a frame still waiting is replaced and counted as dropped. `t`: its capture
        time in seconds for the tracker (default: its pts in seconds, else now)."""
        if not isinstance(frame, Frame):
            raise TypeError(f"submit takes a realtime.pipeline.video.Frame, got {type(frame).__name__}")
        now = time.perf_counter()
        if t is None:
            t = frame.time
        if self._mailbox.put(InputFrame(frame, now if t is None else t, now)):
            self._counts.add("dropped_frames")

    def counters(self) -> dict[str, int]:
        """Frames dropped, repeated and failed so far (a copy, for observers such as stats and metrics)."""
        return self._counts.counters()

    def count_repeat(self) -> None:
        """A consumer that keeps its own last frame (an outbound track) showed it again: counted here."""
        self._counts.add("repeated_frames")

    def latest(self) -> ProcessedFrame | None:
        """The newest processed frame (None before the first); a frame handed out twice counts as a repeat."""
        with self._lock:
            frame = self._latest
            if frame is not None:
                if frame.sequence == self._consumed:
                    self._counts.add("repeated_frames")
                self._consumed = frame.sequence
            return frame

    def wait(self, after: int = 0, timeout: float = 5.0) -> ProcessedFrame | None:
        """Block until a frame newer than sequence `after` is processed (for file-like and test consumers)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._latest is not None and self._latest.sequence > after:
                    return self._latest
            time.sleep(0.001)
        return None

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the frame in hand, then stop the thread and release the pipeline's device memory."""
        self._mailbox.close()
        if self._started:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("pipeline worker did not stop within %.1f s", timeout)
                return
        try:
            self.pipeline.close()
        except Exception:  # a broken device may fail this too: the caller still has its own teardown to do
            log.exception("closing the pipeline failed")

    def _run(self) -> None:
        while (item := self._mailbox.get()) is not None:
            try:
                result = self.pipeline.process(item.frame, item.t)
            except Exception as e:  # one bad frame must not end the session; it is not emitted (fail closed)
                self.errors += 1
                self.consecutive_errors += 1
                self.last_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                self._counts.add("pipeline_errors")
                if self.consecutive_errors <= 3:  # a broken device would fill the log at the frame rate
                    log.exception("frame dropped: the pipeline failed on it")
                continue
            self.consecutive_errors = 0
            latency = (time.perf_counter() - item.submitted) * 1e3
            self.latencies.append(latency)
            with self._lock:
                self._sequence += 1
                processed = ProcessedFrame(result.frame, self._sequence, latency, result)
                self._latest = processed
            if self.on_frame is not None:
                try:
                    self.on_frame(processed)
                except Exception:
                    log.exception("frame consumer failed")
