"""Capture for `dancecam cam`: a local camera (OpenCV) or a looped video file (PyAV), read on its own thread.

Design notes: docs/design-notes.md, section realtime/local/camera.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import av
import cv2
import numpy as np

from engines.errors import ConfigError, DanceCamError, MediaError
from realtime.pipeline.rate import RateMeter
from realtime.pipeline.video import Frame

log = logging.getLogger(__name__)

DEFAULT_FPS = 30.0  # when a camera does not say
Size = tuple[int, int]  # width, height
Submit = Callable[[Frame, float], None]  # (rgb24 frame, capture time in seconds)


class FrameSource(Protocol):
    description: str  # for messages: "camera 0 (/dev/video0)", "clip.mp4 (looped)"
    size: Size
    fps: float

    def read(self) -> np.ndarray | None:
        """The next (H, W, 3) uint8 RGB frame, waiting for it; None when the source has stopped delivering."""
        ...

    def close(self) -> None: ...


def parse_size(text: str) -> Size:
    """'1280x720' → (1280, 720)."""
    w, sep, h = text.lower().partition("x")
    if not (sep and w.isdigit() and h.isdigit()) or not (16 <= int(w) <= 7680 and 16 <= int(h) <= 4320):
        raise ConfigError(f"size {text!r}: give WIDTHxHEIGHT in pixels, e.g. 1280x720")
    return int(w), int(h)


def open_source(spec: str, size: Size | None = None, fps: float | None = None) -> FrameSource:
    """`spec` is a camera number (0 is the first camera), a device path (/dev/video2) or a video file."""
    if fps is not None and not 0 < fps <= 240:
        raise ConfigError(f"fps {fps}: give a frame rate between 1 and 240")
    if spec.isdigit():
        return CameraSource(int(spec), size, fps)
    if spec.startswith("/dev/"):
        return CameraSource(spec, size, fps)
    path = Path(spec)
    if not path.is_file():
        raise MediaError(
            f"--camera {spec}: no such video file; give a camera number (0 is the first camera) or a video file"
        )
    return VideoFileSource(path, size, fps)


# --- cameras --------------------------------------------------------------------------------------------------


def _camera_names(device: int | str) -> tuple[str, str | None]:
    """(words for messages, device node on Linux)."""
    if isinstance(device, str):
        return device, device
    if sys.platform.startswith("linux"):
        return f"camera {device} (/dev/video{device})", f"/dev/video{device}"
    return f"camera {device}", None


def _camera_help(node: str | None) -> str:
    if node is not None:
        return (
            f"check that a camera is connected (`ls /dev/video*` lists them, `v4l2-ctl --list-devices` names them), "
            f"that no other program is using it, and that you may open it (`ls -l {node}`; if it belongs to the "
            "video group: `sudo usermod -aG video $USER`, then log in again)"
        )
    if sys.platform == "darwin":
        return (
            "check that a camera is connected, that no other program is using it, and that this terminal may use "
            "the camera (System Settings → Privacy & Security → Camera)"
        )
    return (
        "check that a camera is connected, that no other program is using it, and that apps may use the camera "
        "(Settings → Privacy → Camera)"
    )


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """OpenCV logs a warning per backend it tries; our error says it better."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


class CameraSource:
    """A camera through OpenCV's VideoCapture; `size` and `fps` are requests the camera may round."""

    def __init__(self, device: int | str, size: Size | None = None, fps: float | None = None) -> None:
        self.description, node = _camera_names(device)
        if node is not None:  # say precisely what is wrong with the device node before OpenCV hides it
            if not os.path.exists(node):
                raise MediaError(f"{self.description} does not exist: {_camera_help(node)}")
            if not os.access(node, os.R_OK | os.W_OK):
                raise MediaError(f"{self.description}: permission denied: {_camera_help(node)}")
        with _quiet_opencv():
            if node is not None:
                cap = cv2.VideoCapture(node if isinstance(device, str) else device, cv2.CAP_V4L2)
            else:
                cap = cv2.VideoCapture(device)
        if not cap.isOpened():
            cap.release()
            raise MediaError(f"cannot open {self.description}: {_camera_help(node)}")
        self._cap = cap
        if node is not None:  # MJPG: most USB cameras give 720p and above at full rate only compressed
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*"MJPG"))
        if size is not None:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, size[0])
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, size[1])
        if fps is not None:
            cap.set(cv2.CAP_PROP_FPS, fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # fewer stale frames in the driver (where the backend allows)
        first = self._grab()
        if first is None:
            cap.release()
            raise MediaError(f"{self.description} opened but delivered no frame: {_camera_help(node)}")
        self._first: np.ndarray | None = first
        self.size = (first.shape[1], first.shape[0])
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0) or fps or DEFAULT_FPS

    def _grab(self) -> np.ndarray | None:
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            return None
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def read(self) -> np.ndarray | None:
        first, self._first = self._first, None
        return first if first is not None else self._grab()

    def close(self) -> None:
        self._cap.release()


# --- video files ----------------------------------------------------------------------------------------------


class VideoFileSource:
    """A video file played in a loop and paced at its frame rate (or `fps`), like a camera; `size` resizes."""

    def __init__(self, path: Path, size: Size | None = None, fps: float | None = None) -> None:
        self.path = path
        self.description = f"{path.name} (looped)"
        self._size = size
        self._container: av.container.InputContainer | None = None
        self._frames: Iterator[av.VideoFrame] = iter(())
        first = self._open()
        vin = self._stream
        rate = vin.average_rate or vin.guessed_rate
        self.fps = float(fps or rate or DEFAULT_FPS)
        self._first: np.ndarray | None = first
        self.size = (first.shape[1], first.shape[0])
        self._next: float | None = None

    def _open(self) -> np.ndarray:
        """(Re)open the file and decode its first frame."""
        self._close_container()
        try:
            self._container = av.open(str(self.path), "r")
        except (av.FFmpegError, OSError) as e:
            raise MediaError(f"{self.path} is not a readable video: {getattr(e, 'strerror', None) or e}") from None
        if not self._container.streams.video:
            raise MediaError(f"{self.path} has no video stream")
        self._stream = self._container.streams.video[0]
        self._frames = self._container.decode(self._stream)
        first = self._decode()
        if first is None:
            raise MediaError(f"{self.path}: no video frame could be decoded (corrupt or empty)")
        return first

    def _decode(self) -> np.ndarray | None:
        try:
            frame = next(self._frames)
        except StopIteration:
            return None
        except av.FFmpegError as e:
            raise MediaError(f"{self.path}: {e} (corrupt or unsupported video)") from None
        rgb = frame.to_ndarray(format="rgb24")
        turns = round((frame.rotation or 0) / 90) % 4  # phone clips stored sideways
        if turns:
            rgb = np.ascontiguousarray(np.rot90(rgb, turns))
        if self._size is not None and (rgb.shape[1], rgb.shape[0]) != self._size:
            rgb = cv2.resize(rgb, self._size, interpolation=cv2.INTER_AREA)
        return rgb

    def read(self) -> np.ndarray | None:
        frame, self._first = self._first, None
        if frame is None:
            frame = self._decode()
        if frame is None:  # end of file: from the top again
            frame = self._open()
        self._pace()
        return frame

    def _pace(self) -> None:
        """Hand frames out at the frame rate; after a stall, go on from now instead of catching up in a burst."""
        now = time.perf_counter()
        period = 1.0 / self.fps
        if self._next is None or now - self._next > period:
            self._next = now
        elif self._next > now:
            time.sleep(self._next - now)
        self._next += period

    def _close_container(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def close(self) -> None:
        self._close_container()


# --- the capture thread ---------------------------------------------------------------------------------------


class Capture:
    """Reads `source` on its own thread and submits every frame at once; `error` says why it stopped early."""

    def __init__(self, source: FrameSource, submit: Submit, name: str = "dancecam-capture") -> None:
        self.source = source
        self.submit = submit
        self.frames = 0
        self.rate = RateMeter(clock=time.perf_counter)  # the capture loop's clock
        self.error: DanceCamError | None = None
        self.stopped = threading.Event()  # set when the thread has ended, for whatever reason
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Capture:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the read in progress (one frame period at most, for a working camera)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("the capture thread did not stop within %.1f s", timeout)

    def _run(self) -> None:
        # pts numbers the frames from 0 at the source's nominal rate; the tracker gets the real capture time
        time_base = 1 / Fraction(self.source.fps).limit_denominator(1001)
        try:
            while not self._stop.is_set():
                frame = self.source.read()
                if frame is None:
                    self.error = MediaError(
                        f"{self.source.description} stopped delivering frames (unplugged, or taken by another program?)"
                    )
                    return
                if self._stop.is_set():
                    return
                self.submit(Frame(frame, "rgb24", self.frames, time_base), time.perf_counter())
                self.frames += 1
                self.rate.tick()
        except DanceCamError as e:
            self.error = e
        except Exception as e:  # a capture failure ends the session with a message, not a dead thread
            log.exception("capture failed")
            self.error = MediaError(f"{self.source.description}: capture failed: {e}")
        finally:
            self.stopped.set()
