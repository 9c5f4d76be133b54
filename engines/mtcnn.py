"""MTCNN face detector (Zhang et al. 2016) in PyTorch, with the weights the facenet-pytorch wheel ships.

Design notes: docs/design-notes.md, section engines/mtcnn.py.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engines import registry, store
from engines.command import dancecam
from engines.detect import Detections
from engines.errors import CheckpointFormatError, ConfigError, ModelMissingError
from engines.nms import batched_nms, nms
from engines.registry import DataConfig

PNET_STRIDE = 2
PNET_CELL = 12
LAYOUT_CACHE = 16  # pyramid layouts kept per detector (one per frame size seen recently)


# --- networks -----------------------------------------------------------------------------------------------


class PNet(nn.Module):
    """Proposal network: fully convolutional, one 12x12 window per output cell, stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)  # face / not-face logits
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)  # box regression

    def forward(self, x: torch.Tensor, pool_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Face probability (N, h, w) and box regression (N, 4, h, w) for normalised images (N, 3, H, W).

        `pool_bias` (broadcast to conv1's output) is added just before the max pool: a large negative value there
        keeps a position out of every pooling window, which is how the mosaic reproduces each level's own borders.
        """
        x = self.prelu1(self.conv1(x))
        if pool_bias is not None:
            x = x + pool_bias
        x = self.pool1(x)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return torch.softmax(self.conv4_1(x), dim=1)[:, 1], self.conv4_2(x)


class RNet(nn.Module):
    """Refinement network on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Face probability (N,) and box regression (N, 4) for normalised crops (N, 3, 24, 24)."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        # The dense weights came from a model that flattened (width, height, channel): permute before flattening.
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).flatten(1)))
        return torch.softmax(self.dense5_1(x), dim=1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    """Output network on 48x48 crops: score, box regression and five landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Face probability (N,), box regression (N, 4) and landmarks (N, 10: five x then five y, relative to the
        crop) for normalised crops (N, 3, 48, 48)."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))  # (width, height, channel) order, as RNet
        return torch.softmax(self.dense6_1(x), dim=1)[:, 1], self.dense6_2(x), self.dense6_3(x)


# --- checkpoint loading -------------------------------------------------------------------------------------

NETWORKS: dict[str, type[nn.Module]] = {"pnet": PNet, "rnet": RNet, "onet": ONet}


def load_state_strict(model: nn.Module, state: object, source: str) -> None:
    """Load `state` into `model` only if every tensor is present with the right shape and nothing is left over."""
    if not isinstance(state, dict):
        raise CheckpointFormatError(f"{source}: expected a state dict, got {type(state).__name__}")
    expected = model.state_dict()
    for name, ref in expected.items():
        if name not in state:
            raise CheckpointFormatError(f"{source}: tensor {name!r} is missing")
        t = state[name]
        if not isinstance(t, torch.Tensor) or t.shape != ref.shape:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise CheckpointFormatError(f"{source}: tensor {name!r} has shape {got}, expected {tuple(ref.shape)}")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise CheckpointFormatError(f"{source}: unexpected tensors {', '.join(map(repr, extra))}")
    model.load_state_dict(state, strict=True)


def default_weights_path(stage: str) -> Path:
    """Where the facenet-pytorch wheel keeps `stage`'s weights (`pnet`, `rnet` or `onet`)."""
    entry = registry.find(f"mtcnn_{stage}")
    path = store.bundled_path(entry)
    if path is None or not path.is_file():
        hint = entry.bundled.install_hint if entry.bundled is not None else f"see `{dancecam('models', 'list')}`"
        where = f" (looked for {path})" if path is not None else " (facenet-pytorch is not installed)"
        raise ModelMissingError(f"MTCNN {stage} weights {entry.file_name} not found{where}. Install them: {hint}")
    return path


def load_network(stage: str, path: str | Path | None = None, device: torch.device | str = "cpu") -> nn.Module:
    """`stage` ('pnet', 'rnet', 'onet') in eval mode with its weights, from `path` or the bundled file."""
    if stage not in NETWORKS:
        raise ValueError(f"unknown MTCNN stage {stage!r}; expected one of {', '.join(NETWORKS)}")
    path = default_weights_path(stage) if path is None else Path(path)
    if not path.is_file():
        raise ModelMissingError(f"MTCNN {stage} weights not found at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a file that is not a (safe) checkpoint
        raise CheckpointFormatError(f"{path}: not a readable torch state dict ({e})") from e
    model = NETWORKS[stage]()
    load_state_strict(model, state, str(path))
    return model.to(device).eval()


# --- pyramid layouts ----------------------------------------------------------------------------------------

# Added to conv1 outputs that belong to no level: far below any real activation (inputs are in [-1, 1]), yet
# finite, so the discarded cells that mix it in never produce inf or NaN.
_OUTSIDE = -1.0e4


@dataclass(frozen=True, slots=True)
class _Level:
    scale: float
    h: int  # resampled size
    w: int
    y: int = 0  # origin in the mosaic (even), unused when levels run separately
    x: int = 0

    @property
    def out_h(self) -> int:  # PNet output: conv 3, pool 2 (ceil), conv 3, conv 3
        return math.ceil((self.h - 2) / 2) - 4

    @property
    def out_w(self) -> int:
        return math.ceil((self.w - 2) / 2) - 4


def pyramid_scales(height: int, width: int, min_face_size: float, factor: float) -> list[float]:
    """The scales facenet-pytorch uses (same float arithmetic): 12 / min_face_size, then x factor while the short
    side, scaled, stays >= 12 px."""
    m = 12.0 / min_face_size
    short = min(height, width) * m
    scales = []
    scale = m
    while short >= 12:
        scales.append(scale)
        scale *= factor
        short *= factor
    return scales


@dataclass(frozen=True, slots=True)
class _Cells:
    """Every PNet output cell of one image size, flattened in the order the PNet pass produces them."""

    level: torch.Tensor  # (P,) int64 level index, -1 for mosaic cells that belong to no level
    x: torch.Tensor  # (P,) float32 cell column within its level
    y: torch.Tensor  # (P,) float32 cell row
    scale: torch.Tensor  # (P,) float32 the level's scale
    valid: torch.Tensor | None  # (P,) bool; None when every cell belongs to a level


def _cells(levels: list[_Level], out_h: int | None, out_w: int | None, device: torch.device) -> _Cells:
    """Cell table: levels one after another (out_h None), or the mosaic's output map of size (out_h, out_w)."""
    if out_h is None or out_w is None:
        parts = []
        for k, lv in enumerate(levels):
            yy, xx = torch.meshgrid(torch.arange(lv.out_h), torch.arange(lv.out_w), indexing="ij")
            parts.append((torch.full((yy.numel(),), k), xx.flatten(), yy.flatten()))
        level, x, y = (torch.cat(p) for p in zip(*parts, strict=True))
        valid = None
    else:
        level = torch.full((out_h, out_w), -1, dtype=torch.long)
        x = torch.zeros((out_h, out_w), dtype=torch.long)
        y = torch.zeros((out_h, out_w), dtype=torch.long)
        for k, lv in enumerate(levels):
            oy, ox = lv.y // 2, lv.x // 2
            level[oy : oy + lv.out_h, ox : ox + lv.out_w] = k
            x[oy : oy + lv.out_h, ox : ox + lv.out_w] = torch.arange(lv.out_w)
            y[oy : oy + lv.out_h, ox : ox + lv.out_w] = torch.arange(lv.out_h)[:, None]
        level, x, y = level.flatten(), x.flatten(), y.flatten()
        valid = level >= 0
    scales = torch.tensor([lv.scale for lv in levels], dtype=torch.float32)
    scale = torch.where(level >= 0, scales[level.clamp(min=0)], torch.ones(()))

    def dev(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(device)

    return _Cells(level.to(device), x.float().to(device), y.float().to(device), scale.to(device), dev(valid))


@dataclass(frozen=True, slots=True)
class _SeparateLayout:
    """Levels run one PNet pass each (the looped layout)."""

    levels: list[_Level]
    cells: _Cells


@dataclass(frozen=True, slots=True)
class _MosaicLayout:
    """All levels packed into one canvas for a single PNet pass (the batched layout: a dozen passes become one).

    Levels sit on shelves at even origins (PNet's stride), each in a slot at least its own size. After the max
    pool the rest of PNet is stride-1 convolutions, so a cell whose 12 px window lies inside its level sees exactly
    what it would see alone, except at the level's right and bottom edges, where ceil-mode pooling uses a partial
    window: conv1 positions outside every level get `_OUTSIDE` added before the pool, so those windows take the
    maximum over the level's own positions only, as they do alone.
    """

    levels: list[_Level]
    cells: _Cells
    height: int
    width: int
    pool_bias: torch.Tensor  # (1, 1, height - 2, width - 2)


def _separate_layout(h: int, w: int, scales: list[float], device: torch.device) -> _SeparateLayout:
    levels = [_Level(s, int(h * s + 1), int(w * s + 1)) for s in scales]
    return _SeparateLayout(levels, _cells(levels, None, None, device))


def _mosaic_layout(h: int, w: int, scales: list[float], device: torch.device) -> _MosaicLayout:
    def even(v: int) -> int:
        return v + (v & 1)

    width = even(int(w * scales[0] + 1))
    levels: list[_Level] = []
    x = y = shelf = 0
    for s in scales:
        lh, lw = int(h * s + 1), int(w * s + 1)
        if x + even(lw) > width:
            x, y, shelf = 0, y + shelf, 0
        levels.append(_Level(s, lh, lw, y, x))
        x += even(lw)
        shelf = max(shelf, even(lh))
    height = y + shelf
    bias = torch.full((1, 1, height - 2, width - 2), _OUTSIDE)
    for lv in levels:
        bias[..., lv.y : lv.y + lv.h - 2, lv.x : lv.x + lv.w - 2] = 0.0
    out_h, out_w = math.ceil((height - 2) / 2) - 4, math.ceil((width - 2) / 2) - 4
    return _MosaicLayout(levels, _cells(levels, out_h, out_w, device), height, width, bias.to(device))


# --- detector -----------------------------------------------------------------------------------------------


class MTCNN:
    """The MTCNN cascade as a `FaceDetector`: (H, W, 3) uint8 RGB on `device` -> `Detections`, best score first.

    `batched`: how the work is laid out, never what it computes (both give the same faces). True: PNet runs once
    on a mosaic of the whole pyramid and every crop is resampled in one go from a summed-area table: a fixed,
    small number of kernel launches per frame, what an accelerator wants. False: PNet runs level by level and
    crops are resampled one box at a time, as facenet-pytorch does: on CPU that is faster (a summed-area table
    of a 720p frame costs more than a few hundred small crops, and large temporaries cost page faults). None
    (default): batched on accelerators, looped on CPU.

    `pad_crops`: crops that cross the image border are completed with black pixels, as the original MTCNN does
    (True, default), or clipped to the image and stretched, as facenet-pytorch does (False); the latter skews
    the landmarks of faces near a border by several percent of their size.
    """

    def __init__(
        self,
        device: torch.device | str = "cpu",
        min_face_size: float = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        *,
        pnet: str | Path | None = None,
        rnet: str | Path | None = None,
        onet: str | Path | None = None,
        batched: bool | None = None,
        pad_crops: bool = True,
    ) -> None:
        if not min_face_size > 0:
            raise ConfigError(f"min_face_size must be positive, got {min_face_size}")
        if len(thresholds) != 3 or not all(0.0 <= t < 1.0 for t in thresholds):
            raise ConfigError(f"thresholds must be three probabilities in [0, 1), got {thresholds}")
        if not 0.0 < factor < 1.0:
            raise ConfigError(f"factor must be in (0, 1), got {factor}")
        self.device = torch.empty(0, device=device).device  # canonical: "cuda" -> "cuda:0", as tensors report it
        self.min_face_size = float(min_face_size)
        self.thresholds = (float(thresholds[0]), float(thresholds[1]), float(thresholds[2]))
        self.factor = float(factor)
        self.batched = self.device.type != "cpu" if batched is None else batched
        self.pad_crops = pad_crops
        self.pnet = load_network("pnet", pnet, self.device)
        self.rnet = load_network("rnet", rnet, self.device)
        self.onet = load_network("onet", onet, self.device)
        # input sizes and normalisation of each stage, from its registry entry
        self.data = tuple(registry.data_config(f"mtcnn_{stage}") for stage in ("pnet", "rnet", "onet"))
        self._layouts: OrderedDict[tuple[int, int], _SeparateLayout | _MosaicLayout] = OrderedDict()
        self._layouts_lock = threading.Lock()

    def __call__(self, image: torch.Tensor) -> Detections:
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {tuple(image.shape)} {image.dtype}")
        if image.device != self.device:
            raise ValueError(f"image is on {image.device}, the detector on {self.device}")
        with torch.inference_mode():
            return self._detect(image)

    # The host waits on the device only where the number of surviving boxes is decided: candidate extraction,
    # each NMS (one copy each way), and the RNet and ONet thresholds. Everything in between stays on the device.
    def _exact(self) -> contextlib.AbstractContextManager[None]:
        """IEEE fp32 convolutions on CUDA around a network call (kernel launches only, no waits inside): TF32,
        PyTorch's default there, would move scores near the thresholds, and whether it is on would depend on what
        other sessions' fp32 runners are doing with the process-wide flag at that moment."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        from engines.runners.eager import ieee_fp32_convolutions

        return ieee_fp32_convolutions()

    def _detect(self, image: torch.Tensor) -> Detections:
        h, w = image.shape[:2]
        layout = self._layout(h, w)
        if layout is None:  # smaller than the smallest face
            return Detections.empty(self.device)
        img = image.permute(2, 0, 1)[None].contiguous().float()  # NCHW: area pooling is fastest on it
        boxes, _ = self._stage1(img, layout)
        if len(boxes) == 0:
            return Detections.empty(self.device)
        sat = _summed_area_table(image) if self.batched else None

        crops, ok = self._crops(img, sat, boxes, self.data[1].input_size, self.data[1])
        with self._exact():
            prob, reg = self.rnet(crops)
        keep = torch.nonzero((prob > self.thresholds[1]) & ok).squeeze(1)
        boxes, prob, reg = boxes[keep], prob[keep], reg[keep]
        keep = nms(boxes, prob, 0.7)
        boxes = _square(_regress(boxes[keep], reg[keep], 1.0))
        if len(boxes) == 0:
            return Detections.empty(self.device)

        crops, ok = self._crops(img, sat, boxes, self.data[2].input_size, self.data[2])
        with self._exact():
            prob, reg, marks = self.onet(crops)
        keep = torch.nonzero((prob > self.thresholds[2]) & ok).squeeze(1)
        boxes, prob, reg, marks = boxes[keep], prob[keep], reg[keep], marks[keep]
        # landmarks are relative to the crop box before its regression, in "+1" sizes and 1-based pixels
        bw = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        bh = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        landmarks = torch.stack([bw * marks[:, :5] + boxes[:, 0:1] - 1, bh * marks[:, 5:] + boxes[:, 1:2] - 1], 2)
        boxes = _regress(boxes, reg, 1.0)
        keep = nms(boxes, prob, 0.7, offset=1.0, overlap="min")  # kept in descending score order
        return Detections(boxes[keep].contiguous(), prob[keep].contiguous(), landmarks[keep].contiguous())

    def _stage1(self, img: torch.Tensor, layout: _SeparateLayout | _MosaicLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """PNet over the pyramid: squared candidate boxes (N, 4) and their scores, after both NMS passes."""
        if isinstance(layout, _MosaicLayout):
            canvas = img.new_zeros((1, 3, layout.height, layout.width))
            for lv in layout.levels:
                canvas[:, :, lv.y : lv.y + lv.h, lv.x : lv.x + lv.w] = F.adaptive_avg_pool2d(img, (lv.h, lv.w))
            canvas = _normalise(canvas, self.data[0]).contiguous(memory_format=torch.channels_last)
            with self._exact():
                prob, reg = self.pnet(canvas, layout.pool_bias)
            prob, reg = prob.flatten(), reg[0].flatten(1).t()
        else:
            probs, regs = [], []
            for lv in layout.levels:
                level = _normalise(F.adaptive_avg_pool2d(img, (lv.h, lv.w)), self.data[0])
                # channels-last: PNet's conv1 and max pool run about 3x faster on it on CPU
                with self._exact():
                    p, r = self.pnet(level.contiguous(memory_format=torch.channels_last))
                probs.append(p.flatten())
                regs.append(r[0].flatten(1).t())
            prob, reg = torch.cat(probs), torch.cat(regs)
        cells = layout.cells
        hit = prob >= self.thresholds[0]
        if cells.valid is not None:
            hit &= cells.valid
        idx = torch.nonzero(hit).squeeze(1)
        scale = cells.scale[idx]
        cx, cy = cells.x[idx], cells.y[idx]
        boxes = torch.stack(
            [
                ((PNET_STRIDE * cx + 1) / scale).floor(),
                ((PNET_STRIDE * cy + 1) / scale).floor(),
                ((PNET_STRIDE * cx + PNET_CELL) / scale).floor(),
                ((PNET_STRIDE * cy + PNET_CELL) / scale).floor(),
            ],
            dim=1,
        )
        score, reg = prob[idx], reg[idx]
        keep = batched_nms(boxes, score, cells.level[idx], 0.5)  # within each level
        boxes, score, reg = boxes[keep], score[keep], reg[keep]
        keep = nms(boxes, score, 0.7)  # across levels
        return _square(_regress(boxes[keep], reg[keep], 0.0)), score[keep]

    def _crops(
        self,
        img: torch.Tensor,
        sat: torch.Tensor | None,
        boxes: torch.Tensor,
        size: int,
        data: DataConfig | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Crops of the boxes (see `_crop_windows` for which pixels) at a stage's input size, normalised for it:
        (N, 3, size, size), and (N,) bool: whether each crop holds any image pixel."""
        h, w = img.shape[2:]
        x0, y0, x1, y1, ok = _crop_windows(boxes, h, w, self.pad_crops)
        if sat is not None:
            crops = _crops_from_table(sat, x0, y0, x1, y1, w, size)
            return _normalise(crops, data).permute(0, 3, 1, 2).contiguous(), ok
        crops = []
        for bx0, by0, bx1, by1 in torch.stack([x0, y0, x1, y1], 1).tolist():
            ix0, iy0, ix1, iy1 = max(bx0, 0), max(by0, 0), min(bx1, w), min(by1, h)
            patch = img[:, :, iy0:iy1, ix0:ix1]
            if (ix0, iy0, ix1, iy1) != (bx0, by0, bx1, by1):  # black beyond the border
                patch = F.pad(patch, (ix0 - bx0, bx1 - ix1, iy0 - by0, by1 - iy1))
            crops.append(F.adaptive_avg_pool2d(patch, (size, size)))
        return _normalise(torch.cat(crops), data), ok

    def _layout(self, h: int, w: int) -> _SeparateLayout | _MosaicLayout | None:
        key = (h, w)
        with self._layouts_lock:  # live sessions share one detector from their own threads
            if key in self._layouts:
                self._layouts.move_to_end(key)
                return self._layouts[key]
        scales = pyramid_scales(h, w, self.min_face_size, self.factor)
        if not scales:
            return None
        make = _mosaic_layout if self.batched else _separate_layout
        layout = make(h, w, scales, self.device)
        with self._layouts_lock:
            self._layouts[key] = layout
            # each session: its frame size, half of it when degraded, and source photos; several sessions
            if len(self._layouts) > LAYOUT_CACHE:
                self._layouts.popitem(last=False)
        return layout


def _normalise(x: torch.Tensor, data: DataConfig | None = None) -> torch.Tensor:
    data = data or registry.data_config("mtcnn_pnet")
    return (x - data.mean) * (1.0 / data.std)  # facenet-pytorch multiplies by 0.0078125: 1 / 128 exactly


def _regress(boxes: torch.Tensor, reg: torch.Tensor, plus: float) -> torch.Tensor:
    """Shift each side by reg x the box size; facenet-pytorch measures that size without +1 after PNet, with +1
    after RNet and ONet."""
    w = boxes[:, 2] - boxes[:, 0] + plus
    h = boxes[:, 3] - boxes[:, 1] + plus
    return boxes + reg * torch.stack([w, h, w, h], dim=1)


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """The square of side max(w, h) with the same centre."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    x0 = boxes[:, 0] + w * 0.5 - side * 0.5
    y0 = boxes[:, 1] + h * 0.5 - side * 0.5
    return torch.stack([x0, y0, x0 + side, y0 + side], dim=1)


def _crop_windows(boxes: torch.Tensor, h: int, w: int, pad: bool) -> tuple[torch.Tensor, ...]:
    """0-based pixel windows [x0, x1) x [y0, y1) (int64) of the boxes, and whether each holds an image pixel.

    Boxes are truncated to integers and read as 1-based pixels x0 .. x1, i.e. 0-based columns x0 - 1 .. x1 - 1.
    With `pad` the window is kept whole (what lies outside the image reads as black); without, it is clipped to
    the image. A window with no pixel in the image becomes 1x1 inside it (a valid read) and is flagged: the
    caller drops it (facenet-pytorch skips such a crop, which misaligns the crops of the boxes after it).
    """
    b = boxes.trunc().long()
    x0, y0, x1, y1 = b[:, 0] - 1, b[:, 1] - 1, b[:, 2], b[:, 3]
    if not pad:
        x0, y0, x1, y1 = x0.clamp(min=0), y0.clamp(min=0), x1.clamp(max=w), y1.clamp(max=h)
    ok = (x1 > x0) & (y1 > y0) & (x1 > 0) & (y1 > 0) & (x0 < w) & (y0 < h)
    x0 = torch.where(ok, x0, x0.clamp(0, w - 1))
    y0 = torch.where(ok, y0, y0.clamp(0, h - 1))
    return x0, y0, torch.where(ok, x1, x0 + 1), torch.where(ok, y1, y0 + 1), ok


def _summed_area_table(image: torch.Tensor) -> torch.Tensor:
    """(H + 1, W + 1, 3) prefix sums of an (H, W, 3) uint8 image, flattened to (-1, 3): any window's pixel sum
    from four reads, exact. Integers: int32 while the whole image's sum fits (up to 8.4 MP, 4K UHD included), else
    int64; half the memory of float64, and no fp64 arithmetic (slow on consumer GPUs)."""
    h, w = image.shape[:2]
    dtype = torch.int32 if h * w * 255 < 2**31 else torch.int64
    sat = torch.zeros((h + 1, w + 1, 3), dtype=dtype, device=image.device)
    sat[1:, 1:] = image.to(dtype).cumsum(0, dtype=dtype).cumsum(1, dtype=dtype)
    return sat.view(-1, 3)


def _crops_from_table(
    sat: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, x1: torch.Tensor, y1: torch.Tensor, w: int, size: int
) -> torch.Tensor:
    """(N, size, size, 3) area-resampled windows, as `adaptive_avg_pool2d` computes them: output cell i averages
    rows floor(i * n / size) .. ceil((i + 1) * n / size) - 1 of the window, the sum divided by the window's
    height, then by its width (the same roundings). Indices are clamped to the table: zeros outside the image."""
    h = sat.shape[0] // (w + 1) - 1
    i = torch.arange(size, device=sat.device)
    ch, cw = (y1 - y0)[:, None], (x1 - x0)[:, None]
    r0, r1 = y0[:, None] + (i * ch) // size, y0[:, None] + ((i + 1) * ch + size - 1) // size
    c0, c1 = x0[:, None] + (i * cw) // size, x0[:, None] + ((i + 1) * cw + size - 1) // size
    top, bottom = (r0.clamp(0, h) * (w + 1))[:, :, None], (r1.clamp(0, h) * (w + 1))[:, :, None]
    left, right = c0.clamp(0, w)[:, None, :], c1.clamp(0, w)[:, None, :]
    total = sat[bottom + right] - sat[top + right] - sat[bottom + left] + sat[top + left]
    return total.float() / (r1 - r0).float()[:, :, None, None] / (c1 - c0).float()[:, None, :, None]
