"""One frame in, one swapped frame out: upload → detect (every N frames) → track and smooth → choose faces →
align → swap → colour transfer (optional) → paste back → download. This is the synchronous core that file mode and
the live worker drive; it never touches asyncio.

Design notes: docs/design-notes.md, section realtime/pipeline/frame.py.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from engines import registry
from engines.arcface import MODEL_NAME as ARCFACE
from engines.arcface import ArcFace
from engines.detect import Detections, FaceDetector, image_tensor
from engines.errors import ConfigError
from engines.facedancer import MODEL_NAME as FACEDANCER
from engines.facedancer import FaceDancer
from engines.runners.base import Runner, facedancer_io
from realtime.pipeline import warp
from realtime.pipeline.anonymize import FaceAnonymizer
from realtime.pipeline.badge import Badge, BadgeOverlay
from realtime.pipeline.choices import (
    DEFAULT_DETECT_EVERY,
    DEFAULT_DETECT_ON_CHANGE,
    DEFAULT_STYLE,
    DETECT_EVERY_RANGE,
    STYLES,
    AnonymizeStyle,
)
from realtime.pipeline.colour import colour_transfer, rgb_to_yuv420p, yuv420p_to_rgb
from realtime.pipeline.context import DeviceContext
from realtime.pipeline.crops import CropFraming, engine_framing, pixelate
from realtime.pipeline.draw import draw_boxes_rgb, draw_boxes_yuv
from realtime.pipeline.entry import EntryCheck
from realtime.pipeline.face_choice import FaceChoice, choose_faces
from realtime.pipeline.masks import MaskSpec
from realtime.pipeline.profiler import FrameRecord, Profiler
from realtime.pipeline.tracking import FaceTracker, Track
from realtime.pipeline.video import Frame

log = logging.getLogger(__name__)


class SwapEngine(Protocol):
    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) float crops in [-1, 1] → swapped crops, same shape, in [-1, 1]."""
        ...


class IdentitySwap:
    """Returns each aligned crop unchanged: shows alignment and blending at work without any weights."""

    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        return crops


class SimulatedCost:
    """Another engine plus `ms` milliseconds of waiting per call (`--simulate-ms`): overload on demand, for demos and
    tests of dropping, repeating and degradation on a fast machine."""

    def __init__(self, engine: SwapEngine, ms: float) -> None:
        if not 0 <= ms <= 10_000:  # also rejects NaN
            raise ConfigError(f"--simulate-ms must be 0..10000 milliseconds, got {ms}")
        self.engine = engine
        self.ms = ms

    @property
    def framing(self) -> CropFraming:
        return engine_framing(self.engine)

    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        time.sleep(self.ms / 1000.0)
        return self.engine(crops)

    def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()


class FaceDancerSwap:
    """FaceDancer with one source identity: `w` is mapped once, here, not per frame; the generator runs on `runner`.

    Without a runner it runs eager fp32 on the model's device. Batches beyond the runner's largest (8) are split.
    """

    def __init__(
        self, model: FaceDancer, z_id: torch.Tensor, runner: Runner | None = None, w: torch.Tensor | None = None
    ) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        if w is not None:  # mapped once per identity by its owner (realtime.identity.source), shared by sessions
            self.w = w.reshape(1, -1).to(self.device, torch.float32)
        else:
            with torch.inference_mode():
                z = z_id.reshape(1, -1).to(self.device, next(model.parameters()).dtype)
                self.w = model.map_identity(z).float()
        if runner is None:
            from engines.runners.eager import EagerRunner

            runner = EagerRunner(model, facedancer_io(model.config.mapping_width), self.device)
        self.runner = runner
        self.w = self.w.to(runner.device)
        if self.w.is_cuda:
            # made on this thread's current stream, read on the pipeline's, which nothing orders after it: one
            # wait per source identity (never per frame)
            torch.cuda.current_stream(self.w.device).synchronize()

    def with_source(self, z_id: torch.Tensor, w: torch.Tensor | None = None) -> FaceDancerSwap:
        """The same generator and runner (no new compile or capture) with another source identity."""
        return FaceDancerSwap(self.model, z_id, self.runner, w=w)

    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        runner = self.runner
        chunks = []
        for chunk in crops.split(runner.io.max_batch):
            feeds = {"target": chunk.to(runner.device, torch.float32), "w": self.w.expand(chunk.shape[0], -1)}
            chunks.append(runner.infer(feeds)["swapped"])
        out = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        return out.clamp(-1.0, 1.0).to(crops.device, crops.dtype)  # linear output, treated as [-1, 1]

    def close(self) -> None:
        self.runner.close()


class FaceEmbedder(Protocol):
    def __call__(self, crops: torch.Tensor) -> np.ndarray:
        """(N, 3, 112, 112) crops in [-1, 1] aligned to the ArcFace template → (N, 512) embeddings on the host."""
        ...


class ArcFaceEmbedder:
    """ArcFace on target faces, for reference-person face choice (runs on detection frames only)."""

    def __init__(self, arcface: ArcFace) -> None:
        self.arcface = arcface.eval()
        self.device = next(arcface.parameters()).device
        # crops come normalised for FaceDancer, (x - m) / s; ArcFace takes (x - m') / s': both from the registry.
        # (c + (m - m') / s) * (s / s') maps one to the other: (c + 1) * 0.5, [-1, 1] to [0, 1]
        crop, net = registry.data_config(FACEDANCER), registry.data_config(ARCFACE)
        self._offset, self._gain = (crop.mean - net.mean) / crop.std, crop.std / net.std

    @torch.inference_mode()
    def __call__(self, crops: torch.Tensor) -> np.ndarray:
        x = (crops.to(self.device, torch.float32) + self._offset) * self._gain
        return self.arcface(x).float().cpu().numpy()


@dataclass(slots=True)
class PipelineConfig:
    swap: bool = True
    detect_every: int = DEFAULT_DETECT_EVERY  # frames between detections; tracking carries the faces in between
    choice: FaceChoice = field(default_factory=FaceChoice)
    mask: MaskSpec = field(default_factory=MaskSpec)
    colour_transfer: bool = False  # match each swapped face's Lab mean/std to the target face under the mask
    crop_size: int = field(default_factory=lambda: registry.data_config(FACEDANCER).input_size)
    repeat_frames: int = 15  # how long a face's last swapped crop may stand in for a failed swap
    detect_scale: float = 1.0  # the detector sees the frame resized by this factor (cheaper, misses small faces)
    draw_boxes: bool = False  # outline the tracked faces in the output (green: swapped), to see what is tracked
    # between scheduled detections, detect on any frame where something changed outside the tracked faces: a face
    # coming in is then never shown before a detection has seen it (realtime/pipeline/entry.py)
    detect_on_change: bool = DEFAULT_DETECT_ON_CHANGE
    # the faces not chosen (face mode largest or reference, or past max_faces) hidden as the anonymize engine would:
    # only the chosen faces are swapped and nobody else is shown
    hide_bystanders: bool = False
    bystander_style: AnonymizeStyle = DEFAULT_STYLE
    badge: Badge | None = None  # a visible "altered video" mark on every output frame; None: none

    def __post_init__(self) -> None:
        lo, hi = DETECT_EVERY_RANGE
        if not lo <= self.detect_every <= hi:
            raise ConfigError(f"detection interval must be {lo}..{hi} frames, got {self.detect_every}")
        if not 0.25 <= self.detect_scale <= 1.0:  # also rejects NaN
            raise ConfigError(f"detection scale must be between 0.25 and 1.0 of the frame, got {self.detect_scale}")
        if self.bystander_style not in STYLES:
            raise ConfigError(f"bystander style must be one of {', '.join(STYLES)}, got {self.bystander_style!r}")
        if self.crop_size not in (128, 256, 512):
            raise ConfigError(f"crop size must be 128, 256 or 512, got {self.crop_size}")


@dataclass(slots=True)
class FrameResult:
    frame: Frame  # the output: the input's format, pts and time base
    faces: int  # faces swapped (or hidden) in this frame
    fail_closed: bool  # some face of this frame was repeated or hidden instead of swapped
    detected: bool  # whether the detector ran on this frame
    stages_ms: dict[str, float]  # host wall time per stage (on CUDA: time to queue, except the waits)
    found: int | None = None  # faces the detector found on this frame (None: it did not run)
    tracked: int = 0  # faces the tracker follows in this frame


@dataclass(slots=True)
class _Remembered:
    crop: torch.Tensor  # (3, S, S) last good swapped crop of a track, on the device
    frame_index: int


class FramePipeline:
    """The per-frame pipeline on the context's device (CUDA or CPU)."""

    def __init__(
        self,
        detector: FaceDetector,
        engine: SwapEngine,
        config: PipelineConfig | None = None,
        tracker: FaceTracker | None = None,
        context: DeviceContext | None = None,
        profiler: Profiler | None = None,
        embedder: FaceEmbedder | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.config = config or PipelineConfig()
        if self.config.choice.needs_embeddings and embedder is None:
            raise ConfigError("face mode 'reference' needs ArcFace to compare faces: load it and pass an embedder")
        self.detector = detector
        self.engine = engine
        self.tracker = tracker or FaceTracker()
        self.entry = EntryCheck()
        self.context = context or DeviceContext(getattr(detector, "device", "cpu"))
        self.profiler = profiler or Profiler(self.context.device)
        self.embedder = embedder
        # where the landmarks go in the swap crop and in ArcFace's, from the networks' registry entries
        self.crop_data, self.embed_data = registry.data_config(FACEDANCER), registry.data_config(ARCFACE)
        self.clock = clock
        self.frame_index = 0
        self.fail_closed_events = 0
        self.swap_errors = 0  # engine calls that raised or gave the wrong shape (faces shown as stand-ins)
        self._memory: dict[int, _Remembered] = {}
        self._embeddings: dict[int, np.ndarray] = {}  # per track, from its last detection (reference mode)
        self._resolution: tuple[int, int] | None = None
        self._hiders: dict[AnonymizeStyle, FaceAnonymizer] = {}  # for the bystanders, one per style asked for
        self.badges = BadgeOverlay()

    def process(self, frame: Frame, t: float | None = None) -> FrameResult:
        """Swap the chosen faces of one frame; `t` is its timestamp in seconds for the tracker (default: the frame's
        pts in seconds, else the clock). The result's frame has the input's format, pts and time base.

        A yuv420p frame is converted on the device; only the faces' boxes are converted back, so every other pixel
        leaves exactly as it came in.
        """
        if not isinstance(frame, Frame):
            raise TypeError(f"FramePipeline.process takes a realtime.pipeline.video.Frame, got {type(frame).__name__}")
        return self._process(frame, frame.time if t is None else t)

    def counters(self) -> dict[str, int]:
        """This pipeline's event counts (fail-closed frames, detections, swaps...): a copy, for observers."""
        return self.profiler.counters()

    def _process(self, frame: Frame, t: float | None) -> FrameResult:
        cfg = self.config
        yuv = frame.format == "yuv420p"
        t = self.clock() if t is None else t
        index = self.frame_index
        self.frame_index += 1
        if not cfg.swap:
            out_frame = frame.copy()
            if cfg.badge is not None:  # the user asked for the mark on this stream, swapped or not
                self._draw_badge(torch.from_numpy(out_frame.data), yuv, cfg.badge)  # on the host: no upload
            return FrameResult(out_frame, 0, False, False, {})
        stages: dict[str, float] = {}
        ctx = self.context
        with ctx.activate():  # the profiler's frame events go on the frame's stream too
            record = self.profiler.frame()
            with _stage(record, stages, "upload"):
                staged = ctx.upload(frame.data)
            if yuv:
                with _stage(record, stages, "to_rgb"):
                    planes = _split_planes(staged)
                    frame_t = yuv420p_to_rgb(*planes)
            else:
                frame_t = staged
            height, width = frame_t.shape[:2]
            if self._resolution != (height, width):  # new resolution: old positions mean nothing
                self._resolution = (height, width)
                self.tracker.reset()
                self.entry.reset()
                self._memory.clear()
                self._embeddings.clear()
            detect = index % cfg.detect_every == 0 or not self.tracker.tracks
            entered = False
            if detect:
                with _stage(record, stages, "detect"):
                    detections = detect_scaled(self.detector, frame_t, cfg.detect_scale)
                with _stage(record, stages, "track"):
                    tracks = self.tracker.update(detections, t)
            else:
                with _stage(record, stages, "track"):
                    tracks = self.tracker.predict(t)
                if cfg.detect_on_change:
                    with _stage(record, stages, "entry"):
                        seen = {tr.id: tr.box for tr in self.tracker.tracks}  # where the last detections saw them
                        region = self.entry.changed(
                            frame_t, [tr.box for tr in tracks], frame.drawn_over, [seen[tr.id] for tr in tracks]
                        )
                        if region is not None:
                            found = detect_region(self.detector, frame_t, region, tracks, cfg.detect_scale)
                            # refreshes the faces it saw, adds the new ones; a track it did not see is kept as it was
                            tracks = self.tracker.update(found, t, count_misses=False)
                            entered = True
            if detect or entered:
                if self.embedder is not None and tracks:
                    self._embed(frame_t, tracks)
                self.entry.remember(frame_t, [tr.box for tr in tracks])
            chosen = self._choose(tracks)
            framing = engine_framing(self.engine)
            good: torch.Tensor | None = None
            all_failed = False
            if chosen:
                with _stage(record, stages, "align"):
                    landmarks = [tr.landmarks for tr in chosen]
                    matrices = warp.face_matrices(landmarks, cfg.crop_size, self.crop_data.template, framing.zoom)
                    boxes = warp.face_boxes(matrices, cfg.crop_size, width, height)
                    geometry = warp.upload_geometry(matrices, boxes, frame_t.device)  # one copy for align and paste
                    crops = warp.align(frame_t, matrices, cfg.crop_size, geometry=geometry)
                    mask = ctx.mask(cfg.crop_size, framing.mask or cfg.mask)
                with _stage(record, stages, "swap"):
                    swapped, good = self._swap(crops, [tr.id for tr in chosen], index)
                    all_failed = good is None
                if cfg.colour_transfer and framing.colour_transfer:
                    with _stage(record, stages, "colour"):
                        swapped = colour_transfer(swapped, crops, mask)
                with _stage(record, stages, "paste"):
                    before = _box_pixels(frame_t, boxes) if yuv else []
                    warp.paste(frame_t, swapped, matrices, mask, boxes, geometry)
                good_host = good.to("cpu", non_blocking=True) if good is not None else None
                if yuv:
                    with _stage(record, stages, "to_yuv"):
                        _write_boxes_yuv(frame_t, planes, boxes, before)
            chosen_ids = {tr.id for tr in chosen}
            # a hiding engine hides every face (its face mode and max_faces only say which go through the engine)
            hide_rest = cfg.hide_bystanders or framing.hides
            bystanders = [tr for tr in tracks if tr.id not in chosen_ids] if hide_rest else []
            if bystanders:
                with _stage(record, stages, "hide"):
                    hider = self.engine if framing.hides else self._hider(cfg.bystander_style)  # the engine's own style
                    self._hide(frame_t, planes if yuv else None, bystanders, hider)
            if cfg.draw_boxes and tracks:
                boxes_xy = [tr.box for tr in tracks]
                done = [tr.id in chosen_ids for tr in tracks]
                if yuv:
                    draw_boxes_yuv(planes, boxes_xy, done)
                else:
                    draw_boxes_rgb(frame_t, boxes_xy, done)
            if cfg.badge is not None:  # last: over everything else, on every frame
                with _stage(record, stages, "badge"):
                    self._draw_badge(staged, yuv, cfg.badge)
            with _stage(record, stages, "download"):
                out = ctx.download(staged)
            record.finish()
        failed = False
        if chosen:
            # the download has waited for the frame: `good` is on the host now, at no further cost
            ok = [False] * len(chosen) if good_host is None else good_host.tolist()
            failed = all_failed or not all(ok)
            with ctx.activate():  # on the frame's stream, which the next frame's reads of the memory follow
                for i, (track, fine) in enumerate(zip(chosen, ok, strict=True)):
                    if fine:  # a copy: a view would keep the frame's whole batch of crops alive
                        self._memory[track.id] = _Remembered(swapped[i].clone(), index)
            if failed:
                self.fail_closed_events += 1
                self.profiler.count("fail_closed")
        self._forget(index)  # every frame: a face that left stops holding its crop
        if detect:
            self.profiler.count("detections")
            self.profiler.count("faces_detected", len(detections))
        if entered:
            self.profiler.count("entry_detections")
        self.profiler.count("faces_swapped", len(chosen))
        if bystanders:
            self.profiler.count("bystanders_hidden", len(bystanders))
        found = len(detections) if detect else None
        return FrameResult(frame.with_data(out), len(chosen), failed, detect, stages, found, len(tracks))

    def _draw_badge(self, data: torch.Tensor, yuv: bool, badge: Badge) -> None:
        """Blend the badge into a frame's pixels in place: (H, W, 3) RGB, or packed yuv420p planes."""
        if yuv:
            self.badges.draw_yuv(_split_planes(data), badge)
        else:
            self.badges.draw_rgb(data, badge)

    def _choose(self, tracks: list[Track]) -> list[Track]:
        if not tracks:
            return []
        boxes = np.stack([tr.box for tr in tracks])
        embeddings = None
        if self.config.choice.needs_embeddings:
            known = [tr for tr in tracks if tr.id in self._embeddings]
            if not known:
                return []
            tracks, boxes = known, np.stack([tr.box for tr in known])
            embeddings = np.stack([self._embeddings[tr.id] for tr in known])
        return [tracks[i] for i in choose_faces(boxes, self.config.choice, embeddings)]

    def _hider(self, style: AnonymizeStyle) -> FaceAnonymizer:
        return self._hiders.get(style) or self._hiders.setdefault(style, FaceAnonymizer(style))

    def _hide(
        self,
        frame_t: torch.Tensor,
        planes: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
        tracks: list[Track],
        hider: SwapEngine,
    ) -> None:
        """Hide the faces of `tracks` (the ones not chosen) with `hider`, a hiding engine, through the same paste."""
        size = self.config.crop_size
        height, width = frame_t.shape[:2]
        framing = engine_framing(hider)
        matrices = warp.face_matrices([tr.landmarks for tr in tracks], size, self.crop_data.template, framing.zoom)
        boxes = warp.face_boxes(matrices, size, width, height)
        geometry = warp.upload_geometry(matrices, boxes, frame_t.device)
        crops = warp.align(frame_t, matrices, size, geometry=geometry)
        mask = self.context.mask(size, framing.mask or self.config.mask)
        before = _box_pixels(frame_t, boxes) if planes is not None else []
        warp.paste(frame_t, hider(crops), matrices, mask, boxes, geometry)
        if planes is not None:
            _write_boxes_yuv(frame_t, planes, boxes, before)

    def _embed(self, frame_t: torch.Tensor, tracks: list[Track]) -> None:
        assert self.embedder is not None
        size = self.embed_data.input_size
        matrices = warp.face_matrices([tr.landmarks for tr in tracks], size, self.embed_data.template)
        crops = warp.align(frame_t, matrices, size)
        vectors = self.embedder(crops)
        self._embeddings = {tr.id: v for tr, v in zip(tracks, vectors, strict=True)}

    def _swap(self, crops: torch.Tensor, ids: list[int], index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Swapped crops with stand-ins for failed faces, and the per-face success flags (None: all failed)."""
        try:
            result = self.engine(crops)
            if not isinstance(result, torch.Tensor) or result.shape != crops.shape:
                shape = tuple(result.shape) if isinstance(result, torch.Tensor) else type(result).__name__
                raise ValueError(f"swap engine returned {shape}, expected {tuple(crops.shape)}")
        except Exception as e:  # fail closed whatever the engine raised: never paste the real face
            self.swap_errors += 1
            self.profiler.count("swap_errors")
            if self.swap_errors <= 3 or self.swap_errors % 300 == 0:  # a dead engine would log at the frame rate
                log.warning(
                    "swap failed on frame %d (%s): faces repeated or hidden (%d so far)", index, e, self.swap_errors
                )
            return self._stand_ins(crops, ids, index), None
        result = result.to(crops.device, crops.dtype)
        good = torch.isfinite(result).flatten(1).all(1)
        if crops.device.type == "cpu" and bool(good.all()):  # reading it costs nothing on the host
            return result, good
        # on CUDA the choice stays on the device (no sync): stand-ins are made every frame, cheaply
        return torch.where(good[:, None, None, None], result, self._stand_ins(crops, ids, index)), good

    def _stand_ins(self, crops: torch.Tensor, ids: list[int], index: int) -> torch.Tensor:
        """Per face: its last good swap when recent enough, else its own crop pixelated."""
        hidden = pixelate(crops)
        recent = [self._memory.get(i) for i in ids]
        if not any(r is not None and index - r.frame_index <= self.config.repeat_frames for r in recent):
            return hidden
        return torch.stack(
            [
                r.crop if r is not None and index - r.frame_index <= self.config.repeat_frames else hidden[k]
                for k, r in enumerate(recent)
            ]
        )

    def _forget(self, index: int) -> None:
        stale = [k for k, v in self._memory.items() if index - v.frame_index > self.config.repeat_frames]
        for k in stale:
            del self._memory[k]

    def close(self) -> None:
        """Release device memory (the session has ended), the engine's runner included."""
        self._memory.clear()
        self.badges.clear()
        close_engine = getattr(self.engine, "close", None)
        if close_engine is not None:
            close_engine()
        self.context.close()


def detect_scaled(detector: FaceDetector, frame: torch.Tensor, scale: float = 1.0) -> Detections:
    """Faces of an (H, W, 3) uint8 frame, the detector run on it area-resized by `scale` on the detector's device;
    boxes and landmarks come back in full-frame pixels (pixel centres at integer coordinates)."""
    image = image_tensor(frame, detector.device)
    if scale >= 1.0:
        return detector(image)
    h, w = image.shape[:2]
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    # area averaging antialiases, needs no weights and runs on CPU and CUDA alike
    small = F.interpolate(image.permute(2, 0, 1)[None].float(), size=(sh, sw), mode="area")
    small = small[0].add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()
    found = detector(small)
    rx, ry = w / sw, h / sh  # per axis, the exact ratio of the rounded sizes
    boxes = _to_full(found.boxes.reshape(-1, 2, 2), rx, ry).reshape(-1, 4)
    return Detections(boxes, found.scores, _to_full(found.landmarks, rx, ry))


ENTRY_AREA = 0.25  # an entry detection costs at most about this share of a full one: a larger region is downscaled


def detect_region(
    detector: FaceDetector, frame: torch.Tensor, region: tuple[int, int, int, int], tracks: list[Track], scale: float
) -> Detections:
    """The faces in `region` (x0, y0, x1, y1) of an (H, W, 3) frame, in full-frame pixels. The region first takes in
    every tracked face box it touches, so that no face it holds is cut by its edge (a cut face is a bad detection, or
    none). It is detected at full resolution (or `scale`) up to `ENTRY_AREA` of the frame, larger ones at down to
    half: faces of 40 px and up are found wherever they come in."""
    height, width = frame.shape[:2]
    x0, y0, x1, y1 = region
    for box in [tr.box for tr in tracks]:
        if box[0] < x1 and box[2] > x0 and box[1] < y1 and box[3] > y0:
            x0, y0 = max(0, min(x0, math.floor(box[0]) - 2)), max(0, min(y0, math.floor(box[1]) - 2))
            x1, y1 = min(width, max(x1, math.ceil(box[2]) + 2)), min(height, max(y1, math.ceil(box[3]) + 2))
    share = (x1 - x0) * (y1 - y0) / (frame.shape[0] * frame.shape[1])
    scale = min(scale, math.sqrt(min(1.0, ENTRY_AREA / share)))
    found = detect_scaled(detector, frame[y0:y1, x0:x1].contiguous(), scale)
    boxes, landmarks = found.boxes.clone(), found.landmarks.clone()  # shifted by scalars: no copy to the device
    boxes[:, 0::2] += x0
    boxes[:, 1::2] += y0
    landmarks[..., 0] += x0
    landmarks[..., 1] += y0
    return Detections(boxes, found.scores, landmarks)


def _to_full(xy: torch.Tensor, rx: float, ry: float) -> torch.Tensor:
    """(..., 2) points of a resized image in the original's pixels; centres at integers: (x + 0.5) * r - 0.5."""
    return torch.stack(((xy[..., 0] + 0.5) * rx - 0.5, (xy[..., 1] + 0.5) * ry - 0.5), -1)


def _split_planes(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views of Y (H, W), U and V (H/2, W/2) inside packed (H * 3 / 2, W) yuv420p planes."""
    h, w = 2 * packed.shape[0] // 3, packed.shape[1]
    flat = packed.view(-1)
    q = h * w // 4
    return (
        flat[: h * w].view(h, w),
        flat[h * w : h * w + q].view(h // 2, w // 2),
        flat[h * w + q :].view(h // 2, w // 2),
    )


def _even_box(box: warp.Box, width: int, height: int) -> tuple[int, int, int, int]:
    """A face box grown to even coordinates (whole 2x2 chroma blocks), inside the frame."""
    x0, y0 = box[0] - box[0] % 2, box[1] - box[1] % 2
    return x0, y0, min(width, box[2] + box[2] % 2), min(height, box[3] + box[3] % 2)


def _box_pixels(rgb: torch.Tensor, boxes: list[warp.Box | None]) -> list[torch.Tensor | None]:
    """Copies of the boxes' RGB before the paste: what `_write_boxes_yuv` compares against."""
    h, w = rgb.shape[:2]
    out: list[torch.Tensor | None] = []
    for box in boxes:
        if box is None:
            out.append(None)
            continue
        x0, y0, x1, y1 = _even_box(box, w, h)
        out.append(rgb[y0:y1, x0:x1].clone())
    return out


def _write_boxes_yuv(
    rgb: torch.Tensor,
    planes: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    boxes: list[warp.Box | None],
    before: list[torch.Tensor | None],
) -> None:
    """Write back into the yuv planes only what the paste changed: the luma of changed pixels and the chroma
    samples whose (1, 3, 3, 1) x (1, 1) support holds one. The rest of a box keeps its original samples: a YUV →
    RGB → YUV round trip is not the identity (limited-range clipping, chroma filtering), and would draw the box."""
    y, u, v = planes
    h, w = rgb.shape[:2]
    for box, old in zip(boxes, before, strict=True):
        if box is None or old is None:
            continue
        x0, y0, x1, y1 = _even_box(box, w, h)
        sub = rgb[y0:y1, x0:x1]
        changed = (sub != old).any(-1)  # (bh, bw)
        pairs = changed[:, 0::2] | changed[:, 1::2]  # (bh, bw / 2): the two columns of a chroma sample
        bh = pairs.shape[0]
        edge = torch.zeros_like(pairs[:1])
        padded = torch.cat((edge, pairs, edge))  # rows 2i-1 .. 2i+2 feed chroma row i, as in rgb_to_yuv420p
        blocks = padded[0:bh:2] | padded[1 : bh + 1 : 2] | padded[2 : bh + 2 : 2] | padded[3 : bh + 3 : 2]
        by, bu, bv = rgb_to_yuv420p(sub)
        ys, us, vs = y[y0:y1, x0:x1], u[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2], v[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2]
        ys.copy_(torch.where(changed, by, ys))
        us.copy_(torch.where(blocks, bu, us))
        vs.copy_(torch.where(blocks, bv, vs))


@contextlib.contextmanager
def _stage(record: FrameRecord, stages: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    with record.stage(name):
        yield
    stages[name] = (time.perf_counter() - start) * 1e3
