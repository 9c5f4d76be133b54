"""`ModelSpec`: what to run — engine (and the anonymize engine's style), device, detector, backend, precision, model
directory — validated once, here.

Every front-end (`dancecam swap`, `cam`, `serve`, `bench`) turns its options into one of these and hands it to
`realtime.assembly.builder.build_models`; a bad value is a `ConfigError` at construction, before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engines.choices import (
    DEFAULT_BACKEND,
    DEFAULT_DETECTOR,
    DEFAULT_DEVICE,
    PRECISIONS,
    BackendChoice,
    DetectorName,
    Precision,
)
from engines.errors import ConfigError
from realtime.pipeline.choices import DEFAULT_ENGINE, DEFAULT_STYLE, ENGINES, STYLES, AnonymizeStyle, EngineName


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """The models of a pipeline and how they run; the same for every mode."""

    engine: EngineName = DEFAULT_ENGINE
    style: AnonymizeStyle = DEFAULT_STYLE  # how the anonymize engine hides faces (the other engines ignore it)
    device: str = DEFAULT_DEVICE  # auto, cpu or cuda[:N]
    detector: DetectorName = DEFAULT_DETECTOR  # auto: SCRFD on a GPU when det_10g.onnx is present, else MTCNN
    backend: BackendChoice = DEFAULT_BACKEND  # FaceDancer's: auto is the fastest present
    precision: Precision | None = None  # None: the backend's default (fp16 for CUDA graphs and TensorRT on a GPU)
    model_dir: Path | None = None  # None: $DANCECAM_HOME or ~/.cache/dancecam
    # ArcFace: None as the engine needs it (FaceDancer); True for the identity engine too (reference-person face
    # choice); False never (the benchmark swaps a fixed random identity)
    arcface: bool | None = None
    random_weights: bool = False  # FaceDancer config C with random weights (the same compute; the benchmark)
    weights_optional: bool = False  # missing weights: `Models.missing` says so instead of raising (the server)
    simulate_ms: float = 0.0  # extra milliseconds per swap call (SimulatedCost)

    def __post_init__(self) -> None:
        from engines.detectors import DETECTORS
        from engines.runners.select import BACKENDS
        from realtime.pipeline.frame import IdentitySwap, SimulatedCost

        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if self.style not in STYLES:
            raise ConfigError(f"--style must be one of {', '.join(STYLES)}, not {self.style!r}")
        if self.detector not in DETECTORS:
            raise ConfigError(f"unknown detector {self.detector!r}; choose one of: {', '.join(DETECTORS)}")
        if self.backend != "auto" and self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; choose one of: auto, {', '.join(BACKENDS)}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be {' or '.join(PRECISIONS)}, got {self.precision!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"--device must be auto, cpu or cuda[:N], got {self.device!r}")
        SimulatedCost(IdentitySwap(), self.simulate_ms)  # its range check: "--simulate-ms must be 0..10000"

    @property
    def needs_arcface(self) -> bool:
        return self.engine == "facedancer" and not self.random_weights if self.arcface is None else self.arcface

    @property
    def weight_names(self) -> list[str]:
        """The registry entries whose converted weights this spec loads, in load order."""
        facedancer = self.engine == "facedancer" and not self.random_weights
        return (["facedancer_c_hq"] if facedancer else []) + (["arcface_r50"] if self.needs_arcface else [])
