"""Scripted privacy scenes: real face photos cut out with a soft alpha and composited, frame by frame, onto a
textured background that holds no face; the ground truth of every frame comes from the compositing itself.

Faces: scikit-image's astronaut and three people of insightface's group photo `t1.jpg` (the photo is read from the
installed package; boxes and landmarks are facenet-pytorch MTCNN's on each photo, rounded to 0.1 px). Every scene
holds a still "anchor" face in the top-right area, so the pipeline always tracks something and runs its detector
only every N frames, as when a second person walks into a shot: a face that arrives between two detections is
what the benchmark is about. Everything is deterministic (seeded noise, fixed paths).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from realtime.bench.faces import ASTRONAUT_BOX, ASTRONAUT_LANDMARKS, astronaut, visible_fraction

WIDTH, HEIGHT, FPS = 640, 480, 30.0
INSIDE_MIN = 0.7  # a face counts in a frame when at least this share of its box is inside the picture
CORE_VISIBLE_MIN = 0.5  # ... and at least this share of its core shows its own pixels (not an occluder's)
OWN_MIN = 0.9  # a core pixel is the face's own when its compositing weight is at least this
CORE_MARGIN = 0.25  # the core: the landmarks' bounding box grown by this many eye distances on each side
NOISE_SIGMA = 2.0  # per-frame sensor noise (grey levels), different in every frame as a camera's is

# facenet-pytorch MTCNN on insightface's t1.jpg (1280x886): box (x0, y0, x1, y1) and landmarks (left eye, right
# eye, nose, left and right mouth corner), for the three frontal faces used here
T1_FACES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "t1-centre": (
        (465.0, 261.8, 570.4, 405.2),
        (492.8, 319.0, 543.4, 331.6, 510.6, 362.9, 482.5, 369.6, 529.9, 380.5),
    ),
    "t1-laughing": (
        (743.0, 346.0, 843.5, 473.8),
        (761.2, 397.2, 803.4, 401.4, 773.6, 431.8, 761.6, 439.0, 808.7, 442.4),
    ),
    "t1-right": (
        (1134.5, 276.3, 1227.7, 395.4),
        (1150.1, 326.3, 1193.7, 324.6, 1164.1, 349.5, 1155.3, 367.6, 1196.5, 365.4),
    ),
}


@dataclass(frozen=True, slots=True)
class FacePhoto:
    """One face in a photo: the photo (RGB uint8), the face's box (4,) and landmarks (5, 2) in its pixels."""

    name: str
    image: np.ndarray
    box: np.ndarray
    landmarks: np.ndarray


@dataclass(frozen=True, slots=True)
class Cutout:
    """A face cut out of its photo: an RGBA float32 patch (alpha 0..1) and the box and landmarks in its pixels."""

    name: str
    rgba: np.ndarray
    box: np.ndarray
    landmarks: np.ndarray

    @property
    def aspect(self) -> float:
        """Box width over box height."""
        return float((self.box[2] - self.box[0]) / (self.box[3] - self.box[1]))


def t1_path() -> Path | None:
    """insightface's group photo, when the package is installed (the test command installs it with --no-deps)."""
    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec("insightface")
        if spec is not None and spec.submodule_search_locations:
            path = Path(next(iter(spec.submodule_search_locations))) / "data" / "images" / "t1.jpg"
            if path.is_file():
                return path
    return None


@cache
def photos() -> tuple[dict[str, FacePhoto], str]:
    """The face photos by name, and a note on where they came from. Without insightface the group photo's people
    are stood in for by the astronaut, mirrored (still a real face, but the same person)."""
    sky = astronaut()
    found = {"astronaut": FacePhoto("astronaut", sky, ASTRONAUT_BOX.astype(np.float64), ASTRONAUT_LANDMARKS)}
    path = t1_path()
    group = cv2.imread(str(path), cv2.IMREAD_COLOR) if path is not None else None
    if group is not None:
        rgb = np.ascontiguousarray(group[:, :, ::-1])
        for name, (box, marks) in T1_FACES.items():
            found[name] = FacePhoto(name, rgb, np.array(box), np.array(marks).reshape(5, 2))
        return found, "faces: scikit-image's astronaut and three people of insightface's t1.jpg"
    mirrored = np.ascontiguousarray(sky[:, ::-1])
    w = sky.shape[1] - 1
    box = np.array([w - ASTRONAUT_BOX[2], ASTRONAUT_BOX[1], w - ASTRONAUT_BOX[0], ASTRONAUT_BOX[3]], np.float64)
    marks = ASTRONAUT_LANDMARKS[[1, 0, 2, 4, 3]].astype(np.float64) * [-1, 1] + [w, 0]
    for name in T1_FACES:
        found[name] = FacePhoto(name, mirrored, box, marks)
    return found, "faces: scikit-image's astronaut only (insightface is not installed: t1.jpg stood in for)"


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def cut_out(photo: FacePhoto) -> Cutout:
    """The head around the face box (a square 1.7x the box), alpha 1 over an ellipse that holds the box's middle
    and the forehead, falling smoothly to 0 well inside the patch (no neighbour of the group photo comes along)."""
    x0, y0, x1, y1 = photo.box
    bw, bh = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = 0.85 * max(bw, bh)
    h, w = photo.image.shape[:2]
    px0, py0 = max(0, int(cx - half)), max(0, int(cy - half))
    px1, py1 = min(w, math.ceil(cx + half)), min(h, math.ceil(cy + half))
    patch = photo.image[py0:py1, px0:px1].astype(np.float32)
    yy, xx = np.mgrid[py0:py1, px0:px1].astype(np.float32)
    ex, ey = 0.62 * bw, 0.62 * bh  # the ellipse's semi-axes
    r = np.sqrt(((xx - cx) / ex) ** 2 + ((yy - (cy - 0.08 * bh)) / ey) ** 2)
    alpha = smoothstep((1.35 - r) / 0.35)  # 1 inside r = 1, 0 from r = 1.35
    origin = np.array([px0, py0], np.float64)
    return Cutout(
        photo.name,
        np.dstack([patch, alpha]).astype(np.float32),
        photo.box - np.tile(origin, 2),
        photo.landmarks - origin,
    )


@cache
def cutouts() -> dict[str, Cutout]:
    return {name: cut_out(p) for name, p in photos()[0].items()}


# --- what a frame holds -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pose:
    """A face in one frame: its box centred at (cx, cy) frame pixels with a box `height` in pixels."""

    face: str
    cx: float
    cy: float
    height: float


@dataclass(frozen=True, slots=True)
class Occluder:
    """A plain rectangle in front of every face (a door, a passer-by's coat): x0, y0, x1, y1 frame pixels."""

    box: tuple[float, float, float, float]
    colour: tuple[int, int, int] = (118, 112, 104)


@dataclass(frozen=True, slots=True)
class Shot:
    """Everything frame k of a scene holds: faces back to front, occluders, and a global gain on the picture."""

    poses: tuple[Pose, ...]
    occluders: tuple[Occluder, ...] = ()
    gain: float = 1.0


@dataclass(frozen=True, slots=True)
class FaceTruth:
    """The ground truth of one face in one frame, from the compositing."""

    face: str
    box: np.ndarray  # (4,) x0, y0, x1, y1 in frame pixels; may reach past the frame
    landmarks: np.ndarray  # (5, 2)
    inside: float  # share of the box's area inside the picture
    core: tuple[int, int, int, int]  # the core box clipped to the frame, integer pixels (x0, y0, x1, y1)
    own: np.ndarray  # bool mask over `core`: pixels that show this face's own pixels
    core_visible: float  # own pixels over the whole (unclipped) core's area

    @property
    def counts(self) -> bool:
        """Whether the face counts in this frame (a face-frame): in the picture and not hidden behind something."""
        return self.inside >= INSIDE_MIN and self.core_visible >= CORE_VISIBLE_MIN


@dataclass(frozen=True)
class Scene:
    """A scripted clip: `shot(k)` says what frame k holds."""

    name: str
    description: str
    frames: int
    shot: Callable[[int], Shot]
    seed: int = 0
    _background: list[np.ndarray] = field(default_factory=list, repr=False, compare=False)

    def background(self) -> np.ndarray:
        if not self._background:
            self._background.append(textured_background(WIDTH, HEIGHT, self.seed))
        return self._background[0]

    def render(self, k: int) -> tuple[np.ndarray, list[FaceTruth]]:
        """Frame k (RGB uint8, HEIGHT x WIDTH) and the ground truth of each face in it."""
        return compose(self.background(), self.shot(k), np.random.default_rng((self.seed, k)))


def textured_background(width: int, height: int, seed: int) -> np.ndarray:
    """Colour gradients, soft blobs and fine grain: textured like a room, with nothing face-like (float32 RGB)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([70 + 60 * xx / width, 90 + 50 * yy / height, 120 - 40 * xx / width], -1)
    blobs = cv2.GaussianBlur(rng.normal(0, 1, (height, width, 3)).astype(np.float32), (0, 0), 12)
    blobs /= max(1e-6, float(blobs.std()))
    shade = 22 * blobs[..., :1] + 6 * blobs  # mostly light and dark, a little colour
    grain = rng.normal(0, 4, (height, width, 1)).astype(np.float32)
    return np.clip(base + shade + grain, 0, 255).astype(np.float32)


def placed(cutout: Cutout, pose: Pose) -> tuple[float, np.ndarray]:
    """The scale (frame pixels per photo pixel) and offset that put `cutout`'s box at `pose`."""
    box = cutout.box
    scale = pose.height / float(box[3] - box[1])
    centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    # a patch point u lands at (u + 0.5) * scale - 0.5 + offset (cv2.resize's pixel-centre mapping, then a shift)
    offset = np.array([pose.cx, pose.cy]) - ((centre + 0.5) * scale - 0.5)
    return scale, offset


def to_frame(points: np.ndarray, scale: float, offset: np.ndarray) -> np.ndarray:
    return (np.asarray(points, np.float64) + 0.5) * scale - 0.5 + offset


def _paste(cutout: Cutout, pose: Pose, width: int, height: int) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """The cutout resized and shifted into the frame: its region (x0, y0, x1, y1) and RGBA pixels there."""
    scale, offset = placed(cutout, pose)
    ph, pw = cutout.rgba.shape[:2]
    rw, rh = max(1, round(pw * scale)), max(1, round(ph * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(cutout.rgba, (rw, rh), interpolation=interp)
    # the real per-axis scale after rounding differs from `scale` by < 1/pw: the offset keeps the box centre exact
    x0, y0 = max(0, math.floor(offset[0])), max(0, math.floor(offset[1]))
    x1, y1 = min(width, math.ceil(offset[0] + rw)), min(height, math.ceil(offset[1] + rh))
    if x1 <= x0 or y1 <= y0:
        return None
    shift = np.float32([[1, 0, offset[0] - x0], [0, 1, offset[1] - y0]])
    rgba = cv2.warpAffine(resized, shift, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0))
    rgba[..., 3] = np.clip(rgba[..., 3], 0, 1)
    return (x0, y0, x1, y1), rgba


def core_box(box: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The face's core: eyes, nose and mouth (the landmarks' bounding box, grown by `CORE_MARGIN` eye distances on
    each side, kept inside the face box). About 40-50 % of the box's area on a frontal face."""
    eyes = float(np.hypot(*(landmarks[1] - landmarks[0])))
    lo, hi = landmarks.min(0) - CORE_MARGIN * eyes, landmarks.max(0) + CORE_MARGIN * eyes
    return np.array([max(lo[0], box[0]), max(lo[1], box[1]), min(hi[0], box[2]), min(hi[1], box[3])])


def compose(background: np.ndarray, shot: Shot, rng: np.random.Generator) -> tuple[np.ndarray, list[FaceTruth]]:
    """One frame: the faces pasted back to front, the occluders over them, the gain, then sensor noise."""
    height, width = background.shape[:2]
    out = background.copy()
    pieces = cutouts()
    # each face's weight in the final picture: its alpha times what stays uncovered by everything in front
    weights: list[tuple[tuple[int, int, int, int], np.ndarray] | None] = []
    for pose in shot.poses:
        pasted = _paste(pieces[pose.face], pose, width, height)
        if pasted is not None:
            (x0, y0, x1, y1), rgba = pasted
            a = rgba[..., 3:]
            out[y0:y1, x0:x1] = a * rgba[..., :3] + (1 - a) * out[y0:y1, x0:x1]
            for earlier in weights:  # what this face now covers of the faces behind it
                if earlier is not None:
                    _cover(earlier, (x0, y0, x1, y1), rgba[..., 3])
            weights.append(((x0, y0, x1, y1), rgba[..., 3].copy()))
        else:
            weights.append(None)
    for occ in shot.occluders:
        ox0, oy0 = max(0, round(occ.box[0])), max(0, round(occ.box[1]))
        ox1, oy1 = min(width, round(occ.box[2])), min(height, round(occ.box[3]))
        if ox1 > ox0 and oy1 > oy0:
            out[oy0:oy1, ox0:ox1] = occ.colour
            solid = np.ones((oy1 - oy0, ox1 - ox0), np.float32)
            for earlier in weights:
                if earlier is not None:
                    _cover(earlier, (ox0, oy0, ox1, oy1), solid)
    out = out * shot.gain + NOISE_SIGMA * rng.standard_normal(out.shape, dtype=np.float32)
    frame = np.clip(out + 0.5, 0, 255).astype(np.uint8)

    truths = []
    for pose, weight in zip(shot.poses, weights, strict=True):
        cutout = pieces[pose.face]
        scale, offset = placed(cutout, pose)
        box = to_frame(cutout.box.reshape(2, 2), scale, offset).reshape(4)
        marks = to_frame(cutout.landmarks, scale, offset)
        core = core_box(box, marks)
        cx0, cy0 = max(0, math.floor(core[0])), max(0, math.floor(core[1]))
        cx1, cy1 = min(width, math.ceil(core[2])), min(height, math.ceil(core[3]))
        own = np.zeros((max(0, cy1 - cy0), max(0, cx1 - cx0)), bool)
        if weight is not None and own.size:
            (x0, y0, x1, y1), w = weight
            ix0, iy0, ix1, iy1 = max(cx0, x0), max(cy0, y0), min(cx1, x1), min(cy1, y1)
            if ix1 > ix0 and iy1 > iy0:
                seen = w[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
                own[iy0 - cy0 : iy1 - cy0, ix0 - cx0 : ix1 - cx0] = seen >= OWN_MIN
        area = max(1.0, float((core[2] - core[0]) * (core[3] - core[1])))
        truths.append(
            FaceTruth(
                pose.face,
                box,
                marks,
                visible_fraction(box, width, height),
                (cx0, cy0, cx1, cy1),
                own,
                min(1.0, float(own.sum()) / area),
            )
        )
    return frame, truths


Region = tuple[int, int, int, int]


def _cover(weight: tuple[Region, np.ndarray], region: Region, alpha: np.ndarray) -> None:
    """Scale `weight` (a face's weight over its region) by 1 - `alpha` (something in front, over `region`)."""
    (x0, y0, x1, y1), w = weight
    rx0, ry0, rx1, ry1 = region
    ix0, iy0, ix1, iy1 = max(x0, rx0), max(y0, ry0), min(x1, rx1), min(y1, ry1)
    if ix1 > ix0 and iy1 > iy0:
        w[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] *= 1 - alpha[iy0 - ry0 : iy1 - ry0, ix0 - rx0 : ix1 - rx0]


# --- the scenes -------------------------------------------------------------------------------------------------

ENTERING = "astronaut"
ANCHOR = Pose("t1-right", 0.86 * WIDTH, 0.2 * HEIGHT, 0.2 * HEIGHT)
SPEEDS = {"slow": 5.0, "medium": 12.0, "fast": 30.0}  # pixels per frame (150, 360 and 900 px/s at 30 fps)
EDGES = ("left", "right", "top", "bottom")
FACE_HEIGHT = 0.3 * HEIGHT


def _ramp(k: float, k0: float, k1: float, a: float, b: float) -> float:
    """a before frame k0, b after k1, linear between."""
    if k <= k0:
        return a
    if k >= k1:
        return b
    return a + (b - a) * (k - k0) / (k1 - k0)


def entering(edge: str, speed: str, frames: int) -> Scene:
    """A face slides in from `edge` at `speed`, from just outside the picture to a stop inside it."""
    v = SPEEDS[speed]
    h = FACE_HEIGHT
    w = h * cutouts()[ENTERING].aspect
    # start: the box just outside the edge; stop: well inside, clear of the anchor
    start, stop, fixed = {
        "left": (-w / 2, 0.35 * WIDTH, 0.5 * HEIGHT),
        "right": (WIDTH + w / 2, 0.62 * WIDTH, 0.5 * HEIGHT),
        "top": (-h / 2, 0.45 * HEIGHT, 0.45 * WIDTH),
        "bottom": (HEIGHT + h / 2, 0.6 * HEIGHT, 0.45 * WIDTH),
    }[edge]
    step = v if stop > start else -v

    def shot(k: int) -> Shot:
        pos = start + step * k
        pos = min(pos, stop) if step > 0 else max(pos, stop)
        cx, cy = (pos, fixed) if edge in ("left", "right") else (fixed, pos)
        return Shot((ANCHOR, Pose(ENTERING, cx, cy, h)))

    what = f"a face enters from the {edge} at {v:g} px/frame and stops inside; a still face top right"
    return Scene(f"enter-{edge}-{speed}", what, frames, shot, seed=EDGES.index(edge) * 3 + list(SPEEDS).index(speed))


def crossing(frames: int) -> Scene:
    """Two faces walk towards each other at the same height and cross; the astronaut passes in front."""
    h = FACE_HEIGHT

    def shot(k: int) -> Shot:
        t = k / max(1, frames - 1)
        behind = Pose("t1-centre", (0.8 - 0.6 * t) * WIDTH, 0.56 * HEIGHT, h)
        front = Pose(ENTERING, (0.2 + 0.6 * t) * WIDTH, 0.56 * HEIGHT, h)
        return Shot((ANCHOR, behind, front))

    return Scene("cross", "two faces cross, one in front of the other; a still face top right", frames, shot, 20)


def occlusion(frames: int) -> Scene:
    """A door-sized rectangle slides over a still face, hides it whole for a while, and uncovers it again."""
    h = 0.32 * HEIGHT
    face = Pose(ENTERING, 0.35 * WIDTH, 0.55 * HEIGHT, h)
    wide = 0.5 * WIDTH
    travel = WIDTH + wide

    def shot(k: int) -> Shot:
        x0 = -wide + travel * 1.15 * k / max(1, frames - 1) - 0.1 * WIDTH
        return Shot((ANCHOR, face), (Occluder((x0, 0.15 * HEIGHT, x0 + wide, 0.95 * HEIGHT)),))

    return Scene("occlusion", "a rectangle slides over a face, hides it, and uncovers it again", frames, shot, 21)


def zoom(frames: int) -> Scene:
    """The face grows from 15 % to 60 % of the frame height in 10 frames, holds, and shrinks back in 10."""
    n = frames

    def shot(k: int) -> Shot:
        a, b = 0.25 * n, 0.55 * n
        hh = _ramp(k, a, a + 10, 0.15, 0.6) if k < b else _ramp(k, b, b + 10, 0.6, 0.15)
        return Shot((ANCHOR, Pose(ENTERING, 0.42 * WIDTH, 0.55 * HEIGHT, hh * HEIGHT)))

    return Scene("zoom", "a face zooms from 15 % to 60 % of the frame height and back, 10 frames each way", n, shot, 22)


def small(frames: int) -> Scene:
    """A face at 10 % of the frame height drifts slowly across the middle."""

    def shot(k: int) -> Shot:
        t = k / max(1, frames - 1)
        return Shot((ANCHOR, Pose(ENTERING, (0.2 + 0.5 * t) * WIDTH, 0.6 * HEIGHT, 0.1 * HEIGHT)))

    return Scene("small", "a face at 10 % of the frame height drifts across the middle", frames, shot, 23)


def lighting(frames: int) -> Scene:
    """The whole picture dims to 35 % in one step, then brightens to 145 % over half a second."""
    n = frames

    def shot(k: int) -> Shot:
        gain = 1.0 if k < 0.25 * n else _ramp(k, 0.5 * n, 0.5 * n + 15, 0.35, 1.45)
        face = Pose(ENTERING, (0.35 + 0.1 * k / max(1, n - 1)) * WIDTH, 0.55 * HEIGHT, 0.32 * HEIGHT)
        return Shot((ANCHOR, face), gain=gain)

    what = "the picture dims to 35 % in one step, then brightens to 145 % over 15 frames"
    return Scene("lighting", what, n, shot, 24)


@cache
def all_scenes(seconds: float = 2.0) -> dict[str, Scene]:
    """Every scene, `seconds` long each, by name (made once per length: a scene keeps its rendered background)."""
    frames = max(10, round(seconds * FPS))
    scenes = [entering(e, s, frames) for e in EDGES for s in SPEEDS]
    scenes += [crossing(frames), occlusion(frames), zoom(frames), small(frames), lighting(frames)]
    return {s.name: s for s in scenes}
