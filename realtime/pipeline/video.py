"""The frame every front-end hands the pipeline and gets back: pixels with an explicit format, pts and time base.

Design notes: docs/design-notes.md, section realtime/pipeline/video.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, get_args

import numpy as np

PixelFormat = Literal["yuv420p", "rgb24"]
PIXEL_FORMATS: tuple[PixelFormat, ...] = get_args(PixelFormat)


@dataclass(frozen=True, slots=True)
class Frame:
    """One video frame. `data` is (H, W, 3) uint8 for rgb24, packed (H * 3 / 2, W) uint8 planes for yuv420p (H and
    W even); `pts` counts `time_base` seconds (None: unknown, as for a photo). `drawn_over` (x0, y0, x1, y1, x1 and
    y1 exclusive): pixels the sender drew over its camera's picture (the page's glass-to-glass stamp), not camera
    pixels, so the pipeline does not watch them for entering faces."""

    data: np.ndarray
    format: PixelFormat
    pts: int | None = None
    time_base: Fraction | None = None
    drawn_over: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.format not in PIXEL_FORMATS:
            raise ValueError(f"pixel format must be one of {', '.join(PIXEL_FORMATS)}, got {self.format!r}")
        data = self.data
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
            what = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
            raise ValueError(f"a {self.format} frame needs a uint8 numpy array, got {what}")
        if self.format == "rgb24":
            if data.ndim != 3 or data.shape[2] != 3 or data.shape[0] < 1 or data.shape[1] < 1:
                raise ValueError(f"{data.shape} is not an rgb24 frame: expected (H, W, 3)")
        else:
            if data.ndim != 2:
                raise ValueError(f"{data.shape} is not a yuv420p frame: expected packed planes (H * 3 / 2, W)")
            rows, width = data.shape
            if rows < 3 or rows % 3 or (2 * rows // 3) % 2 or width < 2 or width % 2:
                raise ValueError(f"{data.shape} is not a yuv420p frame: H * 3 / 2 rows with H and W even")
        if self.pts is not None and (isinstance(self.pts, bool) or not isinstance(self.pts, int)):
            raise ValueError(f"pts must be a whole number of time_base units or None, got {self.pts!r}")
        if self.time_base is not None and (not isinstance(self.time_base, Fraction) or self.time_base <= 0):
            raise ValueError(f"time_base must be a positive fractions.Fraction or None, got {self.time_base!r}")
        if self.drawn_over is not None:
            box = self.drawn_over
            ok = isinstance(box, tuple) and len(box) == 4 and all(type(v) is int for v in box)
            if not ok or not (0 <= box[0] < box[2] <= self.width and 0 <= box[1] < box[3] <= self.height):
                raise ValueError(
                    f"drawn_over must be (x0, y0, x1, y1) inside the {self.width}x{self.height} frame, got {box!r}"
                )

    @property
    def width(self) -> int:
        return self.data.shape[1]

    @property
    def height(self) -> int:
        return self.data.shape[0] if self.format == "rgb24" else self.data.shape[0] * 2 // 3

    @property
    def time(self) -> float | None:
        """pts in seconds, when both pts and time base are known."""
        if self.pts is None or self.time_base is None:
            return None
        return float(self.pts * self.time_base)

    def with_data(self, data: np.ndarray) -> Frame:
        """The same format, pts and time base with other pixels (checked like any new frame)."""
        return dataclasses.replace(self, data=data)

    def copy(self) -> Frame:
        return self.with_data(np.array(self.data, copy=True))
