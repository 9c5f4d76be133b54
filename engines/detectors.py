"""Which face detector a pipeline runs: MTCNN or SCRFD-10GF, by name or `auto`.

MTCNN is embedded (its weights ship in the facenet-pytorch wheel) and cheap on a CPU. SCRFD-10GF (`det_10g.onnx`,
`dancecam models download scrfd_10g`) is one network pass instead of a cascade with host round trips, so it is
the faster one on a GPU, but only where ONNX Runtime can run it there (the CUDA provider, onnxruntime-gpu): with
the CPU provider every detection would copy the frame to the host and run the network on the CPU, slower than MTCNN
on the GPU. `auto` takes SCRFD on a CUDA device when its file is in the model directory and that provider is
present, else MTCNN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from engines.detect import FaceDetector
from engines.errors import ConfigError

DetectorName = Literal["auto", "mtcnn", "scrfd"]
DETECTORS: tuple[str, ...] = ("auto", "mtcnn", "scrfd")


def scrfd_path(model_dir: Path) -> Path:
    """Where `dancecam models download scrfd_10g` puts det_10g.onnx in `model_dir`."""
    from engines import registry, store
    from engines.scrfd import MODEL_NAME

    path = store.file_path(registry.find(MODEL_NAME), model_dir)
    assert path is not None  # a downloadable entry always has a place in the model directory
    return path


def decide(name: str, device_type: str, scrfd_present: bool, scrfd_on_gpu: bool = True) -> tuple[str, str]:
    """(mtcnn or scrfd, why) for a requested `name`; ConfigError for an unknown one.

    `scrfd_on_gpu`: whether ONNX Runtime can run SCRFD on the GPU here (its CUDA provider is present).
    """
    if name not in DETECTORS:
        raise ConfigError(f"unknown detector {name!r}; choose one of: {', '.join(DETECTORS)}")
    if name == "scrfd" and device_type == "cuda" and not scrfd_on_gpu:
        return name, "asked for; onnxruntime has no CUDA provider here, so it runs on the CPU"
    if name != "auto":
        return name, "asked for"
    if device_type != "cuda":
        return "mtcnn", "the cheaper one on a CPU"
    if not scrfd_present:
        return "mtcnn", "SCRFD is faster on a GPU: `dancecam models download scrfd_10g` to use it"
    if not scrfd_on_gpu:
        return "mtcnn", "SCRFD would run on the CPU: onnxruntime has no CUDA provider (pip install onnxruntime-gpu)"
    return "scrfd", "a GPU, det_10g.onnx and onnxruntime's CUDA provider present"


def load_detector(name: str, device: torch.device, model_dir: Path) -> tuple[FaceDetector, str]:
    """The detector `name` on `device`, and a line that says which (and why, for auto).

    SCRFD asked for by name without its file: `ModelMissingError` naming the download command.
    """
    path = scrfd_path(model_dir)
    on_gpu = False
    if device.type == "cuda":
        from engines.runners.onnxruntime import cuda_provider_present

        on_gpu = cuda_provider_present()
    name, why = decide(name, device.type, path.is_file(), on_gpu)
    if name == "scrfd":
        from engines.scrfd import SCRFD

        return SCRFD(path, device), f"detector scrfd ({why})"
    from engines.mtcnn import MTCNN

    return MTCNN(device), f"detector mtcnn ({why})"
