"""aiortc media glue around the pipeline worker: inbound track → `drain` → worker → `SwappedVideoTrack`.

Bounded latency: aiortc's `RemoteStreamTrack` keeps an unbounded queue, so `drain` takes every frame off it as soon
as it arrives and hands it to the worker's one-slot mailbox, where a newer frame replaces an unread one (a counted
drop). The queue never grows; under overload the frame rate falls and the latency does not.

Fail closed: `SwappedVideoTrack` only ever returns processed frames. When processing is late it repeats the last
processed frame (counted as `repeated_frames`); before the first processed frame it waits; it never returns the raw
input. Every returned frame carries the pts and time base of the input frame it was made from.

This module is the only place that imports aiortc. Nothing here blocks the event loop: inference runs on the
worker's thread, and the worker hands each processed frame over with `loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from realtime.pipeline import FramePipeline
from realtime.worker import PipelineWorker, ProcessedFrame

log = logging.getLogger(__name__)

REPEAT_AFTER_S = 0.5  # how long the outbound track waits for a new processed frame before repeating the last one


async def drain(track: MediaStreamTrack, worker: PipelineWorker, stop: asyncio.Event | None = None) -> None:
    """Submit every video frame of `track` to `worker` as soon as it arrives, until the track ends or `stop` is set.

    The frame is converted to RGB here, on the event loop: `to_ndarray(format="rgb24")` costs under a millisecond at
    640x480 (a few at 1080p), less than a thread hand-off would save. The worker gets `pts=(pts, time_base)` as its
    opaque pts, so the outbound frame can carry both, and the timestamp in seconds for the tracker.
    Ends without error when the track ends (`MediaStreamError`) or `stop` is set; non-video frames are skipped.
    """
    stopped = asyncio.ensure_future(stop.wait()) if stop is not None else None
    receiving: asyncio.Future[Any] | None = None
    try:
        while stopped is None or not stopped.done():
            receiving = asyncio.ensure_future(track.recv())
            if stopped is not None:
                await asyncio.wait({receiving, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not receiving.done():
                    return  # stopped while waiting for a frame
            try:
                frame = receiving.result() if receiving.done() else await receiving
            except MediaStreamError:
                return  # the track ended: the peer left or the source stopped
            if not isinstance(frame, av.VideoFrame):
                continue
            pts, time_base = frame.pts, frame.time_base
            t = float(pts * time_base) if pts is not None and time_base is not None else None
            worker.submit(frame.to_ndarray(format="rgb24"), pts=(pts, time_base), t=t)
    finally:  # cancelled or stopped: leave no task behind
        for pending in (receiving, stopped):
            if pending is not None and not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, MediaStreamError):
                    await pending


class SwappedVideoTrack(MediaStreamTrack):
    """The outbound video: the worker's processed frames, each with the pts and time base of its input frame.

    `recv` waits (without blocking the loop) for a processed frame newer than the one it last returned; after
    `repeat_after` seconds it returns the last one again, counted as `repeated_frames`. A repeat gets the previous
    pts plus one tick, so an encoder sees strictly increasing timestamps. Before the first processed frame it
    waits, however long. Create it on the event loop that will call `recv`; it takes over the worker's `on_frame`.
    """

    kind = "video"

    def __init__(self, worker: PipelineWorker, repeat_after: float = REPEAT_AFTER_S) -> None:
        super().__init__()
        self.worker = worker
        self.repeat_after = repeat_after
        self._loop = asyncio.get_running_loop()
        self._arrived = asyncio.Event()
        self._newest: ProcessedFrame | None = None  # written on the worker thread, read on the loop
        self.last: ProcessedFrame | None = None  # the processed frame `recv` returned last
        self._last_pts: Any = None
        worker.on_frame = self._on_frame

    def _on_frame(self, frame: ProcessedFrame) -> None:  # on the worker thread
        self._newest = frame
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening any more
            self._loop.call_soon_threadsafe(self._arrived.set)

    async def recv(self) -> av.VideoFrame:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.repeat_after
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            self._arrived.clear()
            newest = self._newest
            if newest is not None and (self.last is None or newest.sequence > self.last.sequence):
                return self._emit(newest, repeat=False)
            if self.last is None:
                await self._arrived.wait()  # nothing processed yet: wait, never show the raw input
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                self.worker.pipeline.profiler.count("repeated_frames")
                return self._emit(self.last, repeat=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    def _emit(self, processed: ProcessedFrame, repeat: bool) -> av.VideoFrame:
        pts, time_base = processed.pts if isinstance(processed.pts, tuple) else (processed.pts, None)
        if pts is not None and self._last_pts is not None and (repeat or pts <= self._last_pts):
            pts = self._last_pts + 1  # keep timestamps strictly increasing for the encoder
        out = av.VideoFrame.from_ndarray(processed.image, format="rgb24")
        out.pts = pts
        if time_base is not None:
            out.time_base = time_base
        self.last, self._last_pts = processed, pts
        return out

    def stop(self) -> None:
        super().stop()
        if self.worker.on_frame == self._on_frame:
            self.worker.on_frame = None
        self._arrived.set()  # wake a waiting `recv`, which then raises MediaStreamError


class LiveSession:
    """One live stream: `source` → `drain` task → worker thread → `output`. Create it on the event loop.

    `close` stops the drain task, the outbound track and the worker (joined in a thread), leaving no task behind.
    When the source ends the drain task finishes and `output` goes on repeating the last processed frame.
    """

    def __init__(
        self,
        source: MediaStreamTrack,
        pipeline: FramePipeline,
        repeat_after: float = REPEAT_AFTER_S,
        name: str = "dancecam-pipeline",
    ) -> None:
        self.source = source
        self.worker = PipelineWorker(pipeline, name=name)
        self.output = SwappedVideoTrack(self.worker, repeat_after)
        self._stop = asyncio.Event()
        self.worker.start()
        self.drain_task = asyncio.create_task(drain(source, self.worker, self._stop), name=f"{name}-drain")

    async def close(self) -> None:
        self._stop.set()
        if not self.drain_task.done():
            self.drain_task.cancel()
        try:
            await self.drain_task
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("the inbound track's drain task failed")
        self.output.stop()
        await asyncio.to_thread(self.worker.stop)
