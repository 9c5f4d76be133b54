"""Soft blend masks for pasting swapped faces back, built once per crop size.

The swaps' `MaskSpec` (official or ellipse) and the anonymize engine's `CoverMask`. Design notes: docs/design-notes.md,
section realtime/pipeline/masks.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from engines.errors import ConfigError
from realtime.pipeline.choices import DEFAULT_MASK, MASKS, MaskKind

# official region in the 256 crop: rows 77:240, columns 32:224
_ROWS, _COLS, _BASE, _SIGMA = (77, 240), (32, 224), 256, 7.0


@dataclass(frozen=True, slots=True)
class MaskSpec:
    kind: MaskKind = DEFAULT_MASK
    feather_px: float | None = None  # Gaussian sigma; None: 7 px at 256, scaled with the crop
    erode_px: int = 0

    def __post_init__(self) -> None:
        if self.kind not in MASKS:
            raise ConfigError(f"mask must be one of {', '.join(MASKS)}, not {self.kind!r}")
        if self.feather_px is not None and not 0 <= self.feather_px <= 64:
            raise ConfigError(f"mask feather must be between 0 and 64 px, got {self.feather_px}")
        if not 0 <= self.erode_px <= 64:
            raise ConfigError(f"mask erosion must be between 0 and 64 px, got {self.erode_px}")


@dataclass(frozen=True, slots=True)
class CoverMask:
    """An ellipse in fractions of the crop's side (the crop spans 0..1 edge to edge): 1 inside, falling smoothly to
    0 where the elliptical radius reaches 1 + `feather`; the crop size does not change its shape."""

    cx: float
    cy: float
    ax: float  # semi-axes
    ay: float
    feather: float = 0.2

    def __post_init__(self) -> None:
        if not (self.ax > 0 and self.ay > 0 and 0 < self.feather <= 1):
            raise ConfigError(f"a cover mask needs positive semi-axes and a feather in (0, 1], got {self}")
        reach = 1 + self.feather
        inside = (
            self.cx - reach * self.ax >= 0
            and self.cx + reach * self.ax <= 1
            and self.cy - reach * self.ay >= 0
            and self.cy + reach * self.ay <= 1
        )
        if not inside:  # cut by the crop's edge, the ellipse would end in a hard seam
            raise ConfigError(f"the cover mask's ellipse and feather must fit inside the crop, got {self}")


def build_mask(size: int, spec: MaskSpec | CoverMask = MaskSpec()) -> np.ndarray:
    """(size, size) float32 in [0, 1]; cached, so callers must not modify it."""
    if isinstance(spec, CoverMask):
        return _build_cover(size, spec)
    return _build(size, spec)


@lru_cache(maxsize=16)
def _build_cover(size: int, spec: CoverMask) -> np.ndarray:
    centres = (np.arange(size, dtype=np.float64) + 0.5) / size  # pixel centres in fractions of the side
    dx, dy = (centres - spec.cx) / spec.ax, (centres - spec.cy) / spec.ay
    rho = np.sqrt(dx[None, :] ** 2 + dy[:, None] ** 2)
    t = np.clip((rho - 1.0) / spec.feather, 0.0, 1.0)
    mask = (1.0 - t * t * (3.0 - 2.0 * t)).astype(np.float32)  # smoothstep: exactly 1 inside, exactly 0 beyond
    mask.setflags(write=False)
    return mask


@lru_cache(maxsize=16)
def _build(size: int, spec: MaskSpec) -> np.ndarray:
    scale = size / _BASE
    r0, r1 = (round(v * scale) for v in _ROWS)
    c0, c1 = (round(v * scale) for v in _COLS)
    region = np.zeros((size, size), np.uint8)
    if spec.kind == "official":
        region[r0:r1, c0:c1] = 1
    else:
        centre = ((c0 + c1 - 1) / 2, (r0 + r1 - 1) / 2)
        axes = ((c1 - c0) / 2, (r1 - r0) / 2)
        # cv2 draws with integer geometry; 4 bits of sub-pixel precision keep the ellipse centred
        shift = 4
        cv2.ellipse(
            region,
            (round(centre[0] * 16), round(centre[1] * 16)),
            (round(axes[0] * 16), round(axes[1] * 16)),
            0,
            0,
            360,
            1,
            -1,
            cv2.LINE_8,
            shift,
        )
    if spec.erode_px:
        k = 2 * spec.erode_px + 1
        region = cv2.erode(region, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    mask = region.astype(np.float32)
    sigma = _SIGMA * scale if spec.feather_px is None else float(spec.feather_px)
    if sigma > 0:
        radius = int(4.0 * sigma + 0.5)  # scipy's truncate=4.0
        mask = cv2.GaussianBlur(mask, (2 * radius + 1, 2 * radius + 1), sigma, borderType=cv2.BORDER_REFLECT)
    mask = np.clip(mask, 0.0, 1.0)
    mask.setflags(write=False)
    return mask
