"""Test doubles shared across the suite (aiortc's tests/utils.py is the model): a clock that moves when told, a swap
engine that paints faces white, a real-time camera track, and the regions a swap must cover in a composed scene."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction

import av
import cv2
import numpy as np
import torch
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from engines.align import estimate_norm
from realtime.pipeline.masks import build_mask
from tests import faces

VIDEO_TIME_BASE = Fraction(1, 90000)  # RTP's video clock, as aiortc's own tracks
TICKS_30FPS = 3000  # one frame at 30 fps on that clock


class FakeClock:
    """A clock (seconds) that moves only when told to."""

    def __init__(self, start: float = 100.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    def advance_ms(self, ms: float) -> None:
        self.t += ms / 1e3


class Painter:
    """A swap engine that paints every face white; sleeps on chosen calls (all of them when `slow_on` is None: a
    slow engine) and raises on others."""

    def __init__(
        self, delay_s: float = 0.0, slow_on: frozenset[int] | None = None, fail_on: frozenset[int] = frozenset()
    ) -> None:
        self.calls = 0
        self.delay_s, self.slow_on, self.fail_on = delay_s, slow_on, fail_on

    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        i = self.calls
        self.calls += 1
        if self.delay_s and (self.slow_on is None or i in self.slow_on):
            time.sleep(self.delay_s)
        if i in self.fail_on:
            raise RuntimeError("injected failure")
        return torch.ones_like(crops)


class FakeCamera(MediaStreamTrack):
    """Real-time video of one RGB image (like aiortc's VideoStreamTrack), yuv420p as decoded; ends after `frames`."""

    kind = "video"

    def __init__(self, image: np.ndarray, frames: int, fps: float = 30.0) -> None:
        super().__init__()
        self.image, self.frames, self.fps = image, frames, fps
        self.sent: list[int] = []
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        k = len(self.sent)
        if k >= self.frames or self.readyState != "live":
            self.stop()
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        await asyncio.sleep(max(0.0, self._start + k / self.fps - time.monotonic()))
        frame = av.VideoFrame.from_ndarray(self.image, format="rgb24").reformat(format="yuv420p")
        frame.pts, frame.time_base = k * TICKS_30FPS, VIDEO_TIME_BASE
        self.sent.append(frame.pts)
        return frame


def swapped_regions(placed: list[faces.PlacedFace], width: int, height: int) -> list[np.ndarray]:
    """Boolean masks of each fully visible face's swapped region (the blend mask's core, pasted back)."""
    lm = torch.tensor(np.stack([p.landmarks for p in placed if p.inside]), dtype=torch.float64)
    return [
        cv2.warpAffine(build_mask(256), m, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP) > 0.9
        for m in estimate_norm(lm, 256).numpy()
    ]
