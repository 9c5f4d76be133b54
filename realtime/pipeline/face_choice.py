"""Which detected faces get swapped: all of them, the largest, or those that look like a reference person.

Reference mode compares each face's ArcFace embedding with the reference embedding by cosine similarity; faces at or
above the threshold qualify, most similar first. Every mode keeps at most `max_faces`, larger faces first where
there is no similarity to rank by.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engines.errors import ConfigError
from realtime.pipeline.choices import (
    DEFAULT_FACE_MODE,
    DEFAULT_MAX_FACES,
    DEFAULT_THRESHOLD,
    FACE_MODES,
    MAX_FACES_RANGE,
    FaceMode,
)


@dataclass(frozen=True, slots=True)
class FaceChoice:
    mode: FaceMode = DEFAULT_FACE_MODE
    max_faces: int = DEFAULT_MAX_FACES
    threshold: float = DEFAULT_THRESHOLD  # cosine similarity for "reference"
    reference: np.ndarray | None = None  # (512,) embedding of the person to swap, for "reference"

    def __post_init__(self) -> None:
        if self.mode not in FACE_MODES:
            raise ConfigError(f"face mode must be one of {', '.join(FACE_MODES)}, not {self.mode!r}")
        lo, hi = MAX_FACES_RANGE
        if not lo <= self.max_faces <= hi:
            raise ConfigError(f"max faces must be between {lo} and {hi}, got {self.max_faces}")
        if not -1.0 <= self.threshold <= 1.0:
            raise ConfigError(f"the similarity threshold must be in [-1, 1], got {self.threshold}")
        if self.mode == "reference" and self.reference is None:
            raise ConfigError("face mode 'reference' needs a reference face (a photo of the person to swap)")

    @property
    def needs_embeddings(self) -> bool:
        return self.mode == "reference"


def cosine_similarity(embeddings: np.ndarray, reference: np.ndarray) -> np.ndarray:
    e = np.asarray(embeddings, np.float64)
    r = np.asarray(reference, np.float64).reshape(-1)
    norms = np.linalg.norm(e, axis=1) * np.linalg.norm(r)
    return (e @ r) / np.maximum(norms, 1e-12)


def choose_faces(boxes: np.ndarray, choice: FaceChoice, embeddings: np.ndarray | None = None) -> np.ndarray:
    """Indices into `boxes` ((N, 4) x0, y0, x1, y1) of the faces to swap, in the order to process them."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    by_area = np.argsort(-area, kind="stable")
    if choice.mode == "largest":
        return by_area[:1]
    if choice.mode == "all":
        return by_area[: choice.max_faces]
    if embeddings is None or len(embeddings) != len(boxes):
        raise ValueError("reference mode needs one embedding per detected face")
    assert choice.reference is not None
    sim = cosine_similarity(embeddings, choice.reference)
    order = np.argsort(-sim, kind="stable")
    return order[sim[order] >= choice.threshold][: choice.max_faces]
