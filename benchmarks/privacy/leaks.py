"""Whether an output frame still shows a face's own pixels: the leak test of the privacy benchmark.

A face's core (eyes, nose and mouth: `scenes.core_box`) is cut into 2 x 2 cells; a cell is unchanged when the
output keeps the input's facial detail there, i.e. when the band-pass (difference of Gaussians, sigmas 1 % and 4 %
of the face box's width) of the output correlates with the input's by at least `UNCHANGED_CORRELATION`. A face is
leaked in a frame when any cell of its core is unchanged: an eye left bare is a leak. Correlation of a band, not a
pixel difference, because it is blind to the things that change a bare face without hiding it (the codecs' loss,
the camera's noise and a change of light scale or shift pixels, not the face's structure), while every way of
hiding a face removes exactly that band.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from benchmarks.privacy.scenes import FaceTruth

# Measured on these scenes (every frame detected; the file run's own calibration rows add x264 crf 18), as the
# highest cell correlation per face-frame: a face pasted back unchanged (the identity engine) gives >= 0.999
# losslessly and >= 0.89 after an offline VP8 round trip twice at 500 kbit/s (a live session's two encodes; at
# aiortc's floor of 250 kbit/s a few cells of the busiest scenes fall to 0.77). The anonymize styles give at most
# 0.76 (pixelate: its block edges carry some of the band), 0.34 (blur) and 0.45 (fill: VP8's ringing at the
# crop's edge) through the same codecs, 0.73 / 0.19 / 0.02 losslessly. 0.8 sits between the two.
UNCHANGED_CORRELATION = 0.8
BAND = (0.01, 0.04)  # the DoG's sigmas in face-box widths: the detail of eyes, nostrils and lips, above the noise
GRID = 2  # the core is cut into GRID x GRID cells
CELL_OWN_MIN = 0.5  # a cell is judged only where at least this share of it shows the face's own pixels


@dataclass(frozen=True, slots=True)
class Verdict:
    """One face in one output frame."""

    leaked: bool
    correlation: float  # the highest cell correlation (the cell closest to unchanged); nan: no cell judged
    cells: int  # cells judged


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an RGB uint8 image, float32."""
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float32)


def _band(image: np.ndarray, region: tuple[int, int, int, int], width: float) -> np.ndarray:
    """The band-pass of `image` over `region` (x0, y0, x1, y1), computed with enough margin for the blurs."""
    lo, hi = max(0.5, BAND[0] * width), max(1.0, BAND[1] * width)
    x0, y0, x1, y1 = region
    pad = int(3 * hi) + 2
    h, w = image.shape[:2]
    px0, py0, px1, py1 = max(0, x0 - pad), max(0, y0 - pad), min(w, x1 + pad), min(h, y1 + pad)
    crop = image[py0:py1, px0:px1]
    band = cv2.GaussianBlur(crop, (0, 0), lo) - cv2.GaussianBlur(crop, (0, 0), hi)
    return band[y0 - py0 : y1 - py0, x0 - px0 : x1 - px0]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised correlation of two band-passed patches (0 where either is flat, as a filled face is)."""
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 1e-6 else 0.0


def judge(input_luma: np.ndarray, output_luma: np.ndarray, truth: FaceTruth) -> Verdict:
    """Whether `truth`'s face shows unchanged in the output (both images: float32 luma of the same size)."""
    x0, y0, x1, y1 = truth.core
    if x1 <= x0 or y1 <= y0:
        return Verdict(False, float("nan"), 0)
    width = float(truth.box[2] - truth.box[0])
    a = _band(input_luma, truth.core, width)
    b = _band(output_luma, truth.core, width)
    own = truth.own
    xs = np.linspace(0, x1 - x0, GRID + 1).round().astype(int)
    ys = np.linspace(0, y1 - y0, GRID + 1).round().astype(int)
    best, judged = float("nan"), 0
    for i in range(GRID):
        for j in range(GRID):
            cell = own[ys[i] : ys[i + 1], xs[j] : xs[j + 1]]
            if cell.size == 0 or cell.mean() < CELL_OWN_MIN:
                continue
            sa = a[ys[i] : ys[i + 1], xs[j] : xs[j + 1]][cell]
            sb = b[ys[i] : ys[i + 1], xs[j] : xs[j + 1]][cell]
            c = correlation(sa, sb)
            judged += 1
            best = c if np.isnan(best) else max(best, c)
    return Verdict(bool(judged and best >= UNCHANGED_CORRELATION), best, judged)
