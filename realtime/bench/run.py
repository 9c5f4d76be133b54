"""`dancecam bench`: end-to-end latency of the frame pipeline per backend, resolution and face count, with the
compute floor, the machine and its library versions, so that runs on different machines compare.

Design notes: docs/design-notes.md, section realtime/bench/run.py.
"""

from __future__ import annotations

import importlib.util
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engines.choices import (
    BACKEND_NAMES,
    DEFAULT_DETECTOR,
    DEFAULT_DEVICE,
    DETECTORS,
    PRECISIONS,
    DetectorName,
    Precision,
)
from engines.detect import FaceDetector
from engines.errors import ConfigError, DanceCamError, ModelMissingError
from engines.facedancer import FaceDancer
from engines.runners.select import available
from realtime.assembly import builder
from realtime.assembly.builder import Models
from realtime.assembly.spec import ModelSpec
from realtime.pipeline.choices import DEFAULT_DETECT_EVERY, DETECT_EVERY_RANGE
from realtime.pipeline.frame import FaceDancerSwap, SwapEngine

Progress = Callable[[str], None]
STAGE_ORDER = ("upload", "to_rgb", "detect", "track", "align", "swap", "colour", "paste", "to_yuv", "download")
MAX_FACES = 8  # the runners' largest batch
FLOP_NOTE = "FlopCounterMode on the module: FLOP = 2 x MAC of convolutions and dense layers, element-wise ops excluded"


@dataclass(frozen=True, slots=True)
class BenchOptions:
    backends: tuple[str, ...] = ()  # empty: every backend this machine has; ("auto",): the fastest one
    sizes: tuple[tuple[int, int], ...] = ((640, 480), (1280, 720))
    faces: tuple[int, ...] = (1, 4)
    frames: int = 100
    max_seconds: float = 60.0  # timed seconds per case at most (0: no limit): a CPU at seconds per frame still ends
    warmup: int = 10
    detect_every: int = DEFAULT_DETECT_EVERY
    device: str = DEFAULT_DEVICE
    precision: Precision | None = None  # None: each backend's default (fp16 for CUDA graphs and TensorRT on a GPU)
    detector: DetectorName = DEFAULT_DETECTOR  # auto: what swap, cam and serve would run here (engines.detectors)
    random_weights: bool = False
    model_dir: Path | None = None
    command: str = "dancecam bench"

    def __post_init__(self) -> None:
        if not 1 <= self.frames <= 100_000:
            raise ConfigError(f"--frames must be 1..100000, got {self.frames}")
        if not 0 <= self.max_seconds <= 86_400:
            raise ConfigError(f"--max-seconds must be 0..86400 (0: no limit), got {self.max_seconds}")
        if not 0 <= self.warmup <= 10_000:
            raise ConfigError(f"--warmup must be 0..10000, got {self.warmup}")
        if not self.sizes or not self.faces:
            raise ConfigError("give at least one size and one face count")
        for w, h in self.sizes:
            if w < 160 or h < 120 or w > 7680 or h > 4320 or w % 2 or h % 2:
                raise ConfigError(f"size {w}x{h}: width and height must be even, 160x120 .. 7680x4320")
        for n in self.faces:
            if not 1 <= n <= MAX_FACES:
                raise ConfigError(f"face count {n}: must be 1..{MAX_FACES} (the largest batch of every backend)")
        lo, hi = DETECT_EVERY_RANGE
        if not lo <= self.detect_every <= hi:
            raise ConfigError(f"--detect-every must be {lo}..{hi} frames, got {self.detect_every}")
        if self.detector not in DETECTORS:
            raise ConfigError(f"unknown detector {self.detector!r}; choose one of: {', '.join(DETECTORS)}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def model_spec(self, backends: list[str] | None = None) -> ModelSpec:
        """The models the cases share, as the product builds them: FaceDancer (no ArcFace: a fixed random identity)
        and the detector, which follows the one backend asked for (SCRFD on TensorRT or ONNX Runtime)."""
        backend = backends[0] if backends is not None and len(backends) == 1 else "auto"
        return ModelSpec(
            engine="facedancer",
            device=self.device,
            detector=self.detector,
            backend=backend,
            precision=self.precision,
            model_dir=self.model_dir,
            arcface=False,
            random_weights=self.random_weights,
        )


@dataclass(slots=True)
class Backend:
    """One backend as the benchmark ran it (or why it could not)."""

    name: str
    precision: str = ""
    message: str = ""
    error: str | None = None
    engine: SwapEngine | None = field(default=None, repr=False)
    close: Callable[[], None] = field(default=lambda: None, repr=False)


# --- the machine ----------------------------------------------------------------------------------------------


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def device_slug(device: torch.device) -> str:
    """`cpu-amd-epyc`, `cuda-nvidia-h200`: the device part of result file names (the benchmarks' rule)."""
    name = device_name(device).lower()
    return device.type + "-" + "".join(ch if ch.isalnum() else "-" for ch in name).strip("-")[:40]


def _version(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return str(__import__(module).__version__)
    except Exception as e:  # a broken install says so instead of failing the benchmark
        return f"unusable ({type(e).__name__})"


def _driver_version(index: int) -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", str(index)],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """The device and every version that changes the numbers."""
    from realtime import __version__

    env: dict[str, Any] = {
        "device": device_name(device),
        "device_type": device.type,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "dancecam": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "onnxruntime": _version("onnxruntime"),
        "torch_tensorrt": _version("torch_tensorrt"),
        "tensorrt": _version("tensorrt"),
        "cupy": _version("cupy"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "driver": None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            driver=_driver_version(device.index or 0),
            compute_capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            cudnn_tf32=bool(torch.backends.cudnn.allow_tf32),
        )
    return env


# --- frames ---------------------------------------------------------------------------------------------------


def grid_placements(n: int) -> list[tuple[float, float, float]]:
    """(cx, cy, height) as fractions of the frame for `n` faces on a grid: one large face, or a grid of them."""
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    height = min(0.45, 0.6 / rows)
    return [((i % cols + 0.5) / cols, (i // cols + 0.5) / rows, height) for i in range(n)]


def face_frame(width: int, height: int, faces: int) -> tuple[np.ndarray, str]:
    """An RGB frame with `faces` real faces on a grid, and what made it (the astronaut: scikit-image's, or the PNG
    named by $DANCECAM_ASTRONAUT)."""
    from realtime.bench.faces import Placement, compose_faces

    try:
        frame, _ = compose_faces(width, height, tuple(Placement(*p) for p in grid_placements(faces)))
    except ImportError:  # neither scikit-image nor $DANCECAM_ASTRONAUT
        raise ConfigError(
            "dancecam bench makes its frames from scikit-image's astronaut photo: install it with "
            "`.venv/bin/python -m pip install scikit-image` (a dependency of dancecam: re-run scripts/setup.sh)"
        ) from None
    return frame, "realtime.bench.faces.compose_faces (astronaut)"


# --- the model and the backends -------------------------------------------------------------------------------


def load_models(options: BenchOptions, backends: list[str] | None = None) -> Models:
    """`build_models` for the benchmark's spec; missing weights name the way out (random weights, the same compute)."""
    try:
        return builder.build_models(options.model_spec(backends))
    except ModelMissingError as e:
        raise ModelMissingError(f"{e} Or time random weights (the same compute): --random-weights") from None


def load_model(options: BenchOptions, device: torch.device) -> tuple[FaceDancer, str, str]:
    """(FaceDancer, weights key, label) without the detector (benchmarks/gpu_suite.py times the network alone)."""
    from engines import registry
    from engines.facedancer import facedancer, load_facedancer
    from engines.store import resolve_model_dir

    if options.random_weights:
        torch.manual_seed(0)
        return facedancer("config_c").to(device).eval(), "random", "FaceDancer config C, random weights"
    from realtime.assembly.weights import find_weights

    model_dir = resolve_model_dir(options.model_dir)
    try:
        [(path, key)] = find_weights([registry.find("facedancer_c_hq")], model_dir, options.model_dir is not None)
    except ModelMissingError as e:
        raise ModelMissingError(f"{e} Or time random weights (the same compute): --random-weights") from None
    return load_facedancer(path, device), key, f"FaceDancer config C HQ ({path.name})"


def backend_names(options: BenchOptions, device: torch.device) -> tuple[list[str], dict[str, str]]:
    """The backends to run and, for the record, every backend this machine lacks and why."""
    reasons = available(device)
    if device.type == "cuda" and reasons.get("onnxruntime") is None:
        from engines.runners.onnxruntime import cuda_provider_present

        if not cuda_provider_present():  # its CPU fallback is no GPU benchmark
            reasons["onnxruntime"] = "onnxruntime has no CUDA provider here (pip install onnxruntime-gpu)"
    missing = {k: v for k, v in reasons.items() if v}
    if not options.backends:
        return [b for b in BACKEND_NAMES if b not in missing], missing
    for name in options.backends:
        if name != "auto" and name not in BACKEND_NAMES:
            raise ConfigError(f"unknown backend {name!r}; choose auto or one of: {', '.join(BACKEND_NAMES)}")
        if name in missing:
            raise ConfigError(f"backend {name} cannot run on {device}: {missing[name]}")
    return list(dict.fromkeys(options.backends)), missing


def swap_engine(name: str, models: Models) -> Backend:
    """The pipeline's swap engine on backend `name` ("auto": the fastest here), made by the product's builder. The
    identity changes no compute: a fixed random one."""
    assert models.facedancer is not None
    runner, message = models.choose_runner(name)
    engine = FaceDancerSwap(models.facedancer, random_identity(), runner)  # type: ignore[arg-type]
    return Backend(runner.backend, runner.precision, message, engine=engine, close=runner.close)


def random_identity() -> torch.Tensor:
    """A fixed unit z_id (1, 512), as ArcFace gives them."""
    return F.normalize(torch.randn(1, 512, generator=torch.Generator().manual_seed(1)), dim=1)


class _Checked:
    """Keeps the first exception of the engine: the pipeline fails closed and carries on, a benchmark must not.
    It has no `close`: the pipeline of one case must not close the runner the next cases share."""

    def __init__(self, engine: SwapEngine) -> None:
        self.engine = engine
        self.error: Exception | None = None

    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        try:
            return self.engine(crops)
        except Exception as e:
            self.error = self.error or e
            raise

    def check(self, frame_index: int) -> None:
        if self.error is not None:
            raise DanceCamError(f"the swap failed on frame {frame_index}: {self.error}") from self.error


# --- running --------------------------------------------------------------------------------------------------


def _pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(a, (50, 95, 99))
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(a.mean()), "min": float(a.min())}


def run_case(
    engine: SwapEngine,
    device: torch.device,
    frame: np.ndarray,
    faces: int,
    options: BenchOptions,
    detector: FaceDetector | None = None,
) -> dict[str, Any]:
    """Warm up, then time `options.frames` frames of one configuration through a fresh pipeline (MTCNN when no
    `detector` is given)."""
    from realtime.pipeline.context import DeviceContext
    from realtime.pipeline.face_choice import FaceChoice
    from realtime.pipeline.frame import FramePipeline, PipelineConfig
    from realtime.pipeline.video import Frame

    if detector is None:
        from engines.mtcnn import MTCNN

        detector = MTCNN(device)
    config = PipelineConfig(detect_every=options.detect_every, choice=FaceChoice(max_faces=faces))
    checked = _Checked(engine)
    pipe = FramePipeline(detector, checked, config, context=DeviceContext(device))
    try:
        for k in range(options.warmup):
            pipe.process(Frame(frame, "rgb24"), k / 30)
            checked.check(k)
        pipe.profiler.reset()
        pipe.fail_closed_events = 0
        latency: list[float] = []
        swapped: list[int] = []
        # at least one detection cycle is timed, whatever the time limit
        least = min(options.frames, max(3, options.detect_every))
        start = time.perf_counter()
        for k in range(options.frames):
            if options.max_seconds and k >= least and time.perf_counter() - start > options.max_seconds:
                break
            t0 = time.perf_counter()
            result = pipe.process(Frame(frame, "rgb24"), (options.warmup + k) / 30)
            latency.append((time.perf_counter() - t0) * 1e3)
            checked.check(options.warmup + k)
            swapped.append(result.faces)
        wall = time.perf_counter() - start
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the last frame's end event too (a benchmark may wait; the pipeline not)
        snap = pipe.profiler.snapshot()
        fail_closed = pipe.fail_closed_events
    finally:
        pipe.close()
    timed = len(latency)
    stages = {
        name: {**s, "per_frame_ms": s["mean"] * s["count"] / timed}  # detection: its share per frame
        for name, s in snap["stages"].items()
    }
    return {
        "frames": timed,
        "faces_found": {"min": min(swapped), "mean": float(np.mean(swapped))},
        "latency_ms": _pct(latency),
        "device_ms": snap["end_to_end"] if device.type == "cuda" else None,
        "stages": stages,
        "fps": timed / wall,
        "faces_per_s": sum(swapped) / wall,
        "fail_closed": fail_closed,
        "timeline_ms": [round(v, 3) for v in latency],
    }


def load_bench_detector(options: BenchOptions, device: torch.device, backends: list[str]) -> tuple[FaceDetector, str]:
    """The detector the cases share, chosen as the product chooses it (SCRFD follows the one backend asked for)."""
    from engines.detectors import load_detector
    from engines.store import resolve_model_dir

    model_dir = resolve_model_dir(options.model_dir)
    backend = backends[0] if len(backends) == 1 else "auto"
    return load_detector(options.detector, device, model_dir, backend, model_dir / "compiled")


def timed_frames(settings: Mapping[str, Any]) -> str:
    """How many frames a case timed, as the settings asked: "100 timed frames (at most 60 s)"."""
    limit = settings.get("max_seconds") or 0
    return f"{settings['frames']} timed frames" + (
        f" (at most {limit:g} s; each case's count is in its row)" if limit else ""
    )


def run(options: BenchOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Every backend x size x face count; the result as a JSON-able dict (see `save`)."""
    from engines import flops
    from realtime.pipeline.context import resolve_device

    say = progress or (lambda _: None)
    device = resolve_device(options.device)
    names, missing = backend_names(options, device)
    frames = {(w, h, n): face_frame(w, h, n) for w, h in options.sizes for n in options.faces}
    models = load_models(options, names)  # FaceDancer, then the detector
    assert models.facedancer is not None
    model, key, label = models.facedancer, models.weights_key, models.label
    detector, detector_line = models.detector, models.detector_note
    say(detector_line)
    say(f"measuring the peak of {device_name(device)} (dense matmul) ...")
    peaks = flops.device_peaks(device)
    gflop = flops.facedancer_flops(model.config) / 1e9
    backends: list[Backend] = []
    cases: list[dict[str, Any]] = []
    for name in names:
        say(f"backend {name}: preparing ...")
        try:
            backend = swap_engine(name, models)
        except Exception as e:  # one backend failing to build leaves the others to run; the reason is recorded
            if len(names) == 1:
                raise
            backends.append(Backend(name, error=str(e).splitlines()[0] if str(e) else type(e).__name__))
            say(f"backend {name}: skipped ({backends[-1].error})")
            continue
        backends.append(backend)
        say(backend.message)
        try:
            for (w, h, n), (frame, _) in frames.items():
                limit = f", at most {options.max_seconds:g} s" if options.max_seconds else ""
                say(f"{backend.name} {backend.precision}: {w}x{h}, {n} face(s), {options.frames} frames{limit} ...")
                case = run_case(backend.engine, device, frame, n, options, detector)  # type: ignore[arg-type]
                case.update(backend=backend.name, precision=backend.precision, size=f"{w}x{h}", faces=n)
                cases.append(case)
        except Exception as e:  # with several backends, the others still run; the cases done so far stay
            if len(names) == 1:
                raise
            backend.error = str(e).splitlines()[0] if str(e) else type(e).__name__
            say(f"backend {name}: failed ({backend.error})")
        finally:
            backend.close()
    say("measuring the peak again (the higher of the two counts) ...")
    peaks = flops.device_peaks(device, remeasure=True)
    for case in cases:
        floor = flops.facedancer_floor(device, case["precision"], 1, model.config).ms
        case.update(floor_ms=floor * case["faces_found"]["mean"], floor_per_face_ms=floor)
    return {
        "benchmark": "bench",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": options.command,
        "environment": environment(device),
        "model": {"label": label, "weights": key, "gflop_per_face": gflop, "flop_counting": FLOP_NOTE},
        "peaks": {k: p.to_dict() for k, p in peaks.items()},
        "settings": {
            "frames": options.frames,
            "max_seconds": options.max_seconds,
            "warmup": options.warmup,
            "detect_every": options.detect_every,
            "detector": detector_line,
            "frame_source": next(iter(frames.values()))[1],
        },
        "backends": [
            {"name": b.name, "precision": b.precision, "message": b.message, "error": b.error} for b in backends
        ],
        "missing_backends": missing,
        "cases": cases,
    }


# --- the report -----------------------------------------------------------------------------------------------


def result_stem(result: dict[str, Any]) -> str:
    """`bench-<device>-<date>`: the benchmarks' naming, so results of different machines sit side by side."""
    env = result["environment"]
    name = "".join(ch if ch.isalnum() else "-" for ch in env["device"].lower()).strip("-")[:40]
    return f"bench-{env['device_type']}-{name}-{result['date'][:10]}"


def case_label(case: dict[str, Any], backend: bool = True) -> str:
    faces = f"{case['faces']} face{'s' if case['faces'] > 1 else ''}"
    head = f"{case['backend']} {case['precision']} " if backend else ""
    return f"{head}{case['size']} {faces}"


def stages_present(result: dict[str, Any]) -> list[str]:
    seen = {name for c in result["cases"] for name in c["stages"]}
    return [s for s in STAGE_ORDER if s in seen] + sorted(seen - set(STAGE_ORDER))


def summary_rows(result: dict[str, Any]) -> list[list[str]]:
    """One row per case: the numbers a reader compares, the floor beside the latency."""
    rows = []
    for c in result["cases"]:
        lat = c["latency_ms"]
        found = c["faces_found"]
        faces = str(c["faces"]) if found["min"] == c["faces"] else f"{c['faces']} ({found['min']} found)"
        rows.append(
            [
                c["backend"],
                c["precision"],
                c["size"],
                faces,
                f"{lat['p50']:.1f}",
                f"{lat['p95']:.1f}",
                f"{lat['p99']:.1f}",
                f"{c['floor_ms']:.2f}",
                f"{c['fps']:.1f}",
                f"{c['faces_per_s']:.1f}",
                str(c["frames"]),
            ]
        )
    return rows


SUMMARY_HEAD = [
    *("backend", "precision", "size", "faces", "p50 ms", "p95 ms", "p99 ms", "floor ms", "fps", "faces/s", "frames")
]
STAGE_HEAD = ["case", "stage", "runs", "p50 ms", "p95 ms", "p99 ms", "ms per frame", "floor ms"]


def stage_rows(result: dict[str, Any]) -> list[list[str]]:
    """Per case and stage: p50/p95/p99 of the frames it ran on, its mean share per frame; the swap's floor."""
    rows = []
    for c in result["cases"]:
        for name in stages_present(result):
            s = c["stages"].get(name)
            if s is None:
                continue
            floor = f"{c['floor_ms']:.2f}" if name == "swap" else ""
            rows.append(
                [
                    case_label(c),
                    name,
                    str(s["count"]),
                    f"{s['p50']:.2f}",
                    f"{s['p95']:.2f}",
                    f"{s['p99']:.2f}",
                    f"{s['per_frame_ms']:.2f}",
                    floor,
                ]
            )
    return rows


def below_floor(result: dict[str, Any]) -> list[str]:
    """Cases whose swap ran faster than its floor: the peak was measured while something else held the device."""
    return [case_label(c) for c in result["cases"] if c["stages"].get("swap", {}).get("p50", math.inf) < c["floor_ms"]]


BELOW_FLOOR = "below their floor: the peak was measured while the device was busy; rerun on an idle machine"


def md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


def markdown(result: dict[str, Any]) -> str:
    env, model, settings = result["environment"], result["model"], result["settings"]
    versions = ", ".join(
        f"{k} {env[k]}"
        for k in ("driver", "cuda", "cudnn", "torch", "onnxruntime", "torch_tensorrt", "cupy", "python")
        if env.get(k)
    )
    peaks = ", ".join(f"{k} {p['tflops']:.2f} TFLOP/s ({p['kernel']} {p['size']})" for k, p in result["peaks"].items())
    lines = [
        f"# dancecam bench: {env['device']}",
        "",
        f"{result['date']}, `{result['command']}`",
        "",
        f"- Device: {env['device']} ({env['device_type']}), CPU {env['cpu']} x {env['cpu_count']}, "
        f"{env['torch_threads']} torch threads",
        f"- Versions: {versions}",
        f"- Model: {model['label']}, {model['gflop_per_face']:.2f} GFLOP per 256x256 face ({model['flop_counting']})",
        f"- Measured peak: {peaks}",
        f"- Per case: {settings['warmup']} warm-up frames, then {timed_frames(settings)}; "
        f"{settings['detector']}, every {settings['detect_every']} frames; frames from {settings['frame_source']}",
        "",
        "Latency: host wall time of one frame through the pipeline (upload to download). Floor: FaceDancer FLOPs of "
        "the faces found over the measured peak of the precision the backend runs in (fp32: IEEE, TF32 off).",
        "",
        *md_table(SUMMARY_HEAD, summary_rows(result)),
        "",
        "## Stages",
        "",
        "Times of the frames a stage ran on (detection runs every few frames); ms per frame is its mean share.",
        "",
        *md_table(STAGE_HEAD, stage_rows(result)),
    ]
    if below := below_floor(result):
        lines += ["", f"**Note:** {', '.join(below)}: swap times {BELOW_FLOOR}."]
    skipped = [f"{b['name']}: {b['error']}" for b in result["backends"] if b["error"]]
    skipped += [f"{k}: {v}" for k, v in result.get("missing_backends", {}).items()]
    if skipped:
        lines += ["", "## Not run", "", *(f"- {s}" for s in skipped)]
    return "\n".join(lines) + "\n"


def plot_stages(result: dict[str, Any], path: Path) -> None:
    """Stacked mean ms per frame per stage for every case (the compute floor marked), and the same without the
    swap network, whose bar dwarfs the rest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = result["cases"]
    labels = [case_label(c).replace(" ", "\n", 2) for c in cases]
    stages = stages_present(result)
    fig, axes = plt.subplots(1, 2, figsize=(max(10.0, 1.6 * len(cases) + 3), 4.8))
    for ax, shown, title in (
        (axes[0], stages, "all stages"),
        (axes[1], [s for s in stages if s != "swap"], "all but the swap network"),
    ):
        bottom = np.zeros(len(cases))
        for name in shown:
            vals = np.array([c["stages"].get(name, {}).get("per_frame_ms", 0.0) for c in cases])
            if vals.any():
                colour = plt.get_cmap("tab10")(stages.index(name) % 10)  # one colour per stage in both panels
                ax.bar(labels, vals, bottom=bottom, label=name, color=colour)
                bottom += vals
        if "swap" in shown:
            floors = [c["floor_ms"] for c in cases]
            ax.scatter(labels, floors, marker="_", s=900, color="black", label="compute floor", zorder=3)
        ax.set_ylabel("ms per frame (mean)")
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(f"stage breakdown, {result['environment']['device']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency(result: dict[str, Any], path: Path) -> None:
    """Latency of every timed frame in order: warm-up effects, detection frames, stalls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.8))
    for c in result["cases"]:
        ax.plot(range(1, len(c["timeline_ms"]) + 1), c["timeline_ms"], lw=1, marker=".", ms=3, label=case_label(c))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("timed frame")
    ax.set_ylabel("latency ms (log)")
    ax.set_yscale("log")
    ax.set_title(f"latency over time, {result['environment']['device']}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the lines, never over them
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """JSON, Markdown and two PNGs named `bench-<device>-<date>...` in `out_dir`; returns their paths."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = result_stem(result)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md", out_dir / f"{stem}-stages.png"]
    paths.append(out_dir / f"{stem}-latency.png")
    paths[0].write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    paths[1].write_text(markdown(result))
    plot_stages(result, paths[2])
    plot_latency(result, paths[3])
    return paths
