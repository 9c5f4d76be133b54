"""The file-mode run: each scene's lossless file through `realtime.files.swap` (`build_pipeline` + `swap_file`, what
`dancecam swap` runs) into an H.264 .mp4 as users get it, the output decoded and scored frame by frame."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace

from benchmarks.privacy.clips import Clip, SceneScore, score
from benchmarks.privacy.leaks import luma
from realtime.files.swap import SwapOptions, build_pipeline, swap_file
from realtime.pipeline.frame import FrameResult
from realtime.pipeline.video import Frame


def has_option(name: str) -> bool:
    """Whether file mode has this option on this branch (`detect_on_change` arrives with the integrator's work)."""
    return name in {f.name for f in dataclasses.fields(SwapOptions)}


def swap_options(engine: str, style: str, interval: int, on_change: bool | None) -> SwapOptions:
    """The options of one run; `on_change` None leaves the change check at its default (or absent)."""
    values: dict[str, Any] = {"engine": engine, "style": style, "detect_every": interval, "overwrite": True}
    if on_change is not None:
        values["detect_on_change"] = on_change
    return SwapOptions(**values)


@dataclass
class FrameLog:
    """Per frame of a run: the pipeline's wall time, and what it did."""

    ms: list[float] = field(default_factory=list)
    detected: list[bool] = field(default_factory=list)
    hidden: list[int] = field(default_factory=list)  # faces swapped or hidden in the frame
    entry_detections: int = 0  # detections the change check started between the periodic ones


class TimedPipeline:
    """A `FramePipeline` that notes the wall time and the result of every `process` call (what swap_file needs of
    a pipeline: `process` and `fail_closed_events`)."""

    def __init__(self, inner: Any, log: FrameLog) -> None:
        self.inner, self.log = inner, log

    def process(self, frame: Frame, t: float | None = None) -> FrameResult:
        start = time.perf_counter()
        result = self.inner.process(frame, t)
        self.log.ms.append((time.perf_counter() - start) * 1e3)
        self.log.detected.append(result.detected)
        self.log.hidden.append(result.faces)
        return result

    @property
    def fail_closed_events(self) -> int:
        return self.inner.fail_closed_events


def decode_luma(path: Path) -> list[np.ndarray]:
    """Every frame of a file-mode output as uint8 luma, read as a player would (BT.601, limited range at 480p)."""
    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            rgb = frame.to_ndarray(format="rgb24", src_colorspace=Colorspace.ITU601, src_color_range=ColorRange.MPEG)
            out.append(luma(rgb).astype(np.uint8))
    return out


@dataclass
class SceneRun:
    score: SceneScore
    log: FrameLog
    notes: list[str]
    seconds: float


def run_scene(clip: Clip, options: SwapOptions, source: list[tuple[Path, float]] | None = None) -> SceneRun:
    """One scene through file mode with `options`: a fresh pipeline per scene (a file is a new shot)."""
    start = time.perf_counter()
    sources = source or []
    pipeline, notes = build_pipeline(sources, options)
    log = FrameLog()
    try:
        with tempfile.TemporaryDirectory(prefix="privacy-out-") as tmp:
            output = Path(tmp) / f"{clip.name}.mp4"
            report = swap_file(sources, clip.path, output, options, pipeline=TimedPipeline(pipeline, log))  # type: ignore[arg-type]
            frames = decode_luma(output)
        log.entry_detections = int(pipeline.counters().get("entry_detections", 0))
    finally:
        pipeline.close()
    if len(frames) != clip.scene.frames:
        notes.append(f"{clip.name}: {len(frames)} output frames for {clip.scene.frames} input frames")
    notes += [n for n in report.notes if n not in notes]
    scored = score(clip, dict(enumerate(frames[: clip.scene.frames])))
    return SceneRun(scored, log, notes, time.perf_counter() - start)
