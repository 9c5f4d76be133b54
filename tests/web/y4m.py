"""YUV4MPEG2 (y4m) clips for Chromium's fake camera (`--use-file-for-fake-video-capture`), made from real faces.

Chromium plays a y4m file at its header's frame rate and loops it. Clips are written into a test's tmp_path and
never committed (640x480 at 30 fps is 13.8 MB a second).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from tests.faces import Placement, compose_faces


def write_y4m(path: Path, frames: Iterable[np.ndarray], width: int, height: int, fps: int) -> int:
    """Write RGB uint8 (height, width, 3) frames as 4:2:0 y4m; returns the number of frames written."""
    if width % 2 or height % 2:
        raise ValueError(f"4:2:0 needs even sizes, got {width}x{height}")
    count = 0
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode("ascii"))
        for frame in frames:
            if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
                raise ValueError(f"frame {count} is {frame.shape} {frame.dtype}, not ({height}, {width}, 3) uint8")
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420).tobytes())  # Y, then U, then V planes
            count += 1
    return count


def moving_face_frames(width: int, height: int, count: int) -> Iterator[np.ndarray]:
    """The astronaut's face drifting side to side and back over `count` frames (a loop without a jump)."""
    for i in range(count):
        phase = 2 * math.pi * i / count
        placement = Placement(0.5 + 0.12 * math.sin(phase), 0.55 + 0.04 * math.cos(phase), 0.45)
        frame, _ = compose_faces(width, height, (placement,), seed=i)
        yield frame


def face_clip(path: Path, width: int = 640, height: int = 480, fps: int = 30, seconds: float = 2.0) -> Path:
    """A looping y4m clip of one real face moving; returns `path`."""
    write_y4m(path, moving_face_frames(width, height, round(fps * seconds)), width, height, fps)
    return path
