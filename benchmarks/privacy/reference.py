"""The independent ground truth: facenet-pytorch's own MTCNN code (not engines/mtcnn.py) run on the input frames.

facenet-pytorch is installed with --no-deps, so its package `__init__` (which imports `requests` for its face
recogniser) and its detector's `torchvision` imports may be missing here. Then its modules are loaded without the
package `__init__`, and the one torchvision call detection makes, `batched_nms`, is served by facenet-pytorch's own
numpy NMS (`batched_nms_numpy`, IoU method), so every line that runs is still facenet-pytorch's.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from dataclasses import dataclass
from typing import Any

import numpy as np

_FAKES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional", "torchvision.ops")
_FAKES += ("torchvision.ops.boxes",)


@dataclass(frozen=True, slots=True)
class Found:
    """Faces facenet-pytorch's MTCNN found in one frame (pixels of that frame)."""

    boxes: np.ndarray  # (N, 4) x0, y0, x1, y1
    scores: np.ndarray  # (N,)
    landmarks: np.ndarray  # (N, 5, 2)


def _batched_nms(boxes: Any, scores: Any, idxs: Any, threshold: float) -> Any:
    """torchvision's `batched_nms` as facenet-pytorch's own numpy version computes it (looked up at call time: it
    lives in the module this stands in for)."""
    detect_face = sys.modules["facenet_pytorch.models.utils.detect_face"]
    return detect_face.batched_nms_numpy(boxes, scores, idxs, threshold, "Union")


def _load_mtcnn_class() -> tuple[type, str]:
    """facenet_pytorch.MTCNN, and how it was loaded."""
    try:
        from facenet_pytorch import MTCNN

        return MTCNN, "facenet_pytorch.MTCNN"
    except ImportError:
        pass
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("facenet-pytorch is not installed: pip install --no-deps facenet-pytorch==2.6.0")
    for name in [n for n in sys.modules if n == "facenet_pytorch" or n.startswith("facenet_pytorch.")]:
        del sys.modules[name]  # a half-imported package from the failed attempt
    package = importlib.util.module_from_spec(spec)  # the package without running its __init__
    sys.modules["facenet_pytorch"] = package
    added: list[str] = []
    try:
        importlib.import_module("torchvision.ops.boxes")
        how = "facenet_pytorch.models.mtcnn (package __init__ skipped)"
    except ImportError:
        for name in _FAKES:
            if name not in sys.modules:
                sys.modules[name] = types.ModuleType(name)
                added.append(name)
        sys.modules["torchvision.ops.boxes"].batched_nms = _batched_nms  # type: ignore[attr-defined]
        how = "facenet_pytorch.models.mtcnn (package __init__ skipped; NMS: its own batched_nms_numpy)"
    try:
        module = importlib.import_module("facenet_pytorch.models.mtcnn")
    finally:
        for name in added:  # nothing else in this process may mistake the stand-in for torchvision
            sys.modules.pop(name, None)
    return module.MTCNN, how


class ReferenceDetector:
    """facenet-pytorch's MTCNN on the CPU with its default thresholds; `min_face` pixels is its smallest face."""

    def __init__(self, min_face: int = 20) -> None:
        import torch

        cls, self.loaded_as = _load_mtcnn_class()
        self.mtcnn = cls(keep_all=True, min_face_size=min_face, device=torch.device("cpu"))

    def __call__(self, rgb: np.ndarray) -> Found:
        boxes, scores, points = self.mtcnn.detect(np.ascontiguousarray(rgb), landmarks=True)
        if boxes is None:
            return Found(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))
        # under numpy 2 these may come back as object arrays
        return Found(
            np.asarray(np.stack(list(boxes)), np.float64).reshape(-1, 4),
            np.asarray(list(scores), np.float64).reshape(-1),
            np.asarray(np.stack(list(points)), np.float64).reshape(-1, 5, 2),
        )
