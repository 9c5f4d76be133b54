"""Outlines of the tracked faces drawn into the output frame (the `draw_boxes` setting): what the tracker sees.

Drawn in place on the device, into RGB frames or straight into yuv420p planes (the planes are what leaves).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from realtime.pipeline.colour import rgb_to_yuv420p

SWAPPED_RGB = (0, 230, 0)  # a face that was swapped (or hidden)
OTHER_RGB = (255, 160, 0)  # a tracked face that was not chosen


def _as_yuv(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """The colour in yuv420p as realtime.pipeline.colour converts (BT.601 limited range)."""
    y, u, v = rgb_to_yuv420p(torch.tensor(rgb, dtype=torch.uint8).expand(2, 2, 3))
    return int(y[0, 0]), int(u[0, 0]), int(v[0, 0])


SWAPPED_YUV = _as_yuv(SWAPPED_RGB)
OTHER_YUV = _as_yuv(OTHER_RGB)


def line_width(width: int) -> int:
    """2 px at 640 wide, growing with the frame so the outline stays visible after encoding."""
    return max(2, round(width / 320)) // 2 * 2  # even: whole chroma samples


def _clip(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int] | None:
    x0, y0, x1, y1 = (round(float(v)) for v in box)
    x0, y0 = max(0, x0 - x0 % 2), max(0, y0 - y0 % 2)
    x1, y1 = min(width, x1 + x1 % 2), min(height, y1 + y1 % 2)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _outline(plane: torch.Tensor, box: tuple[int, int, int, int], t: int, value: int) -> None:
    # python scalars: a fill on the device, no host-to-device copy
    x0, y0, x1, y1 = box
    plane[y0 : min(y1, y0 + t), x0:x1] = value
    plane[max(y0, y1 - t) : y1, x0:x1] = value
    plane[y0:y1, x0 : min(x1, x0 + t)] = value
    plane[y0:y1, max(x0, x1 - t) : x1] = value


def draw_boxes_rgb(frame: torch.Tensor, boxes: Sequence[np.ndarray], swapped: Sequence[bool]) -> None:
    """Outline `boxes` (x0, y0, x1, y1 in pixels) in an (H, W, 3) uint8 frame, green where swapped."""
    height, width = frame.shape[:2]
    t = line_width(width)
    for box, done in zip(boxes, swapped, strict=True):
        clipped = _clip(box, width, height)
        if clipped is not None:
            for channel, value in enumerate(SWAPPED_RGB if done else OTHER_RGB):
                _outline(frame[..., channel], clipped, t, value)


def draw_boxes_yuv(
    planes: tuple[torch.Tensor, torch.Tensor, torch.Tensor], boxes: Sequence[np.ndarray], swapped: Sequence[bool]
) -> None:
    """The same into yuv420p planes (Y (H, W), U and V (H/2, W/2)): the outline in whole 2x2 chroma blocks."""
    y, u, v = planes
    height, width = y.shape
    t = line_width(width)
    for box, done in zip(boxes, swapped, strict=True):
        clipped = _clip(box, width, height)
        if clipped is None:
            continue
        luma, cb, cr = SWAPPED_YUV if done else OTHER_YUV
        _outline(y, clipped, t, luma)
        half = tuple(c // 2 for c in clipped)
        _outline(u, half, t // 2, cb)  # type: ignore[arg-type]
        _outline(v, half, t // 2, cr)  # type: ignore[arg-type]
