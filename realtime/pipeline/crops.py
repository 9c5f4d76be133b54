"""How an engine's aligned crops are framed (zoom, mask, colour transfer) and the pixelated stand-in for a face."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engines.errors import ConfigError
from realtime.pipeline.masks import CoverMask


@dataclass(frozen=True, slots=True)
class CropFraming:
    """What an engine's crops hold and how its output goes back: an engine may carry one as `framing` (a swap
    engine needs none: the network's template, the config's mask and colour transfer)."""

    zoom: float = 1.0  # the crop holds `zoom` times the template's field of view around its centre
    mask: CoverMask | None = None  # None: the pipeline config's mask
    colour_transfer: bool = True  # whether the config's colour transfer applies to this engine's output
    hides: bool = False  # the engine hides faces: then every tracked face is hidden, whatever the face mode chose

    def __post_init__(self) -> None:
        if not 1.0 <= self.zoom <= 4.0:  # also rejects NaN
            raise ConfigError(f"crop zoom must be 1..4, got {self.zoom}")


SWAP_FRAMING = CropFraming()


def engine_framing(engine: object) -> CropFraming:
    """The engine's own framing, else the swap's."""
    return getattr(engine, "framing", None) or SWAP_FRAMING


def zoom_out(matrices: np.ndarray, size: int, zoom: float) -> np.ndarray:
    """(N, 2, 3) frame → crop matrices whose crops hold `zoom` times as much around the crop's centre."""
    if zoom == 1.0:
        return matrices
    centre = (size - 1) / 2  # pixel centres at integers: the crop's middle
    out = np.array(matrices, np.float64, copy=True)
    out[:, :, :2] /= zoom
    out[:, :, 2] = (out[:, :, 2] - centre) / zoom + centre
    return out


def pixelate(crops: torch.Tensor, cells: int = 8) -> torch.Tensor:
    """(N, 3, S, S) crops reduced to `cells` x `cells` blocks: the face region stays, the identity does not."""
    size = crops.shape[-1]
    if size % cells:
        raise ValueError(f"crop size {size} is not a multiple of {cells} cells")
    small = F.avg_pool2d(crops.float(), size // cells)
    return F.interpolate(small, scale_factor=size // cells, mode="nearest").to(crops.dtype)
