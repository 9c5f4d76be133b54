"""One frame in, one swapped frame out: detect (every N frames) → track and smooth → choose faces → align → swap →
paste back. This is the synchronous core that file mode and the live worker drive; it never touches asyncio.

Fail closed: with swapping on and a face being tracked, the output never shows that face unswapped. When the swap
engine fails (raises, or returns something that is not a finite batch of crops), each face gets its own last swapped
crop if it is recent, else its region is pixelated; every such event is counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np
import torch

from engines.align import estimate_norm
from engines.detect import FaceDetector, image_tensor
from engines.errors import ConfigError
from engines.facedancer import FaceDancer
from realtime import warp_cpu
from realtime.face_choice import FaceChoice, choose_faces
from realtime.masks import MaskSpec, build_mask
from realtime.tracking import FaceTracker

log = logging.getLogger(__name__)


class SwapEngine(Protocol):
    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) float crops in [-1, 1] → swapped crops, same shape, in [-1, 1]."""
        ...


class IdentitySwap:
    """Returns each aligned crop unchanged: shows alignment and blending at work without any weights."""

    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        return crops


class FaceDancerSwap:
    """FaceDancer with one source identity: `w` is mapped once, here, not per frame."""

    def __init__(self, model: FaceDancer, z_id: torch.Tensor, dtype: torch.dtype = torch.float32) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.dtype = dtype
        with torch.inference_mode():
            self.w = model.map_identity(z_id.reshape(1, -1).to(self.device, dtype))

    @torch.inference_mode()
    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        out = self.model(crops.to(self.device, self.dtype), self.w)
        return out.clamp_(-1.0, 1.0).to(crops.dtype)  # linear output, treated as [-1, 1]


@dataclass(slots=True)
class PipelineConfig:
    swap: bool = True
    detect_every: int = 5  # frames between detections; tracking carries the faces in between
    choice: FaceChoice = field(default_factory=FaceChoice)
    mask: MaskSpec = field(default_factory=MaskSpec)
    colour_transfer: bool = False  # match each swapped face's Lab mean/std to the target face under the mask
    crop_size: int = 256
    repeat_frames: int = 15  # how long a face's last swapped crop may stand in for a failed swap

    def __post_init__(self) -> None:
        if not 1 <= self.detect_every <= 120:
            raise ConfigError(f"detection interval must be 1..120 frames, got {self.detect_every}")
        if self.crop_size not in (128, 256, 512):
            raise ConfigError(f"crop size must be 128, 256 or 512, got {self.crop_size}")


@dataclass(slots=True)
class FrameResult:
    frame: np.ndarray  # (H, W, 3) uint8 RGB
    faces: int  # faces swapped (or hidden) in this frame
    fail_closed: bool
    detected: bool  # whether the detector ran on this frame
    stages_ms: dict[str, float]


@dataclass(slots=True)
class _Remembered:
    crop: np.ndarray  # (3, S, S) last good swapped crop of a track
    frame_index: int


class FramePipeline:
    """The CPU path of the per-frame pipeline (OpenCV warps, torch networks)."""

    def __init__(
        self,
        detector: FaceDetector,
        engine: SwapEngine,
        config: PipelineConfig | None = None,
        tracker: FaceTracker | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.detector = detector
        self.engine = engine
        self.config = config or PipelineConfig()
        self.tracker = tracker or FaceTracker()
        self.clock = clock
        self.frame_index = 0
        self.fail_closed_events = 0
        self._memory: dict[int, _Remembered] = {}

    def process(self, frame: np.ndarray, t: float | None = None) -> FrameResult:
        """Swap the chosen faces of one (H, W, 3) uint8 RGB frame; `t` is its timestamp in seconds."""
        cfg = self.config
        t = self.clock() if t is None else t
        stages: dict[str, float] = {}
        index = self.frame_index
        self.frame_index += 1
        out = np.array(frame, copy=True)
        if not cfg.swap:
            return FrameResult(out, 0, False, False, stages)

        tick = time.perf_counter()
        detect = index % cfg.detect_every == 0 or not self.tracker.tracks
        if detect:
            detections = self.detector(image_tensor(frame, self.detector.device))
            stages["detect"] = _ms(tick)
            tick = time.perf_counter()
            tracks = self.tracker.update(detections, t)
        else:
            tracks = self.tracker.predict(t)
        stages["track"] = _ms(tick)
        if not tracks:
            return FrameResult(out, 0, False, detect, stages)

        tick = time.perf_counter()
        chosen = [tracks[i] for i in choose_faces(np.stack([tr.box for tr in tracks]), cfg.choice)]
        landmarks = torch.as_tensor(np.stack([tr.landmarks for tr in chosen]), dtype=torch.float64)
        matrices = estimate_norm(landmarks, cfg.crop_size).numpy()
        crops = warp_cpu.align_faces(frame, matrices, cfg.crop_size)
        stages["align"] = _ms(tick)

        tick = time.perf_counter()
        swapped, failed = self._swap(crops, [tr.id for tr in chosen], index)
        stages["swap"] = _ms(tick)

        tick = time.perf_counter()
        warp_cpu.paste_faces(out, swapped, matrices, build_mask(cfg.crop_size, cfg.mask))
        stages["paste"] = _ms(tick)
        return FrameResult(out, len(chosen), failed, detect, stages)

    def _swap(self, crops: np.ndarray, ids: list[int], index: int) -> tuple[np.ndarray, bool]:
        try:
            result = self.engine(torch.from_numpy(crops))
            swapped = result.detach().float().cpu().numpy() if isinstance(result, torch.Tensor) else None
            if swapped is None or swapped.shape != crops.shape or not np.isfinite(swapped).all():
                raise ValueError(f"swap engine returned {type(result).__name__} of an unusable shape or value")
        except Exception as e:  # fail closed whatever the engine raised: never paste the real face
            self.fail_closed_events += 1
            log.warning("swap failed on frame %d (%s): faces repeated or hidden", index, e)
            return self._stand_ins(crops, ids, index), True
        for track_id, crop in zip(ids, swapped, strict=True):
            self._memory[track_id] = _Remembered(crop, index)
        self._forget(index)
        return swapped, False

    def _stand_ins(self, crops: np.ndarray, ids: list[int], index: int) -> np.ndarray:
        out = np.empty_like(crops)
        for i, track_id in enumerate(ids):
            remembered = self._memory.get(track_id)
            if remembered is not None and index - remembered.frame_index <= self.config.repeat_frames:
                out[i] = remembered.crop
            else:
                out[i] = pixelate(crops[i])
        return out

    def _forget(self, index: int) -> None:
        stale = [k for k, v in self._memory.items() if index - v.frame_index > self.config.repeat_frames]
        for k in stale:
            del self._memory[k]


def pixelate(crop: np.ndarray, cells: int = 8) -> np.ndarray:
    """A (3, S, S) crop reduced to `cells` x `cells` blocks: the face region stays, the identity does not."""
    hwc = np.ascontiguousarray(crop.transpose(1, 2, 0))
    small = cv2.resize(hwc, (cells, cells), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, hwc.shape[1::-1], interpolation=cv2.INTER_NEAREST).transpose(2, 0, 1)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3
