"""Real face frames with no download, for the bench, the capacity probe and the tests: scikit-image's astronaut
photo, and frames composed from it with several faces at known positions and scales.

Without scikit-image (a bare GPU machine) the same photo comes, pixel for pixel, from the lossless PNG named by
$DANCECAM_ASTRONAUT. The box and landmarks are facenet-pytorch MTCNN's on the original photo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# MTCNN on skimage.data.astronaut(): box (x0, y0, x1, y1) and 5 landmarks (left eye, right eye, nose, left and
# right mouth corner) in pixels of the 512x512 image.
ASTRONAUT_BOX = np.array([181.1, 62.2, 267.7, 172.1], dtype=np.float32)
ASTRONAUT_LANDMARKS = np.array(
    [[205.0, 101.7], [246.8, 103.7], [224.7, 129.0], [201.7, 139.2], [245.3, 141.9]], dtype=np.float32
)


ASTRONAUT_ENV = "DANCECAM_ASTRONAUT"
ASTRONAUT_SHAPE = (512, 512, 3)


def astronaut() -> np.ndarray:
    """The astronaut photo, 512x512 RGB uint8 (one real face): scikit-image's, else the PNG of $DANCECAM_ASTRONAUT."""
    try:
        from skimage import data
    except ImportError:
        return astronaut_png()
    return np.ascontiguousarray(data.astronaut())


def astronaut_png(path: str | Path | None = None) -> np.ndarray:
    """The astronaut photo from a lossless PNG (`path`, else $DANCECAM_ASTRONAUT), checked to be 512x512 RGB."""
    hint = (
        "realtime.bench.faces needs scikit-image's astronaut photo: install scikit-image (`pip install "
        "scikit-image`, a "
        f"dependency of dancecam), or set {ASTRONAUT_ENV} to a PNG of it written on a machine that has scikit-image "
        "(`python -m benchmarks.gpu_suite --prepare-carry` writes .carry/astronaut.png)"
    )
    name = str(path) if path is not None else os.environ.get(ASTRONAUT_ENV, "")
    if not name:
        raise ImportError(f"{hint}; scikit-image is not installed and {ASTRONAUT_ENV} is not set")
    file = Path(name).expanduser()
    if not file.is_absolute() and not file.is_file():  # relative to the checkout, wherever the tests run from
        file = Path(__file__).resolve().parents[2] / file
    bgr = cv2.imread(str(file), cv2.IMREAD_UNCHANGED) if file.is_file() else None
    if bgr is None:
        raise ImportError(f"{hint}; {name} is not a readable image")
    if bgr.shape != ASTRONAUT_SHAPE or bgr.dtype != np.uint8:
        raise ImportError(f"{hint}; {name} is {bgr.shape} {bgr.dtype}, not {ASTRONAUT_SHAPE} uint8")
    return np.ascontiguousarray(bgr[:, :, ::-1])


@dataclass(frozen=True, slots=True)
class PlacedFace:
    """Where one copy of the astronaut's face landed in a composed frame (pixel coordinates of that frame)."""

    box: np.ndarray  # (4,) x0, y0, x1, y1; may extend past the frame
    landmarks: np.ndarray  # (5, 2)
    scale: float  # frame pixels per astronaut pixel
    visible_fraction: float  # share of the box area inside the frame

    @property
    def inside(self) -> bool:
        return self.visible_fraction >= 0.999

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])


@dataclass(frozen=True, slots=True)
class Placement:
    """A face centred at (cx, cy), fractions of the frame, with its box `height` a fraction of frame height."""

    cx: float
    cy: float
    height: float


# Four faces per frame: a large one, a small one, one near the top-left corner and one across the right border.
DEFAULT_PLACEMENTS: tuple[Placement, ...] = (
    Placement(0.32, 0.50, 0.42),
    Placement(0.68, 0.36, 0.16),
    Placement(0.08, 0.14, 0.22),
    Placement(0.985, 0.70, 0.30),
)


def compose_faces(
    width: int,
    height: int,
    placements: tuple[Placement, ...] = DEFAULT_PLACEMENTS,
    seed: int = 0,
) -> tuple[np.ndarray, list[PlacedFace]]:
    """An RGB uint8 frame with the astronaut's head pasted at each placement over a textured background.

    Each paste is the head region (the face box grown 1.9x) resized with area/cubic interpolation and feathered
    at its edge, so there is no hard seam for a detector to latch onto.
    """
    rng = np.random.default_rng(seed)
    frame = _background(width, height, rng)
    src = astronaut().astype(np.float32)
    bx0, by0, bx1, by1 = ASTRONAUT_BOX
    bw, bh = bx1 - bx0, by1 - by0
    # head crop around the face box, clipped to the photo
    grow = 1.9
    cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
    half = grow * max(bw, bh) / 2
    hx0, hy0 = max(0, int(cx - half)), max(0, int(cy - half))
    hx1, hy1 = min(src.shape[1], int(cx + half)), min(src.shape[0], int(cy + half))
    head = src[hy0:hy1, hx0:hx1]

    faces: list[PlacedFace] = []
    out = frame.astype(np.float32)
    for p in placements:
        scale = p.height * height / bh
        hw, hh = max(1, round(head.shape[1] * scale)), max(1, round(head.shape[0] * scale))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        patch = cv2.resize(head, (hw, hh), interpolation=interp)
        alpha = _feather(hw, hh)
        # the face-box centre goes to (cx, cy) of the frame
        ox = p.cx * width - (cx - hx0) * scale
        oy = p.cy * height - (cy - hy0) * scale
        x0, y0 = round(ox), round(oy)
        ox, oy = float(x0), float(y0)  # integer paste offset: ground truth stays exact
        fx0, fy0 = max(0, x0), max(0, y0)
        fx1, fy1 = min(width, x0 + hw), min(height, y0 + hh)
        if fx1 > fx0 and fy1 > fy0:
            sub = patch[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
            a = alpha[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0, None]
            out[fy0:fy1, fx0:fx1] = a * sub + (1 - a) * out[fy0:fy1, fx0:fx1]

        def to_frame(pts: np.ndarray, ox: float = ox, oy: float = oy, scale: float = scale) -> np.ndarray:
            # a pixel centre u of the head crop maps to (u + 0.5) * scale - 0.5 in the resized patch
            return (pts - np.array([hx0, hy0], np.float32) + 0.5) * scale - 0.5 + np.array([ox, oy], np.float32)

        box = to_frame(ASTRONAUT_BOX.reshape(2, 2)).reshape(4)
        landmarks = to_frame(ASTRONAUT_LANDMARKS)
        faces.append(PlacedFace(box, landmarks, float(scale), visible_fraction(box, width, height)))
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), faces


def _background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth colour gradient with mild noise: textured, but nothing face-like."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 70 + 60 * xx / max(1, width - 1)
    g = 90 + 50 * yy / max(1, height - 1)
    b = 120 - 40 * xx / max(1, width - 1)
    img = np.stack([r, g, b], axis=-1) + rng.normal(0, 6, (height, width, 3)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _feather(w: int, h: int) -> np.ndarray:
    """Alpha for a paste: 1 in the middle, falling smoothly to 0 over the outer 12% of each side."""

    def ramp(n: int) -> np.ndarray:
        t = (np.arange(n, dtype=np.float32) + 0.5) / n
        edge = np.minimum(t, 1 - t) / 0.12
        return np.clip(edge, 0, 1)

    a = np.outer(ramp(h), ramp(w))
    return a * a * (3 - 2 * a)  # smoothstep


def visible_fraction(box: np.ndarray, width: int, height: int) -> float:
    """The share of a box (x0, y0, x1, y1) inside a width x height frame."""
    x0, y0, x1, y1 = box
    area = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    ix = max(0.0, min(x1, width) - max(x0, 0))
    iy = max(0.0, min(y1, height) - max(y0, 0))
    return float(ix * iy / area) if area else 0.0
