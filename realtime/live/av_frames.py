"""Conversion between PyAV's `av.VideoFrame` and the pipeline's `Frame`, for the WebRTC transport.

The pipeline layer never imports av, so this is the one place a decoded frame becomes a typed `Frame` (pixels,
format, pts, time base) and back. yuv420p stays yuv420p where it can (no colour conversion of untouched pixels).
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from realtime.live import stamp
from realtime.pipeline.video import Frame


def _time_base(frame: av.VideoFrame) -> Fraction | None:
    tb = frame.time_base
    return Fraction(tb) if tb is not None else None


def from_av(frame: av.VideoFrame) -> Frame:
    """Packed yuv420p planes for even-sized yuv420p frames (as decoded WebRTC video is), else rgb24; pts and time
    base carried over. A glass-to-glass stamp the sender drew (one that reads back with a valid check) is marked
    `drawn_over`: it changes every frame, and the pipeline would take it for a face coming in."""
    pts, tb = frame.pts, _time_base(frame)
    width, height = frame.width, frame.height
    if frame.format.name == "yuv420p" and width % 2 == 0 and height % 2 == 0:
        data = frame.to_ndarray()
        stamped = stamp.read_luma(data[:height]) is not None
        fmt = "yuv420p"
    else:
        data, fmt = frame.to_ndarray(format="rgb24"), "rgb24"
        stamped = stamp.read(data) is not None
    return Frame(data, fmt, pts, tb, stamp.stamp_region(width, height) if stamped else None)


def to_av(frame: Frame) -> av.VideoFrame:
    """An `av.VideoFrame` of the same format with the frame's pts and time base (those that are known)."""
    out = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame.data), format=frame.format)
    out.pts = frame.pts
    if frame.time_base is not None:
        out.time_base = frame.time_base
    return out
