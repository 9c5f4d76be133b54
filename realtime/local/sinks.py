"""Where `dancecam cam` sends its output: a virtual camera (for video calls and OBS) and a preview window, driven
by `Presenter` from the pipeline worker's processed frames.

Design notes: docs/design-notes.md, section realtime/local/sinks.py.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np

from engines.errors import MediaError
from realtime.pipeline.rate import RateMeter

if TYPE_CHECKING:
    from realtime.pipeline.worker import PipelineWorker, ProcessedFrame

LOOPBACK_HINT = (
    "create one with `sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label=DanceCam` (the module "
    "comes in the v4l2loopback-dkms package on Debian/Ubuntu), then run this again"
)
OBS_HINT = (
    "install OBS Studio (https://obsproject.com), start its virtual camera once (Start Virtual Camera), then close "
    "OBS and run this again"
)
NO_GUI_HINT = (
    "this OpenCV has no window support (the opencv-python-headless build): for --preview replace it with "
    "`pip uninstall -y opencv-python-headless && pip install opencv-python`, or send the video to --virtual-cam"
)


class Sink(Protocol):
    name: str

    def send(self, frame: ProcessedFrame) -> bool:
        """Show or send one processed frame; False when the user asked to stop (closed the window)."""
        ...

    def close(self) -> None: ...


SinkFactory = Callable[[int, int, float], Sink]  # (width, height, fps) of the camera → an open sink


def _fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Crop the odd row/column a size was rounded by, or resize when the frame size changed."""
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    if width <= w <= width + 1 and height <= h <= height + 1:
        return np.ascontiguousarray(image[:height, :width])
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


class VirtualCameraSink:
    """pyvirtualcam: v4l2loopback on Linux, OBS's virtual camera on Windows and macOS. RGB frames in."""

    name = "virtual camera"

    def __init__(self, width: int, height: int, fps: float, device: str | None = None) -> None:
        try:
            import pyvirtualcam
        except ImportError:
            raise MediaError("the virtual camera needs pyvirtualcam: `pip install pyvirtualcam`") from None
        self.width, self.height = width - width % 2, height - height % 2  # the YUV formats it converts to
        try:
            self._cam = pyvirtualcam.Camera(
                self.width, self.height, fps, fmt=pyvirtualcam.PixelFormat.RGB, device=device
            )
        except Exception as e:  # RuntimeError when no virtual camera exists; others for a device it cannot use
            hint = LOOPBACK_HINT if sys.platform.startswith("linux") else OBS_HINT
            raise MediaError(f"no virtual camera device to send to: {hint} (pyvirtualcam: {e})") from None
        self.device: str = self._cam.device

    def send(self, frame: ProcessedFrame) -> bool:
        try:
            self._cam.send(_fit(frame.frame.data, self.width, self.height))
        except Exception as e:  # e.g. the loopback module was removed while running
            raise MediaError(f"the virtual camera {self.device} stopped taking frames: {e}") from None
        return True

    def close(self) -> None:
        self._cam.close()


def _gui_available() -> bool:
    for line in cv2.getBuildInformation().splitlines():
        key, _, value = line.strip().partition(":")
        if key == "GUI":
            return value.strip().upper() not in ("", "NONE")
    return True  # unknown layout: let namedWindow decide


class PreviewSink:
    """An OpenCV window; Esc or q, or closing the window, stops."""

    name = "preview"

    def __init__(self, width: int, height: int, fps: float, title: str = "DanceCam") -> None:
        self.title = title
        if not _gui_available():
            raise MediaError(f"cannot open a preview window: {NO_GUI_HINT}")
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            # checked first: some GUI backends end the process when they find no display
            raise MediaError("cannot open a preview window: no display (DISPLAY is not set); use --virtual-cam")
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
            cv2.resizeWindow(title, width, height)
        except cv2.error as e:
            reason = str(e).strip().splitlines()[-1]
            raise MediaError(f"cannot open a preview window ({reason}): {NO_GUI_HINT}") from None

    def send(self, frame: ProcessedFrame) -> bool:
        cv2.imshow(self.title, cv2.cvtColor(frame.frame.data, cv2.COLOR_RGB2BGR))
        key = cv2.waitKey(1) & 0xFF
        return key not in (27, ord("q")) and cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1

    def close(self) -> None:
        cv2.destroyWindow(self.title)
        cv2.waitKey(1)  # lets the window system process the close


class Presenter:
    """Sends every new processed frame to the sinks as it arrives; repeats the last one when none came for 1.5
    frame periods. Takes over the worker's `on_frame`."""

    def __init__(self, worker: PipelineWorker, sinks: Sequence[Sink], fps: float) -> None:
        self.worker = worker
        self.sinks = list(sinks)
        self.repeat_after = 1.5 / fps
        self.sent = 0  # new processed frames sent (repeats not counted)
        self.latencies: deque[float] = deque(maxlen=50)  # camera read to processed, ms, of recent frames sent
        self.rate = RateMeter(clock=time.perf_counter)  # ticked with perf_counter times
        self._newest = 0
        self._cond = threading.Condition()
        worker.on_frame = self._on_frame

    def _on_frame(self, frame: ProcessedFrame) -> None:  # on the worker thread
        with self._cond:
            self._newest = frame.sequence
            self._cond.notify()

    def run(
        self, should_stop: Callable[[], bool], on_status: Callable[[], None] | None = None, status_every: float = 0.5
    ) -> bool:
        """Until `should_stop()`; returns False when a sink asked to stop (the preview window was closed)."""
        last = 0
        last_sent = time.perf_counter()
        next_status = last_sent
        while not should_stop():
            timeout = min(0.1, max(0.0, last_sent + self.repeat_after - time.perf_counter()) if last else 0.1)
            with self._cond:
                if self._newest <= last:
                    self._cond.wait(timeout)
                fresh = self._newest > last
            now = time.perf_counter()
            if fresh or (last and now - last_sent >= self.repeat_after):
                frame = self.worker.latest()  # the newest; the worker counts a frame handed out twice as a repeat
                if frame is not None:
                    for sink in self.sinks:
                        if not sink.send(frame):
                            return False
                    if frame.sequence > last:
                        self.sent += 1
                        self.rate.tick(now)
                        self.latencies.append(frame.latency_ms)
                    last, last_sent = frame.sequence, now
            if on_status is not None and now >= next_status:
                on_status()
                next_status = now + status_every
        return True
