"""`build_models`: a `ModelSpec` → `Models` (detector, FaceDancer, ArcFace, identity cache), and from `Models` the
swap engine on the backend chosen once, the identity builder and the ArcFace embedder.

The one place models and engines are made: file mode, the camera, the server and the benchmark all come here.
Library code: typed errors, never prints or exits.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from engines.detect import FaceDetector
from engines.errors import ConfigError, ModelMissingError, NoSourceError
from engines.runners.base import Runner, facedancer_io
from realtime.assembly.spec import ModelSpec
from realtime.assembly.weights import find_weights
from realtime.identity.cache import IdentityCache, default_identity_dir
from realtime.identity.source import IdentityBuilder, SourceIdentity
from realtime.pipeline.anonymize import FaceAnonymizer
from realtime.pipeline.choices import AnonymizeStyle
from realtime.pipeline.frame import ArcFaceEmbedder, FaceDancerSwap, IdentitySwap, SimulatedCost

log = logging.getLogger(__name__)
SwapEngineKind = FaceDancerSwap | IdentitySwap | FaceAnonymizer | SimulatedCost


class Models:
    """What `build_models` made for a spec. `backend` is None until chosen (`choose_backend`, or the first
    `swap_engine`); from then on every engine runs on it."""

    def __init__(
        self,
        spec: ModelSpec,
        device: torch.device,
        detector: FaceDetector,
        detector_note: str = "",
        facedancer: torch.nn.Module | None = None,
        arcface: torch.nn.Module | None = None,
        identities: IdentityCache | None = None,
        weights_key: str = "random",
        cache_dir: Path | None = None,
        label: str = "",
        missing: ModelMissingError | None = None,
        backend: str | None = None,
        precision: str | None = None,
    ) -> None:
        self.spec = spec
        self.device = device
        self.detector = detector
        self.detector_note = detector_note
        self.facedancer = facedancer
        self.arcface = arcface
        self.identities = identities
        self.weights_key = weights_key  # names the weights in cached exports and compiled engines
        self.cache_dir = cache_dir  # compiled and exported networks (None: <model dir>/compiled)
        self.label = label  # which FaceDancer weights, for reports
        self.missing = missing  # the weights that were not found (spec.weights_optional)
        self.backend = backend
        self.precision = precision
        self.backend_message: str | None = None

    def choose_runner(self, backend: str | None = None) -> tuple[Runner, str]:
        """An activated FaceDancer runner and the line that says which. Without `backend` it is the spec's, and
        the choice is kept: every later engine runs on it."""
        from engines.runners.select import choose

        assert self.facedancer is not None
        config = self.facedancer.config
        runner, message = choose(
            backend or self.spec.backend,
            self.facedancer,
            facedancer_io(config.mapping_width, config.image_size),
            self.device,
            precision=self.spec.precision,  # type: ignore[arg-type]
            cache_dir=self.cache_dir,
            weights_key=self.weights_key,
        )
        if backend is None:
            self.backend, self.precision, self.backend_message = runner.backend, runner.precision, message
        return runner, message

    def choose_backend(self) -> str:
        """Decide FaceDancer's backend once (for "auto": time the ones present); returns the line that says which.
        Its runner is closed: each engine gets its own (CUDA graphs and TensorRT hold per-stream state)."""
        runner, message = self.choose_runner()
        runner.close()
        return message

    def swap_engine(self, source: SourceIdentity | None, style: AnonymizeStyle | None = None) -> SwapEngineKind:
        """The swap engine for `source`: FaceDancer on the chosen backend (chosen now on the first call, its runner
        used), the identity engine, or the anonymize engine in `style` (None: the spec's; it takes no source); with
        the spec's simulated cost. `NoSourceError` for FaceDancer without a source."""
        engine: FaceDancerSwap | IdentitySwap | FaceAnonymizer
        if self.spec.engine == "identity":
            engine = IdentitySwap()
        elif self.spec.engine == "anonymize":
            engine = FaceAnonymizer(style or self.spec.style)
        else:
            if source is None or source.w is None or self.facedancer is None:
                raise NoSourceError("no source photo yet: upload one before starting")
            if self.backend is None:
                runner, _ = self.choose_runner()
            else:
                from engines.runners.select import create_runner

                config = self.facedancer.config
                runner = create_runner(
                    self.backend,
                    self.facedancer,
                    facedancer_io(config.mapping_width, config.image_size),
                    self.device,
                    precision=self.precision,  # type: ignore[arg-type]
                    cache_dir=self.cache_dir,
                    weights_key=self.weights_key,
                )
            engine = FaceDancerSwap(self.facedancer, source.z_id, runner, w=source.w)  # type: ignore[arg-type]
        return SimulatedCost(engine, self.spec.simulate_ms) if self.spec.simulate_ms else engine

    def identity_builder(self) -> IdentityBuilder:
        """Photos → `SourceIdentity`: embedded (and w mapped) for FaceDancer, only checked for a face otherwise."""
        if self.spec.engine != "facedancer":
            return IdentityBuilder(self.detector)
        return IdentityBuilder(self.detector, self.arcface, self.facedancer, self.identities)  # type: ignore[arg-type]

    def embedder(self) -> ArcFaceEmbedder:
        """ArcFace on target faces (reference-person face choice)."""
        if self.arcface is None:
            raise ConfigError("reference-person face choice needs ArcFace: the spec loads it with arcface=True")
        return ArcFaceEmbedder(self.arcface)  # type: ignore[arg-type]


def build_models(spec: ModelSpec) -> Models:
    """Resolve the device (and check the backend can run there), find the weights, load the detector and the
    networks the spec needs, and open the identity cache; nothing is chosen twice.

    Missing weights raise `ModelMissingError` naming the commands that fix them, or with `spec.weights_optional`
    are reported in `Models.missing` (the detector still loads).
    """
    from engines import registry
    from engines.arcface import load_arcface
    from engines.detectors import load_detector
    from engines.facedancer import facedancer, load_facedancer
    from engines.store import resolve_model_dir
    from realtime.pipeline.context import DeviceContext, resolve_device

    device = resolve_device(spec.device)
    if spec.engine == "facedancer" and spec.backend != "auto":
        from engines.runners.select import available

        why = available(device)[spec.backend]
        if why:  # before any model loads
            raise ConfigError(f"--backend {spec.backend} cannot run on {device}: {why}")
    if device.type == "cuda":
        DeviceContext(device).close()  # CuPy and the warp kernels: a broken set-up stops here, before any model
    home = resolve_model_dir(spec.model_dir)
    names = spec.weight_names
    missing: ModelMissingError | None = None
    try:
        found = find_weights([registry.find(n) for n in names], home, spec.model_dir is not None)
    except ModelMissingError as e:
        if not spec.weights_optional:
            raise
        missing, found = e, []
    detector, detector_note = load_detector(spec.detector, device, home, spec.backend, home / "compiled")
    if missing is not None:
        return Models(spec, device, detector, detector_note, cache_dir=home / "compiled", missing=missing)
    weights = dict(zip(names, found, strict=True))
    model = None
    key, label = "random", ""
    if spec.engine == "facedancer" and spec.random_weights:
        torch.manual_seed(0)
        model, label = facedancer("config_c").to(device).eval(), "FaceDancer config C, random weights"
    elif "facedancer_c_hq" in weights:
        path, key = weights["facedancer_c_hq"]
        model, label = load_facedancer(path, device), f"FaceDancer config C HQ ({path.name})"
    arcface = identities = None
    if "arcface_r50" in weights:
        arcface = load_arcface(weights["arcface_r50"][0], device)
        mapping_key = weights["facedancer_c_hq"][1] if "facedancer_c_hq" in weights else ""
        identities = IdentityCache(default_identity_dir(home), weights["arcface_r50"][1], mapping_key)
    # exported and compiled networks live beside the weights they came from
    return Models(spec, device, detector, detector_note, model, arcface, identities, key, home / "compiled", label)
