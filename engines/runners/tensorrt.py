"""TensorRT through torch-tensorrt's dynamo frontend: torch.export → TensorRT engine → a saved, reloadable program.

Design notes: docs/design-notes.md, section engines/runners/tensorrt.py.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from engines.errors import ConfigError
from engines.runners.base import NetworkIO, Precision, RunnerBase

FORMAT = "dancecam-tensorrt/1"  # part of the cache key: bump it when the export or the compile options change
MIN_VERSION = (2, 11)  # strong typing by default, `save(..., dynamic_shapes=...)`
OPT_BATCH = 1  # the live path swaps one face per frame most of the time: tune the kernels for that
DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "fp32": torch.float32}
Progress = Callable[[str], None]

# --- availability and the cache -----------------------------------------------------------------------------


def _release(version: str) -> str:
    return ".".join(map(str, _version(version)))


def _install_hint() -> str:
    # https://docs.pytorch.org/TensorRT/getting_started/installation.html: torch-tensorrt 2.N requires torch 2.N
    # (e.g. 2.13.0: torch>=2.13.0,<2.14.0); naming torch's installed version keeps pip from replacing it
    torch_release = _release(torch.__version__)
    return (
        "install the torch-tensorrt of the same release as torch, keeping torch as it is: "
        f'`{shlex.quote(sys.executable)} -m pip install "torch=={torch.__version__}" '
        f'"torch-tensorrt=={torch_release}.*"`'
    )


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:2])


def pairing_problem(torch_version: str, torch_tensorrt_version: str) -> str | None:
    """Why this torch-tensorrt cannot run with this torch, or None: a torch-tensorrt release is built against one
    torch release (same major.minor) and fails at import or at run time with any other."""
    have, built_for = _version(torch_version), _version(torch_tensorrt_version)
    if have < MIN_VERSION:
        want = ".".join(map(str, MIN_VERSION))
        return (
            f"torch {torch_version} is older than {want}, the first release whose torch-tensorrt has the API this "
            "backend uses: install a newer torch (scripts/setup.sh with DANCECAM_TORCH_VERSION) and the "
            "torch-tensorrt of the same release"
        )
    if built_for != have:
        return (
            f"torch-tensorrt {torch_tensorrt_version} is built for torch {_release(torch_tensorrt_version)}, but "
            f"torch here is {torch_version}; {_install_hint()}"
        )
    return None


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def unavailable_reason(*, compiler: bool = True) -> str | None:
    """Why TensorRT cannot run here, or None when it can: an NVIDIA GPU and the `tensorrt` package, and with
    `compiler` (torch modules, this file) the torch-tensorrt of torch's own release (>= MIN_VERSION); ONNX graphs
    need only `tensorrt`."""
    if not torch.cuda.is_available():
        return "TensorRT needs an NVIDIA GPU with CUDA, and torch sees none"
    if compiler:
        # before the import: a torch-tensorrt built for another torch may fail to import with an obscure error
        installed = _installed_version("torch-tensorrt")
        problem = pairing_problem(torch.__version__, installed) if installed else None
        if problem:
            return problem
    try:
        import tensorrt  # noqa: F401  (torch-tensorrt needs it; its version is part of the cache key)

        if compiler:
            import torch_tensorrt
    except Exception as e:  # ImportError, or OSError from a wheel whose CUDA libraries do not load
        package = "torch-tensorrt" if compiler else "tensorrt"
        return f"{package} is not usable ({type(e).__name__}: {e}); {_install_hint()}"
    if compiler:
        return pairing_problem(torch.__version__, torch_tensorrt.__version__)
    return None


def environment(device: torch.device) -> dict[str, str]:
    """What a compiled program depends on besides the weights and the network: library versions and the GPU."""
    import tensorrt
    import torch_tensorrt

    major, minor = torch.cuda.get_device_capability(device)
    return {
        "torch": torch.__version__,  # the saved program is a torch.export archive
        "torch_tensorrt": torch_tensorrt.__version__,
        "tensorrt": tensorrt.__version__,
        "gpu": torch.cuda.get_device_name(device),
        "compute_capability": f"{major}.{minor}",
    }


def batch_profile(io: NetworkIO) -> tuple[int, int, int]:
    """(min, opt, max) batch of the TensorRT optimisation profile."""
    return 1, min(OPT_BATCH, io.max_batch), io.max_batch


def cache_key(weights_key: str, io: NetworkIO, precision: Precision, device: torch.device) -> str:
    """sha256 over everything the compiled program depends on; a change to any of them means a rebuild."""
    ingredients = {
        "format": FORMAT,
        "weights": weights_key,
        "network": io.network,
        "inputs": [[s.name, list(s.shape)] for s in io.inputs],
        "outputs": list(io.output_names),
        "batch_profile": list(batch_profile(io)),
        "precision": precision,
        **environment(device),
    }
    return hashlib.sha256(json.dumps(ingredients, sort_keys=True).encode()).hexdigest()


def cache_path(cache_dir: str | os.PathLike[str], network: str, key: str) -> Path:
    # .pt2: torch's archive loader warns about any other suffix on every save and load
    return Path(cache_dir) / "tensorrt" / f"{network}-{key[:16]}.pt2"


def timing_cache_path(cache_dir: str | os.PathLike[str], device: torch.device) -> Path:
    """TensorRT's timing cache per TensorRT version and GPU: one made elsewhere is refused (and then overwritten),
    so machines sharing a model directory would take turns losing theirs."""
    env = environment(device)
    tag = hashlib.sha256(json.dumps([env["tensorrt"], env["gpu"], env["compute_capability"]]).encode()).hexdigest()
    return Path(cache_dir) / "tensorrt" / f"timing_cache-{tag[:12]}.bin"


# --- export -------------------------------------------------------------------------------------------------


def dynamic_shapes(io: NetworkIO) -> tuple[dict[int, Any], ...]:
    """One batch dim shared by every input, positional (one entry per forward argument) so that the same spec fits
    the network for `torch.export` and the compiled module for `torch_tensorrt.save`."""
    batch = torch.export.Dim("batch", min=1, max=io.max_batch)
    return tuple({0: batch} for _ in io.inputs)


def example_inputs(io: NetworkIO, dtype: torch.dtype, device: torch.device, batch: int = 2) -> tuple[torch.Tensor, ...]:
    # batch 2, not 1: torch.export specialises a dimension whose example size is 0 or 1
    return tuple(torch.randn((batch, *s.shape[1:]), dtype=dtype, device=device) for s in io.inputs)


def export_program(model: nn.Module, example: tuple[torch.Tensor, ...], shapes: tuple) -> Any:
    """`model` (in its final dtype and on its device) as a `torch.export.ExportedProgram` with a dynamic batch."""
    return torch.export.export(model, example, dynamic_shapes=shapes, strict=False)


def _upcast_first(op: Any) -> Callable[..., Any]:
    def rule(x: torch.Tensor, *args: Any, dtype: torch.dtype | None = None, **kwargs: Any) -> Any:
        if dtype is None or dtype == x.dtype:
            return NotImplemented  # leaves the op as it is (this is also what ends the recursion below)
        return op(torch.ops.aten._to_copy.default(x, dtype=dtype), *args, **kwargs)

    return rule


def explicit_reduction_casts(ep: Any) -> Any:
    """Reductions asked to accumulate in a wider dtype (`mean(half, dtype=float32)`) as a cast, then the
    reduction: TensorRT's reduce converters ignore `dtype=`, a cast they keep. A no-op for graphs without them."""
    aten = torch.ops.aten
    ops = (aten.mean.dim, aten.sum.dim_IntList, aten.linalg_vector_norm.default)
    return ep.run_decompositions({op: _upcast_first(op) for op in ops})


# --- the runner ---------------------------------------------------------------------------------------------


def say(progress: Progress | None, message: str) -> None:
    """A line of build progress: to `progress`, or dimmed on stderr."""
    if progress is not None:
        progress(message)
    else:
        from rich.console import Console

        Console(stderr=True).print(f"[dim]{message}[/dim]")


class TensorRTRunner(RunnerBase):
    """A network compiled by torch-tensorrt, cached under `<cache_dir>/tensorrt/` (see the module docstring)."""

    backend = "tensorrt"

    def __init__(
        self,
        model: nn.Module,
        io: NetworkIO,
        device: torch.device | str,
        *,
        cache_dir: str | os.PathLike[str],
        weights_key: str,
        precision: Precision = "fp16",
        progress: Progress | None = None,
    ) -> None:
        super().__init__()
        if precision not in DTYPES:
            raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
        if io.max_batch < 2:
            raise ValueError("the TensorRT batch profile needs max_batch >= 2")
        self.model: nn.Module | None = model  # dropped once activated: the engine holds its own weights
        self.io = io
        self.device = torch.device(device)
        self.precision = precision
        self.cache_dir = Path(cache_dir)
        self.weights_key = weights_key
        self.progress = progress
        self.path: Path | None = None
        self._dtype = DTYPES[precision]
        self._program: Callable[..., Any] | None = None

    def _activate(self) -> None:
        reason = unavailable_reason()
        if reason:
            raise ConfigError(f"backend tensorrt: {reason}")
        import torch_tensorrt

        if self.device.type == "cuda" and self.device.index is None:  # the key names one GPU
            self.device = torch.device("cuda", torch.cuda.current_device())
        key = cache_key(self.weights_key, self.io, self.precision, self.device)
        self.path = cache_path(self.cache_dir, self.io.network, key)
        program = self._load(torch_tensorrt, self.path)
        self._program = program if program is not None else self._build(torch_tensorrt, self.path)
        self.model = None

    def _load(self, torch_tensorrt: ModuleType, path: Path) -> Callable[..., Any] | None:
        if not path.is_file():
            return None
        try:
            with self._step(f"loading the TensorRT {self.io.network} program {path.name}"):
                return torch_tensorrt.load(str(path)).module()
        except Exception as e:  # stale or corrupt: rebuilding costs minutes, refusing to start costs more
            self._say(f"cannot load {path} ({type(e).__name__}: {e}); building it again")
            return None

    def _build(self, torch_tensorrt: ModuleType, path: Path) -> Callable[..., Any]:
        assert self.model is not None
        model = copy.deepcopy(self.model).to(self.device, self._dtype, memory_format=torch.contiguous_format)
        model.eval().requires_grad_(False)
        example = example_inputs(self.io, self._dtype, self.device)
        shapes = dynamic_shapes(self.io)
        with self._step(f"exporting {self.io.network} ({self.precision}, batch 1..{self.io.max_batch})"):
            ep = explicit_reduction_casts(export_program(model, example, shapes))
        del model
        lo, opt, hi = batch_profile(self.io)
        inputs = [
            torch_tensorrt.Input(
                min_shape=(lo, *s.shape[1:]), opt_shape=(opt, *s.shape[1:]), max_shape=(hi, *s.shape[1:]), dtype=d
            )
            for s, d in zip(self.io.inputs, (t.dtype for t in example), strict=True)
        ]
        path.parent.mkdir(parents=True, exist_ok=True)
        # options: https://docs.pytorch.org/TensorRT/user_guide/compilation/compilation_settings.html; no precision
        # flag (see the module docstring); the timing cache beside our programs makes a rebuild (new weights,
        # another profile) much faster than the first build
        with self._step(f"building the TensorRT engine for {self.io.network}: several minutes, once per GPU"):
            trt_gm = torch_tensorrt.dynamo.compile(
                ep,
                arg_inputs=inputs,
                device=self.device,
                timing_cache_path=str(timing_cache_path(self.cache_dir, self.device)),
            )
        self._save(torch_tensorrt, trt_gm, path, example, shapes)
        return trt_gm

    def _save(
        self, torch_tensorrt: ModuleType, trt_gm: Any, path: Path, example: tuple[torch.Tensor, ...], shapes: tuple
    ) -> None:
        """Write to a temporary file beside `path`, then rename: a crash never leaves a truncated program."""
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
        try:
            with self._step(f"saving {path}"):
                torch_tensorrt.save(
                    trt_gm,
                    str(tmp),
                    output_format="exported_program",
                    arg_inputs=list(example),
                    dynamic_shapes=shapes,  # the same spec as the export (docs: method 1)
                )
                os.replace(tmp, path)
        except Exception as e:  # the engine in memory still works; only the next start pays for the build again
            self._say(f"cannot save the TensorRT program to {path} ({type(e).__name__}: {e}); it will be rebuilt")
        finally:
            tmp.unlink(missing_ok=True)

    def _infer(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        assert self._program is not None
        args = [feeds[n].to(self._dtype, memory_format=torch.contiguous_format) for n in self.io.input_names]
        with torch.no_grad():  # parts that torch-tensorrt leaves to PyTorch would otherwise record autograd
            out = self._program(*args)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return {n: t.float() for n, t in zip(self.io.output_names, outs, strict=True)}

    def _close(self) -> None:
        self._program = None
        self.model = None

    # --- progress ---------------------------------------------------------------------------------------------

    def _say(self, message: str) -> None:
        say(self.progress, message)

    @contextmanager
    def _step(self, message: str) -> Iterator[None]:
        start = time.perf_counter()
        if self.progress is not None:
            self.progress(f"{message} ...")
            yield
        else:
            from rich.console import Console

            with Console(stderr=True).status(message):
                yield
        self._say(f"{message}: done in {time.perf_counter() - start:.1f} s")
