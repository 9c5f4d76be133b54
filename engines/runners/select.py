"""Which backends this machine can run, making a runner by backend name, and `auto`: the fastest one present.

Backend modules are imported only when asked for: TensorRT and CUDA graphs pull in GPU-only packages.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from engines.choices import BACKEND_NAMES, PRECISIONS, BackendName
from engines.errors import ConfigError
from engines.runners.base import NetworkIO, Precision, Runner, private_stream

BACKENDS: tuple[BackendName, ...] = BACKEND_NAMES[::-1]  # fastest first: the order auto tries them in
CUDA_GRAPH_BUCKETS = (1, 2, 4, 8)
# The Python packages each CPU-capable backend imports: all of them are runtime dependencies (pyproject.toml), so
# `--backend auto` offers them after a plain install.
BACKEND_PACKAGES: dict[str, tuple[str, ...]] = {"onnxruntime": ("onnxruntime", "onnx"), "eager": ("torch",)}


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def available(device: torch.device | str) -> dict[str, str | None]:
    """Every backend → None where it can run on `device` here, else the reason it cannot (and the fix)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    no_cuda = None
    if cuda and not torch.cuda.is_available():
        no_cuda = f"{device} is not usable: this torch has no CUDA device (torch.cuda.is_available() is False)"
    reasons: dict[str, str | None] = {}
    if not cuda or no_cuda:
        reasons["tensorrt"] = "TensorRT needs torch-tensorrt and an NVIDIA GPU"
    else:
        from engines.runners.tensorrt import unavailable_reason  # imports nothing heavy when TensorRT is absent

        reasons["tensorrt"] = unavailable_reason()
    reasons["cuda-graphs"] = "CUDA graphs need a CUDA device" if not cuda or no_cuda else None
    missing = [m for m in BACKEND_PACKAGES["onnxruntime"] if not _has_module(m)]
    if missing:
        reasons["onnxruntime"] = f"ONNX Runtime needs {' and '.join(missing)} (pip install {' '.join(missing)})"
    elif cuda and not no_cuda:
        from engines.runners.onnxruntime import cuda_provider_present

        # without it every call would cross to the host and run on the CPU: not what a GPU user asks for
        has_provider = cuda_provider_present()
        reasons["onnxruntime"] = (
            None if has_provider else "onnxruntime has no CUDA provider (pip install onnxruntime-gpu)"
        )
    else:
        reasons["onnxruntime"] = no_cuda
    reasons["eager"] = no_cuda
    return reasons


def default_precision(backend: str, device: torch.device) -> Precision:
    """fp16 where the backend exists for it (CUDA graphs, TensorRT on a GPU); fp32 elsewhere (eager is the
    reference, ONNX Runtime runs the fp32 export)."""
    return "fp16" if device.type == "cuda" and backend in ("cuda-graphs", "tensorrt") else "fp32"


def default_cache_dir() -> Path:
    from engines import store

    return store.resolve_model_dir() / "compiled"


def create_runner(
    backend: str,
    model: nn.Module,
    io: NetworkIO,
    device: torch.device | str,
    *,
    precision: Precision | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    weights_key: str = "random",
) -> Runner:
    """A runner of `backend` for `model` (not yet activated); ConfigError with the reason when it cannot run here.

    `weights_key` names the weights (their sha256, or "random") in cached exports and engines.
    """
    device = torch.device(device)
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of: auto, {', '.join(BACKENDS)}")
    reason = available(device)[backend]
    if reason:
        raise ConfigError(f"backend {backend} cannot run on {device}: {reason}")
    precision = precision or default_precision(backend, device)
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    try:
        if backend == "eager":
            from engines.runners.eager import EagerRunner

            # fp16 convolutions want NHWC on tensor cores; fp32 stays the plain reference
            return EagerRunner(model, io, device, precision, channels_last=precision == "fp16")
        if backend == "onnxruntime":
            if precision != "fp32":
                raise ConfigError("backend onnxruntime runs the fp32 ONNX export only: use --precision fp32")
            from engines.runners.onnx_export import cached_onnx
            from engines.runners.onnxruntime import OnnxRuntimeRunner

            cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
            return OnnxRuntimeRunner(cached_onnx(model, io, cache, weights_key), io, device)
        if backend == "cuda-graphs":
            from engines.runners.cuda_graphs import CudaGraphRunner

            buckets = (*(b for b in CUDA_GRAPH_BUCKETS if b < io.max_batch), io.max_batch)
            return CudaGraphRunner(model, io, device, buckets=buckets, precision=precision, channels_last=True)
        from engines.runners.tensorrt import TensorRTRunner

        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        return TensorRTRunner(model, io, device, cache_dir=cache, weights_key=weights_key, precision=precision)
    except ImportError as e:  # a backend module or its package missing despite the checks above
        raise ConfigError(f"backend {backend} cannot be loaded: {e}") from e


def _time_ms(runner: Runner, feeds: Mapping[str, torch.Tensor], warmup: int, repeats: int) -> float:
    """Median wall time of one warm call on a private stream (as a pipeline runs it, never the default stream),
    the device synchronised around each (here only, never on the hot path)."""
    cuda = runner.device.type == "cuda"
    times = []
    with private_stream(runner.device):
        for _ in range(warmup):
            runner.infer(feeds)
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize(runner.device)
            start = time.perf_counter()
            runner.infer(feeds)
            if cuda:
                torch.cuda.synchronize(runner.device)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def choose(
    backend: str,
    model: nn.Module,
    io: NetworkIO,
    device: torch.device | str,
    *,
    precision: Precision | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    weights_key: str = "random",
    warmup: int = 1,
    repeats: int = 3,
) -> tuple[Runner, str]:
    """An activated runner and a line saying which backend it is and why.

    A named backend is created and activated (ConfigError when it cannot run here). "auto" activates every
    backend present, times warm batch-1 calls of each, keeps the fastest and closes the others; a backend that
    is missing or fails to activate is skipped, its reason in the message.
    """
    device = torch.device(device)
    if backend != "auto":
        runner = create_runner(
            backend, model, io, device, precision=precision, cache_dir=cache_dir, weights_key=weights_key
        )
        try:
            runner.activate()
        except Exception as e:  # an engine build or capture that fails: the user's message, not a traceback
            runner.close()
            raise ConfigError(f"backend {backend} could not start: {str(e).splitlines()[0] if str(e) else e!r}") from e
        return runner, f"backend {backend} ({runner.precision})"

    from engines.runners.onnx_export import sample_feeds

    feeds = sample_feeds(io, 1, device=device)
    timed: list[tuple[float, Runner]] = []
    skipped: list[str] = []
    for name, reason in available(device).items():
        if reason is not None:
            skipped.append(f"{name} ({reason})")
            continue
        runner = None
        try:
            runner = create_runner(
                name, model, io, device, precision=precision, cache_dir=cache_dir, weights_key=weights_key
            )
            runner.activate()
            timed.append((_time_ms(runner, feeds, warmup, repeats), runner))
        except Exception as e:  # any failure only removes that candidate; its reason is reported
            if runner is not None:
                runner.close()
            skipped.append(f"{name} (failed: {str(e).splitlines()[0] if str(e) else type(e).__name__})")
    if not timed:
        raise ConfigError("backend auto: no backend can run here: " + "; ".join(skipped))
    timed.sort(key=lambda t: t[0])
    for _, loser in timed[1:]:
        loser.close()
    best_ms, best = timed[0]
    message = f"backend auto: {best.backend} {best.precision} ({best_ms:.1f} ms)"
    if len(timed) > 1:
        message += " over " + ", ".join(f"{r.backend} {r.precision} ({ms:.1f} ms)" for ms, r in timed[1:])
    if skipped:
        message += "; skipped " + ", ".join(skipped)
    return best, message
