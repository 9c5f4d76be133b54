"""Which face detector a pipeline runs: MTCNN or SCRFD-10GF, by name or `auto`.

Design notes: docs/design-notes.md, section engines/detectors.py.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engines.choices import DETECTORS
from engines.command import dancecam
from engines.detect import FaceDetector
from engines.errors import ConfigError


def scrfd_path(model_dir: Path) -> Path:
    """Where `dancecam models download scrfd_10g` puts det_10g.onnx in `model_dir`."""
    from engines import registry, store
    from engines.scrfd import MODEL_NAME

    path = store.file_path(registry.find(MODEL_NAME), model_dir)
    assert path is not None  # a downloadable entry always has a place in the model directory
    return path


def decide(name: str, device_type: str, scrfd_present: bool, scrfd_on_gpu: bool = True) -> tuple[str, str]:
    """(mtcnn or scrfd, why) for a requested `name`; ConfigError for an unknown one.

    `scrfd_on_gpu`: whether SCRFD can run on the GPU here (TensorRT, or onnxruntime's CUDA provider).
    """
    if name not in DETECTORS:
        raise ConfigError(f"unknown detector {name!r}; choose one of: {', '.join(DETECTORS)}")
    if name == "scrfd" and device_type == "cuda" and not scrfd_on_gpu:
        return name, "asked for; no TensorRT and no CUDA provider in onnxruntime here, so it runs on the CPU"
    if name != "auto":
        return name, "asked for"
    if device_type != "cuda":
        return "mtcnn", "the cheaper one on a CPU"
    if not scrfd_present:
        return "mtcnn", f"SCRFD is faster on a GPU: `{dancecam('models', 'download', 'scrfd_10g')}` to use it"
    if not scrfd_on_gpu:
        return "mtcnn", "SCRFD would run on the CPU: no TensorRT, no CUDA provider in onnxruntime (onnxruntime-gpu)"
    return "scrfd", "a GPU, det_10g.onnx and a GPU runtime for it"


def scrfd_backend(backend: str, device: torch.device) -> tuple[str, str | None]:
    """(tensorrt or onnxruntime, why not TensorRT) for SCRFD under the user's `--backend`.

    TensorRT (fp16, built from the ONNX file) when asked for, or for auto on a GPU where it is usable; ONNX Runtime
    otherwise: SCRFD is an ONNX graph, so the torch backends (eager, CUDA graphs) do not apply to it.
    """
    if device.type != "cuda" or backend not in ("auto", "tensorrt"):
        return "onnxruntime", None
    from engines.runners.tensorrt_onnx import unavailable_reason

    reason = unavailable_reason()
    return ("onnxruntime", reason) if reason else ("tensorrt", None)


def _scrfd(path: Path, device: torch.device, backend: str, cache_dir: Path) -> tuple[FaceDetector, str, bool]:
    """SCRFD on TensorRT or ONNX Runtime, the line that says which, and whether it runs on the GPU."""
    from engines.runners.onnxruntime import OnnxRuntimeRunner
    from engines.scrfd import SCRFD, scrfd_io

    io = scrfd_io()
    chosen, why_not = scrfd_backend(backend, device)
    note = ""
    if chosen == "tensorrt":
        from engines.runners.tensorrt_onnx import TensorRTOnnxRunner

        runner = TensorRTOnnxRunner(path, io, device, cache_dir=cache_dir, precision="fp16")
        try:
            return SCRFD(device=device, runner=runner), "on tensorrt fp16", True
        except Exception as e:  # a failed engine build costs the fast detector, not the session
            runner.close()
            note = f"; TensorRT failed ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    elif backend == "tensorrt" and why_not:
        note = f"; not TensorRT: {why_not}"
    ort = OnnxRuntimeRunner(path, io, device)
    detector = SCRFD(device=device, runner=ort)
    return detector, f"on onnxruntime{note}", device.type != "cuda" or ort.io_binding


def load_detector(
    name: str, device: torch.device, model_dir: Path, backend: str = "auto", cache_dir: Path | None = None
) -> tuple[FaceDetector, str]:
    """The detector `name` on `device`, and a line that says which, where it runs (and why, for auto).

    SCRFD runs on TensorRT or ONNX Runtime per `scrfd_backend` (engines cached in `cache_dir`, by default
    `<model_dir>/compiled`). SCRFD asked for by name without its file: `ModelMissingError` naming the download
    command.
    """
    path = scrfd_path(model_dir)
    on_gpu = False
    if device.type == "cuda":
        from engines.runners.onnxruntime import cuda_provider_present

        on_gpu = cuda_provider_present() or scrfd_backend(backend, device)[0] == "tensorrt"
    requested = name
    name, why = decide(name, device.type, path.is_file(), on_gpu)
    if name == "scrfd":
        from engines.scrfd import require_model

        require_model(path)
        detector, where, on_device = _scrfd(path, device, backend, cache_dir or model_dir / "compiled")
        if on_device or requested != "auto":
            return detector, f"detector scrfd {where} ({why})"
        detector.close()  # auto chose SCRFD for a GPU runtime that then failed: MTCNN on the GPU is faster
        why = f"SCRFD would run on the CPU: {where.removeprefix('on onnxruntime; ')}"
    from engines.mtcnn import MTCNN

    return MTCNN(device), f"detector mtcnn ({why})"
