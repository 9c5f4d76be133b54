"""The scenes as lossless video files (FFV1, RGB, in Matroska) with what each frame's faces are, and the scoring of
any output frames against them: face-frames, leaks, and the independent detector's view of the same input."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from benchmarks.privacy.leaks import judge, luma
from benchmarks.privacy.reference import Found, ReferenceDetector
from benchmarks.privacy.scenes import FPS, FaceTruth, Scene, all_scenes, core_box
from realtime.bench.faces import visible_fraction
from realtime.pipeline.tracking import box_iou

MATCH_IOU = 0.3  # a reference detection is the composited face whose box it overlaps by at least this


@dataclass
class Clip:
    """One scene (by name and length: a clip crosses to worker processes, a scene's script would not) written to
    `path`, with the luma (uint8) and ground truth of every frame."""

    name: str
    seconds: float
    path: Path
    luma: list[np.ndarray]
    truths: list[list[FaceTruth]]
    reference: dict[int, Found] = field(default_factory=dict)  # frame -> what facenet-pytorch's MTCNN found

    @property
    def scene(self) -> Scene:
        return all_scenes(self.seconds)[self.name]

    def rgb_frames(self) -> list[np.ndarray]:
        """The frames again, decoded from the lossless file (bit-identical to what was rendered)."""
        with av.open(str(self.path)) as container:
            return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def write_clip(name: str, seconds: float, path: Path) -> Clip:
    """Render scene `name` into a lossless FFV1 file at 30 fps (what file mode reads), keeping luma and ground truth."""
    scene = all_scenes(seconds)[name]
    lumas, truths = [], []
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("ffv1", rate=Fraction(round(FPS)))
        stream.width, stream.height, stream.pix_fmt = 640, 480, "bgr0"
        for k in range(scene.frames):
            rgb, faces = scene.render(k)
            lumas.append(luma(rgb).astype(np.uint8))
            truths.append(faces)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="bgr0")
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return Clip(name, seconds, path, lumas, truths)


def find_reference(clip: Clip, detector: ReferenceDetector, every: int) -> dict[int, Found]:
    """facenet-pytorch's MTCNN on every `every`-th input frame (from the file: exactly what the pipeline reads)."""
    return {k: detector(rgb) for k, rgb in enumerate(clip.rgb_frames()) if k % every == 0}


def _reference_truth(box: np.ndarray, landmarks: np.ndarray, width: int, height: int) -> FaceTruth:
    """A reference detection as a face to judge: its own core, every pixel of it taken as the face's own."""
    core = core_box(box, landmarks)
    x0, y0 = max(0, int(np.floor(core[0]))), max(0, int(np.floor(core[1])))
    x1, y1 = min(width, int(np.ceil(core[2]))), min(height, int(np.ceil(core[3])))
    own = np.ones((max(0, y1 - y0), max(0, x1 - x0)), bool)
    return FaceTruth("reference", box, landmarks, visible_fraction(box, width, height), (x0, y0, x1, y1), own, 1.0)


@dataclass
class SceneScore:
    """Leaks of one scene in one run. Frames absent from `outputs` (dropped live) are not scored."""

    frames_scored: int = 0
    face_frames: int = 0
    leaked: int = 0
    leaks: list[tuple[int, str, float]] = field(default_factory=list)  # (frame, face, correlation)
    correlations: list[float] = field(default_factory=list)  # per face-frame, the highest cell correlation
    # by the independent ground truth: the reference's faces (>= 70 % inside) in the scored frames it ran on that
    # are a composited face (IoU >= MATCH_IOU), and apart from them its detections of no composited face (a false
    # positive on hair or background is "unchanged" wherever nothing hides it)
    reference_face_frames: int = 0
    reference_leaked: int = 0
    reference_stray: int = 0
    reference_stray_unchanged: int = 0

    def to_dict(self) -> dict:
        return {
            "frames_scored": self.frames_scored,
            "face_frames": self.face_frames,
            "leaked": self.leaked,
            "leaks": [[k, face, round(c, 3)] for k, face, c in self.leaks],
            "reference_face_frames": self.reference_face_frames,
            "reference_leaked": self.reference_leaked,
            "reference_stray": self.reference_stray,
            "reference_stray_unchanged": self.reference_stray_unchanged,
        }


def score(clip: Clip, outputs: dict[int, np.ndarray]) -> SceneScore:
    """Judge every face of every output frame (frame index -> luma uint8) against the clip's input."""
    from benchmarks.privacy.scenes import INSIDE_MIN

    result = SceneScore()
    for k, out in sorted(outputs.items()):
        result.frames_scored += 1
        a, b = clip.luma[k].astype(np.float32), out.astype(np.float32)
        if b.shape != a.shape:  # a live encoder that lowered the resolution: compare at the input's
            b = cv2.resize(b, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_LINEAR)
        for truth in clip.truths[k]:
            if not truth.counts:
                continue
            verdict = judge(a, b, truth)
            result.face_frames += 1
            result.correlations.append(verdict.correlation)
            if verdict.leaked:
                result.leaked += 1
                result.leaks.append((k, truth.face, verdict.correlation))
        found = clip.reference.get(k)
        if found is not None:
            h, w = a.shape
            known = np.array([t.box for t in clip.truths[k]], np.float64).reshape(-1, 4)
            for box, marks in zip(found.boxes, found.landmarks, strict=True):
                face = _reference_truth(box, marks, w, h)
                if face.inside < INSIDE_MIN:
                    continue
                unchanged = judge(a, b, face).leaked
                if len(known) and box_iou(box, known).max() >= MATCH_IOU:
                    result.reference_face_frames += 1
                    result.reference_leaked += unchanged
                else:
                    result.reference_stray += 1
                    result.reference_stray_unchanged += unchanged
    return result


def disagreements(clip: Clip) -> dict:
    """Where facenet-pytorch's MTCNN and the compositing disagree on the input: composited face-frames it missed,
    faces it found that the compositing does not count (under 70 % inside, or hidden), and detections that are
    no composited face at all."""
    missed, uncounted, stray = [], [], []
    checked = 0
    for k, found in sorted(clip.reference.items()):
        truths = clip.truths[k]
        boxes = np.array([t.box for t in truths], np.float64).reshape(-1, 4)
        iou = box_iou(found.boxes, boxes) if len(found.boxes) and len(boxes) else np.zeros((len(found.boxes), 0))
        for j, truth in enumerate(truths):
            if truth.counts:
                checked += 1
                if not (iou.shape[0] and iou[:, j].max() >= MATCH_IOU):
                    missed.append([k, truth.face, round(truth.inside, 2), round(truth.core_visible, 2)])
        for i in range(len(found.boxes)):
            j = int(iou[i].argmax()) if iou.shape[1] else -1
            if j < 0 or iou[i, j] < MATCH_IOU:
                stray.append([k, [round(float(v), 1) for v in found.boxes[i]], round(float(found.scores[i]), 3)])
            elif not truths[j].counts:
                t = truths[j]
                uncounted.append([k, t.face, round(t.inside, 2), round(t.core_visible, 2)])
    return {
        "frames_checked": len(clip.reference),
        "face_frames_checked": checked,
        "missed_by_reference": missed,
        "found_but_not_counted": uncounted,
        "found_no_composited_face": stray,
    }
