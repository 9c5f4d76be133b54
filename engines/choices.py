"""The engines' vocabulary: every set of names a user or a caller may pick from, defined once as a `Literal`.

Detectors, inference backends, precisions and networks. Each set's values (`typing.get_args`) are what argparse's
`choices=`, the settings checks and /api/info list, and each default lives here beside its set. This module imports
nothing heavy (no torch), so the command line can read it before it loads any model.
"""

from __future__ import annotations

from typing import Literal, get_args

DetectorName = Literal["auto", "mtcnn", "scrfd"]
# inference backends, slowest to fastest where all are present (auto tries them the other way round)
BackendName = Literal["eager", "onnxruntime", "cuda-graphs", "tensorrt"]
BackendChoice = Literal["auto", BackendName]  # what --backend takes: a backend, or auto (the fastest present)
Precision = Literal["fp32", "fp16"]
NetworkName = Literal["facedancer", "mapping", "arcface", "scrfd"]

DETECTORS: tuple[DetectorName, ...] = get_args(DetectorName)
BACKEND_NAMES: tuple[BackendName, ...] = get_args(BackendName)
BACKEND_CHOICES: tuple[BackendChoice, ...] = get_args(BackendChoice)
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
NETWORKS: tuple[NetworkName, ...] = get_args(NetworkName)

DEFAULT_DETECTOR: DetectorName = "auto"
DEFAULT_BACKEND: BackendChoice = "auto"
DEFAULT_DEVICE = "auto"  # auto, cpu or cuda[:N]: an open set, so no Literal
