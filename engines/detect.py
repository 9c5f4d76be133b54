"""What every face detector returns, and the one call shape they share.

Detectors take one RGB uint8 image as an (H, W, 3) tensor on their device and return `Detections` on that same
device, in the image's pixel coordinates (pixel centres at integer coordinates, as OpenCV and the official
FaceDancer code use them). Landmark order is fixed: left eye, right eye, nose, left mouth corner, right mouth
corner, where left and right are as seen in the image (the ArcFace template's order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch


@dataclass(frozen=True, slots=True)
class Detections:
    boxes: torch.Tensor  # (N, 4) float32: x0, y0, x1, y1
    scores: torch.Tensor  # (N,) float32 in [0, 1]
    landmarks: torch.Tensor  # (N, 5, 2) float32: x, y

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @classmethod
    def empty(cls, device: torch.device | str = "cpu") -> Detections:
        z = torch.zeros
        return cls(z((0, 4), device=device), z((0,), device=device), z((0, 5, 2), device=device))

    def to(self, device: torch.device | str) -> Detections:
        return Detections(self.boxes.to(device), self.scores.to(device), self.landmarks.to(device))

    def select(self, index: torch.Tensor) -> Detections:
        return Detections(self.boxes[index], self.scores[index], self.landmarks[index])

    def sorted_by_area(self) -> Detections:
        """Largest face first."""
        area = (self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])
        return self.select(torch.argsort(area, descending=True))


class FaceDetector(Protocol):
    device: torch.device

    def __call__(self, image: torch.Tensor) -> Detections:
        """Faces in one (H, W, 3) uint8 RGB image on `self.device`."""
        ...


def image_tensor(image: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """An (H, W, 3) uint8 RGB image as a contiguous tensor on `device` (one copy when it comes from the host)."""
    t = torch.from_numpy(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image
    if t.dtype != torch.uint8 or t.ndim != 3 or t.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {tuple(t.shape)} {t.dtype}")
    return t.to(device, non_blocking=True).contiguous()
