"""Source identity: photo(s) → detect → align to 112x112 → ArcFace → z_id.

As in the official FaceDancer code, z_id is ArcFace's raw output for the aligned crop in [0, 1], with no L2
normalisation (FaceDancer's mapping network was trained on that scale). The crop is taken the way the official
code takes it: cv2.warpAffine with the similarity transform onto the ArcFace template, bilinear, black border.
Several source photos combine as a weighted mean of their raw embeddings (identity mixing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from engines import registry
from engines.align import estimate_norm
from engines.arcface import MODEL_NAME, ArcFace
from engines.detect import FaceDetector, image_tensor
from engines.errors import ConfigError, NoFaceError


@dataclass(frozen=True, slots=True)
class SourceFace:
    """One source photo's face: where it was found and its embedding."""

    z_id: torch.Tensor  # (512,) float32, on the ArcFace model's device
    box: np.ndarray  # (4,) x0, y0, x1, y1 in the photo
    landmarks: np.ndarray  # (5, 2)
    faces_found: int  # > 1: the largest face was used

    @property
    def note(self) -> str | None:
        if self.faces_found > 1:
            return f"{self.faces_found} faces found; using the largest"
        return None


def align_crop(image: np.ndarray, landmarks: np.ndarray, size: int | None = None) -> np.ndarray:
    """The face in an (H, W, 3) uint8 image warped onto ArcFace's template at `size` (default: its input size), as
    the official code does; both from ArcFace's registry entry."""
    data = registry.data_config(MODEL_NAME)
    size = size or data.input_size
    m = estimate_norm(torch.as_tensor(landmarks, dtype=torch.float64), size, data.template).cpu().numpy()
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)


@torch.inference_mode()
def embed(crops: np.ndarray, arcface: ArcFace) -> torch.Tensor:
    """(N, S, S, 3) uint8 aligned crops (S: ArcFace's input size) → (N, 512) raw ArcFace embeddings."""
    device = next(arcface.parameters()).device
    data = registry.data_config(MODEL_NAME)
    x = (torch.from_numpy(np.ascontiguousarray(crops)).to(device).permute(0, 3, 1, 2).float() - data.mean) / data.std
    return arcface(x)


def source_face(
    image: np.ndarray, detector: FaceDetector, arcface: ArcFace, label: str = "the source photo"
) -> SourceFace:
    """The largest face of one RGB photo and its embedding; `NoFaceError` when there is none."""
    found = detector(image_tensor(image, detector.device))
    if len(found) == 0:
        raise NoFaceError(f"no face found in {label}: use a photo where one face is clearly visible, frontal and lit")
    largest = found.sorted_by_area()
    box = largest.boxes[0].cpu().numpy()
    landmarks = largest.landmarks[0].cpu().numpy()
    z = embed(align_crop(image, landmarks)[None], arcface)[0]
    return SourceFace(z, box, landmarks, len(found))


def mix(embeddings: Sequence[torch.Tensor], weights: Sequence[float] | None = None) -> torch.Tensor:
    """Weighted mean of raw embeddings (weights need not sum to 1; they must be >= 0 and not all 0)."""
    if not embeddings:
        raise ConfigError("identity mixing needs at least one source")
    w = [1.0] * len(embeddings) if weights is None else [float(v) for v in weights]
    if len(w) != len(embeddings):
        raise ConfigError(f"{len(embeddings)} sources but {len(w)} weights")
    if any(not np.isfinite(v) or v < 0 for v in w) or sum(w) <= 0:
        raise ConfigError(f"source weights must be >= 0 and not all 0, got {w}")
    stacked = torch.stack(list(embeddings))
    coeff = torch.tensor(w, dtype=stacked.dtype, device=stacked.device) / sum(w)
    return (coeff[:, None] * stacked).sum(0)


def source_identity(
    images: Sequence[np.ndarray],
    detector: FaceDetector,
    arcface: ArcFace,
    weights: Sequence[float] | None = None,
) -> tuple[torch.Tensor, list[SourceFace]]:
    """z_id (512,) for one or several source photos, and what was found in each."""
    faces = [source_face(img, detector, arcface, label=f"source photo {i + 1}") for i, img in enumerate(images)]
    return mix([f.z_id for f in faces], weights), faces
