"""The source identity: one or several weighted photos → checked, detected, embedded, mixed, w mapped once.

One type from the upload (or `--source PHOTO[:WEIGHT]`) to the engine: `SourceIdentity`, with a `SourcePhoto` per
photo. Each photo's size is read from its header before anything is decoded, and it is decoded at most once (not
at all when the identity cache already has it). w is mapped once per identity and shared by every session.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from engines.arcface import ArcFace
from engines.detect import FaceDetector, image_tensor
from engines.errors import ConfigError, ImageError, NoFaceError
from engines.facedancer import FaceDancer
from engines.identity import mix, source_face
from realtime.identity.cache import (
    SOURCE_MAX_SIDE,
    IdentityCache,
    check_data_size,
    decode_image,
    image_size,
    map_identity,
)

T = TypeVar("T")
DEFAULT_LABEL = "the source photo"
MAX_PHOTOS = 8  # photos mixed into one identity: each costs a detection and an ArcFace pass at upload


@dataclass(frozen=True, slots=True)
class PhotoInput:
    """One photo as given: its file's bytes, its weight (any scale: weights are normalised), a label for errors."""

    data: bytes
    weight: float = 1.0
    label: str = DEFAULT_LABEL


@dataclass(frozen=True, slots=True)
class SourcePhoto:
    """One photo of an identity: where its face is and what it weighs in the mix."""

    key: str  # sha256 of the file (and, with an identity cache, of the ArcFace weights): the cache's key
    weight: float  # normalised: an identity's weights sum to 1
    width: int  # the photo's own pixels (detection may have seen a downscaled copy)
    height: int
    box: tuple[float, float, float, float]  # the face used, x0, y0, x1, y1 in the photo's pixels
    score: float | None  # the detector's score, where it was run now
    faces_found: int  # > 1: the largest face was used
    z_id: torch.Tensor | None  # (512,) float32 on the CPU; None for the identity engine

    @property
    def note(self) -> str | None:
        return f"{self.faces_found} faces found; using the largest" if self.faces_found > 1 else None

    def to_json(self) -> dict[str, Any]:
        face: dict[str, Any] = {"box": [round(v, 1) for v in self.box]}
        if self.score is not None:
            face["score"] = round(self.score, 4)
        return {
            "key": self.key,
            "weight": round(self.weight, 6),
            "faces_found": self.faces_found,
            "note": self.note,
            "face": face,
            "width": self.width,
            "height": self.height,
        }


@dataclass(frozen=True, slots=True)
class SourceIdentity:
    """What every session swaps in: the photos, their mixed z_id and the w mapped from it (once)."""

    key: str  # one photo: its key; several: a hash of (key, weight) pairs, whatever order they came in
    photos: tuple[SourcePhoto, ...]  # sorted by key, duplicates merged, weight-0 photos left out
    z_id: torch.Tensor | None  # (512,) float32 on the CPU; None for the identity engine
    w: torch.Tensor | None  # (mapping_width,) float32 on the CPU; None without FaceDancer
    version: int = 1  # increases with every upload: sessions notice a new source by it

    @property
    def note(self) -> str | None:
        notes = [f"photo {i + 1}: {p.note}" if len(self.photos) > 1 else p.note for i, p in enumerate(self.photos)]
        return "; ".join(n for n in notes if n) or None

    def to_json(self) -> dict[str, Any]:
        first = self.photos[0]
        # the first photo's face, width and height stay at the top level for clients of one-photo sources
        return {
            "key": self.key,
            "note": self.note,
            "photos": [p.to_json() for p in self.photos],
            "face": first.to_json()["face"],
            "width": first.width,
            "height": first.height,
        }


def parse_photo_arg(text: str) -> tuple[Path, float]:
    """`PHOTO[:WEIGHT]` → (path, weight); a path that itself holds a colon keeps it unless a number follows."""
    path, sep, tail = text.rpartition(":")
    if sep and path:
        try:
            weight = float(tail)
        except ValueError:
            return Path(text), 1.0
        return Path(path), check_weight(weight)
    return Path(text), 1.0


def check_weight(value: float) -> float:
    """One photo's weight; `ConfigError` unless it is a finite number ≥ 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"a source photo's weight must be a number >= 0, got {value!r}")
    return float(value)


def check_weights(weights: Sequence[float]) -> list[float]:
    """The weights normalised to sum to 1; `ConfigError` unless each is a finite number ≥ 0 and not all are 0."""
    values = [check_weight(v) for v in weights]
    total = sum(values)
    if not values or total <= 0:
        raise ConfigError("the source photos' weights are all 0: give at least one photo a weight above 0")
    return [v / total for v in values]


def identity_key(photos: Sequence[SourcePhoto]) -> str:
    if len(photos) == 1:
        return photos[0].key
    pairs = "|".join(f"{p.key}:{p.weight:.6f}" for p in sorted(photos, key=lambda p: p.key))
    return hashlib.sha256(pairs.encode()).hexdigest()


def _named(label: str, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)`, with an `ImageError` naming the photo it is about (a path, or "source photo 2")."""
    try:
        return fn(*args)
    except ImageError as e:
        if label == DEFAULT_LABEL:
            raise
        raise ImageError(f"{label}: {e}") from None


class IdentityBuilder:
    """Builds `SourceIdentity`s with one detector, and for FaceDancer ArcFace (+ the cache, + the model for w).

    The one place that turns photos into an identity: file mode, the camera and the server all use it.
    """

    def __init__(
        self,
        detector: FaceDetector,
        arcface: ArcFace | None = None,
        facedancer: FaceDancer | None = None,
        cache: IdentityCache | None = None,
    ) -> None:
        self.detector, self.arcface, self.facedancer, self.cache = detector, arcface, facedancer, cache

    def build(self, inputs: Sequence[PhotoInput], version: int = 1) -> SourceIdentity:
        """Raises `ConfigError` (count, weights), `ImageError` or `NoFaceError` (naming the photo) before anything
        is returned; the caller's current identity is then untouched."""
        if not inputs:
            raise ConfigError("no source photo: give at least one")
        if len(inputs) > MAX_PHOTOS:
            raise ConfigError(f"{len(inputs)} source photos; one identity mixes at most {MAX_PHOTOS}")
        weights = check_weights([p.weight for p in inputs])
        sizes = []
        for p in inputs:  # every photo's bytes and header are checked, even a weight-0 one's
            _named(p.label, check_data_size, p.data)
            sizes.append(_named(p.label, image_size, p.data))
        merged: dict[str, tuple[PhotoInput, tuple[int, int], float]] = {}
        for p, size, weight in zip(inputs, sizes, weights, strict=True):
            if weight == 0:
                continue
            sha = hashlib.sha256(p.data).hexdigest()
            first, first_size, total = merged.get(sha, (p, size, 0.0))
            merged[sha] = (first, first_size, total + weight)  # the same photo twice counts once, with both weights
        photos = sorted(
            (_named(p.label, self._photo, p, size, weight) for p, size, weight in merged.values()),
            key=lambda p: p.key,
        )
        z = None
        if self.arcface is not None:
            z = mix([p.z_id for p in photos], [p.weight for p in photos])  # type: ignore[misc]
        w = map_identity(self.facedancer, z) if self.facedancer is not None and z is not None else None
        return SourceIdentity(identity_key(photos), tuple(photos), z, w, version)

    def _photo(self, given: PhotoInput, size: tuple[int, int], weight: float) -> SourcePhoto:
        width, height = size  # from the header, read once in `build`
        if self.arcface is not None and self.cache is not None:
            entry = self.cache.get_or_compute(given.data, self.detector, self.arcface, label=given.label)
            box = tuple(float(v) for v in entry.box)
            return SourcePhoto(entry.key, weight, width, height, box, None, entry.faces_found, entry.z_id)  # type: ignore[arg-type]
        image = decode_image(given.data, SOURCE_MAX_SIDE)
        scale = max(width, height) / max(image.shape[:2])  # back to the photo's own pixels
        key = hashlib.sha256(given.data).hexdigest()
        if self.arcface is not None:
            face = source_face(image, self.detector, self.arcface, label=given.label)
            box = tuple(float(v) * scale for v in face.box)
            z = face.z_id.detach().float().cpu()
            return SourcePhoto(key, weight, width, height, box, None, face.faces_found, z)  # type: ignore[arg-type]
        found = self.detector(image_tensor(image, self.detector.device))
        if len(found) == 0:
            raise NoFaceError(
                f"no face found in {given.label}: use a photo where one face is clearly visible, frontal and lit"
            )
        largest = found.sorted_by_area()
        box = tuple(float(v) * scale for v in largest.boxes[0].cpu().tolist())
        score = float(np.asarray(largest.scores[0].cpu()))
        return SourcePhoto(key, weight, width, height, box, score, len(found), None)  # type: ignore[arg-type]
