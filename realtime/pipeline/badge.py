"""The disclosure badge: a visible mark such as "AI-altered video" on every frame the pipeline outputs (off unless
asked for). Rendered once per (badge, frame size) on the host with OpenCV, kept on the pipeline's device as
premultiplied colour and 1 - alpha, and blended in place into RGB frames or straight into yuv420p planes; pixels
outside the badge's rounded box are left exactly as they were.

Design notes: docs/design-notes.md, section realtime/pipeline/badge.py.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from engines.errors import ConfigError
from realtime.pipeline.choices import (
    BADGE_POSITIONS,
    BADGE_TEXT_MAX,
    DEFAULT_BADGE_POSITION,
    DEFAULT_BADGE_TEXT,
    BadgePosition,
)
from realtime.pipeline.colour import rgb_to_yuv420p

FONT = cv2.FONT_HERSHEY_DUPLEX  # Hershey fonts have ASCII glyphs only: the text is checked for that
TEXT_HEIGHT = 0.045  # the text's height (OpenCV's measure, capitals) as a share of the frame height
MARGIN = 0.025  # space between the box and the frame's edges, as a share of the frame height
BOX_OPACITY = 0.65  # the dark box: white text on it reads on any picture, the video still shows through
CACHE = 4  # badges kept ready per overlay (a new setting or resolution renders another)


def check_badge_text(text: object) -> str:
    """The text with surrounding spaces stripped; `ConfigError` when it is empty, too long or not printable ASCII."""
    if not isinstance(text, str):
        raise ConfigError(f"the badge text must be a string, got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise ConfigError("the badge text must not be empty (turn the badge off instead)")
    if len(stripped) > BADGE_TEXT_MAX:
        raise ConfigError(f"the badge text must be at most {BADGE_TEXT_MAX} characters, got {len(stripped)}")
    for i, char in enumerate(stripped):
        if not " " <= char <= "~":
            raise ConfigError(
                f"the badge text can hold printable ASCII only (letters, digits, punctuation and spaces: the "
                f"badge's font has no other glyphs), got {char!r} at character {i + 1}"
            )
    return stripped


@dataclass(frozen=True, slots=True)
class Badge:
    """What the badge says and which corner it sits in; a `PipelineConfig` without one draws none."""

    text: str = DEFAULT_BADGE_TEXT
    position: BadgePosition = DEFAULT_BADGE_POSITION

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", check_badge_text(self.text))
        if self.position not in BADGE_POSITIONS:
            raise ConfigError(f"the badge position must be one of {', '.join(BADGE_POSITIONS)}, got {self.position!r}")


@dataclass(frozen=True, slots=True)
class BadgeImage:
    """A badge rendered for one frame size: straight-alpha RGBA, and where its top-left corner goes. Corner and size
    are even, so that in yuv420p it covers whole 2x2 chroma blocks."""

    rgba: np.ndarray  # (h, w, 4) uint8
    x: int
    y: int


def _even_up(value: float) -> int:
    n = int(np.ceil(value))
    return n + n % 2


def render_badge(badge: Badge, width: int, height: int) -> BadgeImage:
    """White text on a dark rounded box, sized by the frame height (narrowed to fit the frame's width)."""
    if width < 2 or height < 2:
        raise ValueError(f"a badge needs a frame of at least 2x2 pixels, got {width}x{height}")
    margin = round(MARGIN * height / 2) * 2
    scale = TEXT_HEIGHT * height / cv2.getTextSize(badge.text, FONT, 1.0, 1)[0][1]
    for _ in range(3):  # a long text on a narrow frame: shrink until it fits (strokes and padding shrink too)
        thickness = max(1, round(scale))
        (text_w, text_h), baseline = cv2.getTextSize(badge.text, FONT, scale, thickness)
        pad = max(2, round(0.45 * text_h))
        box_w, box_h = _even_up(text_w + 2 * pad), _even_up(text_h + baseline + 2 * pad)
        room = width - 2 * margin
        if box_w <= room or room <= 0:
            break
        scale *= room / box_w
    text = np.zeros((box_h, box_w), np.uint8)
    cv2.putText(text, badge.text, (pad, pad + text_h), FONT, scale, 255, thickness, cv2.LINE_AA)
    box = np.zeros((box_h, box_w), np.uint8)
    r = max(1, min(pad // 2, box_h // 2 - 1))
    cv2.rectangle(box, (r, 0), (box_w - 1 - r, box_h - 1), 255, -1)
    cv2.rectangle(box, (0, r), (box_w - 1, box_h - 1 - r), 255, -1)
    for cx, cy in ((r, r), (box_w - 1 - r, r), (r, box_h - 1 - r), (box_w - 1 - r, box_h - 1 - r)):
        cv2.circle(box, (cx, cy), r, 255, -1, cv2.LINE_AA)
    # a frame too small for the text keeps what fits of it
    w, h = min(box_w, width // 2 * 2), min(box_h, height // 2 * 2)
    t = text[:h, :w].astype(np.float32) / 255
    b = box[:h, :w].astype(np.float32) / 255 * BOX_OPACITY
    alpha = t + b * (1 - t)  # the text over the box
    grey = np.divide(255 * t, alpha, out=np.zeros_like(alpha), where=alpha > 0)  # white text, black box
    rgba = np.dstack([grey, grey, grey, 255 * alpha]).round().clip(0, 255).astype(np.uint8)
    mx = margin if w + 2 * margin <= width else 0
    my = margin if h + 2 * margin <= height else 0
    x = width - mx - w if badge.position.endswith("right") else mx
    y = height - my - h if badge.position.startswith("bottom") else my
    return BadgeImage(rgba, max(0, x - x % 2), max(0, y - y % 2))


@dataclass(frozen=True, slots=True)
class _Layer:
    """One plane's share of a badge, ready on the device: out = colour + keep * plane, inside `box`."""

    plane: int  # 0 for an RGB frame; 0, 1, 2 for the Y, U and V planes
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in that plane's pixels
    colour: torch.Tensor  # float32, premultiplied by alpha
    keep: torch.Tensor  # float32, 1 - alpha


def _layers(image: BadgeImage, yuv: bool, device: torch.device) -> list[_Layer]:
    rgb = torch.from_numpy(np.ascontiguousarray(image.rgba[..., :3]))
    alpha = torch.from_numpy(image.rgba[..., 3].astype(np.float32) / 255)
    h, w = alpha.shape
    x, y = image.x, image.y
    box = (x, y, x + w, y + h)
    if not yuv:
        parts = [(0, box, rgb.float() * alpha[..., None], 1 - alpha[..., None])]
    else:  # the same conversion as the pipeline's; chroma alpha is the mean over each 2x2 block
        luma, cb, cr = rgb_to_yuv420p(rgb)
        half = F.avg_pool2d(alpha[None, None], 2)[0, 0]
        box_c = (x // 2, y // 2, (x + w) // 2, (y + h) // 2)
        parts = [
            (0, box, luma.float() * alpha, 1 - alpha),
            (1, box_c, cb.float() * half, 1 - half),
            (2, box_c, cr.float() * half, 1 - half),
        ]
    if device.type == "cuda":
        # once per badge and size, from pinned memory without blocking: a pageable copy would wait mid-frame
        return [
            _Layer(i, b, c.pin_memory().to(device, non_blocking=True), k.pin_memory().to(device, non_blocking=True))
            for i, b, c, k in parts
        ]
    return [_Layer(i, b, c.to(device), k.to(device)) for i, b, c, k in parts]


class BadgeOverlay:
    """Blends badges into frames in place, on the frames' device. Each (badge, frame size, format, device) is
    rendered and moved to the device once; a frame costs one small blend per plane, no copy and no sync."""

    def __init__(self) -> None:
        self._ready: OrderedDict[tuple[Badge, int, int, bool, torch.device], list[_Layer]] = OrderedDict()

    def draw_rgb(self, frame: torch.Tensor, badge: Badge) -> None:
        """Into an (H, W, 3) uint8 frame."""
        height, width = frame.shape[:2]
        self._draw((frame,), badge, width, height, yuv=False)

    def draw_yuv(self, planes: tuple[torch.Tensor, torch.Tensor, torch.Tensor], badge: Badge) -> None:
        """Into yuv420p planes: Y (H, W), U and V (H/2, W/2), uint8."""
        height, width = planes[0].shape
        self._draw(planes, badge, width, height, yuv=True)

    def _draw(self, planes: tuple[torch.Tensor, ...], badge: Badge, width: int, height: int, yuv: bool) -> None:
        key = (badge, width, height, yuv, planes[0].device)
        layers = self._ready.get(key)
        if layers is None:
            if len(self._ready) >= CACHE:
                self._ready.popitem(last=False)
            layers = self._ready[key] = _layers(render_badge(badge, width, height), yuv, planes[0].device)
        else:
            self._ready.move_to_end(key)
        for layer in layers:
            x0, y0, x1, y1 = layer.box
            region = planes[layer.plane][y0:y1, x0:x1]
            region.copy_(torch.addcmul(layer.colour, region.float(), layer.keep).round_().clamp_(0, 255))

    def clear(self) -> None:
        """Free the badges kept on the device (the pipeline is closing)."""
        self._ready.clear()
