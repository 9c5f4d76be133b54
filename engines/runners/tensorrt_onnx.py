"""TensorRT for a network that exists only as ONNX (SCRFD's det_10g.onnx): TensorRT's ONNX parser → a serialized
engine cached on disk → `execute_async_v3` on the caller's CUDA stream.

Design notes: docs/design-notes.md, section engines/runners/tensorrt_onnx.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import torch

from engines.errors import CheckpointFormatError, ConfigError
from engines.runners import tensorrt as torch_tensorrt_runner
from engines.runners.base import NetworkIO, Precision, RunnerBase
from engines.runners.tensorrt import DTYPES, Progress, say

FORMAT = "dancecam-tensorrt-onnx/1"  # part of the cache key: bump it when the build options change
WORKSPACE_BYTES = 1 << 30  # SCRFD's tactics need far less; a cap keeps the builder from taking the GPU's memory


def unavailable_reason() -> str | None:
    """Why an ONNX graph cannot be built with TensorRT here, or None when it can (torch-tensorrt not needed)."""
    return torch_tensorrt_runner.unavailable_reason(compiler=False)


# --- the graph ----------------------------------------------------------------------------------------------


@cache
def file_sha256(path: Path, size: int, mtime_ns: int) -> str:
    """The file's sha256, remembered per (path, size, mtime): a restart hashes it once, not per session."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def graph_bytes(path: Path, precision: Precision) -> bytes:
    """The ONNX graph TensorRT parses: the file itself for fp32; for fp16, every float tensor (weights, inputs,
    outputs, activations) converted to float16. CheckpointFormatError when the file is not a readable graph."""
    if precision == "fp32":
        return path.read_bytes()
    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError as e:
        raise ConfigError(
            "fp16 TensorRT engines from ONNX need onnxconverter-common: "
            '.venv/bin/python -m pip install "dancecam[trt]" (or onnxconverter-common)'
        ) from e
    try:
        model = onnx.load(str(path))
    except Exception as e:  # onnx raises DecodeError and friends for garbage
        raise CheckpointFormatError(f"{path}: not a readable ONNX graph: {e}") from e
    _constants_to_initializers(model)
    # keep_io_types=False: onnxconverter-common names the casts it would insert after an input after the input,
    # so an input feeding several nodes gets duplicate node names (an invalid graph); fp16 I/O avoids them
    return float16.convert_float_to_float16(model, keep_io_types=False).SerializeToString()


def _constants_to_initializers(model: Any) -> None:
    """`Constant` nodes become initializers, in place. The converter casts a Constant's output to fp16 and back,
    which turns the empty `roi`/`scales` inputs of a PyTorch-exported Resize (opset 13+) into non-empty tensors:
    the graph then gives both `scales` and `sizes`, which ONNX forbids. Initializers it leaves to its own rules."""
    from onnx import numpy_helper

    graph = model.graph
    kept = []
    for node in graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None and len(node.attribute) == 1:
            tensor = numpy_helper.from_array(numpy_helper.to_array(value.t), node.output[0])
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def environment(device: torch.device) -> dict[str, str]:
    """What an engine depends on besides the graph: TensorRT's version and the GPU (engines are not portable)."""
    import tensorrt

    major, minor = torch.cuda.get_device_capability(device)
    return {
        "tensorrt": tensorrt.__version__,
        "gpu": torch.cuda.get_device_name(device),
        "compute_capability": f"{major}.{minor}",
    }


def cache_key(graph_sha256: str, io: NetworkIO, precision: Precision, env: Mapping[str, str]) -> str:
    """sha256 over everything the engine depends on: the source file, the shapes, the precision and, for fp16,
    the converter's version (it writes the graph TensorRT sees), TensorRT and the GPU."""
    ingredients: dict[str, Any] = {
        "format": FORMAT,
        "graph": graph_sha256,
        "network": io.network,
        "inputs": [[s.name, list(s.shape)] for s in io.inputs],
        "outputs": [[s.name, list(s.shape)] for s in io.outputs],
        "precision": precision,
        **env,
    }
    if precision == "fp16":
        from importlib.metadata import version

        ingredients["onnxconverter_common"] = version("onnxconverter-common")
    return hashlib.sha256(json.dumps(ingredients, sort_keys=True).encode()).hexdigest()


def cache_path(cache_dir: str | os.PathLike[str], network: str, key: str) -> Path:
    return Path(cache_dir) / "tensorrt" / f"{network}-{key[:16]}.engine"


# --- build --------------------------------------------------------------------------------------------------


def _progress_monitor(trt: Any, say: Progress) -> Any:
    """A `tensorrt.IProgressMonitor` that reports the builder's top-level phases (nested ones are too chatty)."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.started: dict[str, float] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                self.started[phase_name] = time.perf_counter()
                say(f"TensorRT: {phase_name} ({num_steps} steps) ...")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            start = self.started.pop(phase_name, None)
            if start is not None:
                say(f"TensorRT: {phase_name} done in {time.perf_counter() - start:.1f} s")

    return Monitor()


def build_engine(trt: Any, graph: bytes, io: NetworkIO, say: Progress, source: str) -> bytes:
    """A serialized engine for the parsed `graph` at the io's fixed input shapes. CheckpointFormatError with the
    parser's messages when TensorRT cannot read the graph; RuntimeError when the build fails."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(graph):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CheckpointFormatError(f"{source}: TensorRT's ONNX parser refused it: {errors or 'no message'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    profile = builder.create_optimization_profile()
    for spec in io.inputs:
        profile.set_shape(spec.name, spec.shape, spec.shape, spec.shape)
    config.add_optimization_profile(profile)
    monitor = _progress_monitor(trt, say)  # must outlive the build: TensorRT keeps a pointer to it
    config.progress_monitor = monitor
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT could not build an engine for {source} (its log above says why)")
    return bytes(plan)


# --- the runner ---------------------------------------------------------------------------------------------


class TensorRTOnnxRunner(RunnerBase):
    """An ONNX graph with fixed input shapes as a TensorRT engine, cached under `<cache_dir>/tensorrt/`."""

    backend = "tensorrt"

    def __init__(
        self,
        path: str | os.PathLike[str],
        io: NetworkIO,
        device: torch.device | str,
        *,
        cache_dir: str | os.PathLike[str],
        precision: Precision = "fp16",
        progress: Progress | None = None,
    ) -> None:
        super().__init__()
        if precision not in DTYPES:
            raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
        if any(s.batched for s in io.inputs):
            raise ValueError(f"{io.network}: this runner builds fixed input shapes only, not a batch profile")
        self.path = Path(path)
        self.io = io
        self.device = torch.device(device)
        self.precision = precision
        self.cache_dir = Path(cache_dir)
        self.progress = progress
        self.engine_path: Path | None = None
        self._dtype = DTYPES[precision]
        self._engine: Any = None
        self._local = threading.local()

    def _on_device(self) -> contextlib.AbstractContextManager[Any]:
        """TensorRT makes engines and contexts on the thread's current device: make it ours (cuda:N, any thread)."""
        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()

    def _activate(self) -> None:
        reason = unavailable_reason()
        if reason:
            raise ConfigError(f"backend tensorrt: {reason}")
        if not self.path.is_file():
            raise CheckpointFormatError(f"{self.path} does not exist")
        if self.device.type == "cuda" and self.device.index is None:  # the key names one GPU
            self.device = torch.device("cuda", torch.cuda.current_device())
        with self._on_device():
            self._load_or_build()

    def _load_or_build(self) -> None:
        import tensorrt as trt

        stat = self.path.stat()
        key = cache_key(
            file_sha256(self.path.resolve(), stat.st_size, stat.st_mtime_ns),
            self.io,
            self.precision,
            environment(self.device),
        )
        self.engine_path = cache_path(self.cache_dir, self.io.network, key)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = self._load(runtime, self.engine_path)
        if engine is None:
            plan = self._build(trt)
            engine = runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise RuntimeError(f"TensorRT built an engine for {self.path} it cannot load")
        self._bind(trt, engine)

    def _load(self, runtime: Any, path: Path) -> Any:
        if not path.is_file():
            return None
        self._say(f"loading the TensorRT {self.io.network} engine {path.name}")
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:  # stale (another TensorRT) or truncated: rebuilding costs a minute, not starting costs more
            self._say(f"cannot load {path}; building it again")
        return engine

    def _build(self, trt: Any) -> bytes:
        start = time.perf_counter()
        self._say(f"building the TensorRT {self.precision} engine for {self.io.network}: about a minute, once per GPU")
        plan = build_engine(trt, graph_bytes(self.path, self.precision), self.io, self._say, str(self.path))
        self._say(f"built the {self.io.network} engine in {time.perf_counter() - start:.1f} s")
        assert self.engine_path is not None
        self._save(plan, self.engine_path)
        return plan

    def _save(self, plan: bytes, path: Path) -> None:
        """Write beside `path`, then rename: a crash never leaves a truncated engine."""
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(plan)
            os.replace(tmp, path)
        except OSError as e:  # the engine in memory still works; only the next start pays for the build again
            self._say(f"cannot save the TensorRT engine to {path} ({e}); it will be rebuilt")
        finally:
            tmp.unlink(missing_ok=True)

    def _bind(self, trt: Any, engine: Any) -> None:
        """Check the engine's tensors against the io (names, modes, dtype); make the activating thread's context."""
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if inputs != list(self.io.input_names) or sorted(outputs) != sorted(self.io.output_names):
            raise CheckpointFormatError(
                f"{self.path}: the engine takes {inputs} and gives {outputs}, expected "
                f"{list(self.io.input_names)} and {list(self.io.output_names)}"
            )
        want = trt.DataType.HALF if self._dtype == torch.float16 else trt.DataType.FLOAT
        wrong = [n for n in names if engine.get_tensor_dtype(n) != want]
        if wrong:
            raise CheckpointFormatError(f"{self.path}: tensors {wrong} are not {self.precision} in the engine")
        self._engine = engine
        self._local = threading.local()
        self._context()  # the activating thread's: a profile that does not take the shapes fails here

    def _context(self) -> Any:
        """This thread's execution context. Sessions share one detector from their own worker threads, each on its
        own stream, and a context (its bindings and scratch memory) must not serve two streams at once."""
        context = getattr(self._local, "context", None)
        if context is None:
            with self._on_device():
                context = self._engine.create_execution_context()
            for spec in self.io.inputs:
                if not context.set_input_shape(spec.name, spec.shape):
                    raise CheckpointFormatError(f"{self.path}: the engine does not take {spec.name} of {spec.shape}")
            for spec in self.io.outputs:  # the buffers `_enqueue` binds are sized from the io
                shape = tuple(context.get_tensor_shape(spec.name))
                if shape != spec.shape:
                    raise CheckpointFormatError(
                        f"{self.path}: {spec.name} is {shape} in the engine, expected {spec.shape}"
                    )
            self._local.context = context
        return context

    def _infer(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with self._on_device():
            return self._enqueue(feeds)

    def _enqueue(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        context = self._context()
        stream = torch.cuda.current_stream(self.device)  # the caller's: queued after its work, read by it
        inputs = {n: feeds[n].to(self.device, self._dtype).contiguous() for n in self.io.input_names}
        out = {s.name: torch.empty(s.shape, dtype=self._dtype, device=self.device) for s in self.io.outputs}
        for name, t in (*inputs.items(), *out.items()):
            context.set_tensor_address(name, t.data_ptr())
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT could not enqueue {self.io.network}")
        return {name: t.float() for name, t in out.items()}

    def _close(self) -> None:
        self._engine = None
        self._local = threading.local()  # this thread's context goes now, other threads' with their threads

    def _say(self, message: str) -> None:
        say(self.progress, message)
