"""A strict double of TensorRT's Python API (`tensorrt`, 10.x/11.x), for tests on machines without TensorRT.

Only documented signatures (an unknown keyword is a TypeError). Its parser checks the ONNX it is given, its builder
records the network flags, profile and progress monitor, and its "engine" is that ONNX graph run by ONNX Runtime on
the CPU, reading inputs from and writing outputs to the raw addresses bound to it: answers computed through it test
the binding, the dtypes and the order of outputs, not just the call sequence.
"""

from __future__ import annotations

import ctypes
import json
import sys
from enum import IntEnum
from importlib.machinery import ModuleSpec
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
import torch

ENV = {"tensorrt": "10.16.1.11", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
STREAM = 0xBEEF  # the caller's stream handle, as torch would report it


# --- the double ---------------------------------------------------------------------------------------------


class NetworkDefinitionCreationFlag(IntEnum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


class MemoryPoolType(IntEnum):
    WORKSPACE = 0


class TensorIOMode(IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class DataType(IntEnum):
    FLOAT = 0
    HALF = 1


NUMPY = {DataType.FLOAT: np.float32, DataType.HALF: np.float16}
FROM_ONNX = {onnx.TensorProto.FLOAT: DataType.FLOAT, onnx.TensorProto.FLOAT16: DataType.HALF}


class Logger:
    WARNING = 2

    def __init__(self, min_severity: int = WARNING) -> None:
        self.min_severity = min_severity


class IProgressMonitor:
    def __init__(self) -> None:
        self.base_initialised = True


class Network:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.graph: bytes | None = None


class OnnxParser:
    def __init__(self, network: Network, logger: Logger) -> None:
        self.network = network
        self.errors: list[str] = []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def parse(self, model: bytes, path: str | None = None) -> bool:
        try:
            parsed = onnx.load_from_string(bytes(model))
            onnx.checker.check_model(parsed)
        except Exception as e:
            self.errors.append(f"In node -1 (parseGraph): INVALID_GRAPH: {e}")
            return False
        self.network.graph = bytes(model)
        return True

    def get_error(self, index: int) -> str:
        return self.errors[index]


class OptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # the documented parameter names
        self.shapes[input] = (tuple(min), tuple(opt), tuple(max))


class BuilderConfig:
    def __init__(self) -> None:
        self.pools: dict[MemoryPoolType, int] = {}
        self.profiles: list[OptimizationProfile] = []
        self.progress_monitor: IProgressMonitor | None = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        self.pools[pool] = pool_size

    def add_optimization_profile(self, profile: OptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1


class Builder:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> Network:
        return Network(flags)

    def create_builder_config(self) -> BuilderConfig:
        return BuilderConfig()

    def create_optimization_profile(self) -> OptimizationProfile:
        return OptimizationProfile()

    def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes | None:
        trt = sys.modules["tensorrt"]
        trt.builds.append({"flags": network.flags, "config": config})  # type: ignore[attr-defined]
        if network.graph is None or len(config.profiles) != 1:
            return None
        monitor = config.progress_monitor
        if monitor is not None:
            assert isinstance(monitor, IProgressMonitor)
            assert getattr(monitor, "base_initialised", False)  # pybind11 needs the base __init__ called
            monitor.phase_start("Building engine", None, 2)
            monitor.phase_start("Tactic selection", "Building engine", 3)
            for step in range(3):
                assert monitor.step_complete("Tactic selection", step) is True
            monitor.phase_finish("Tactic selection")
            monitor.phase_finish("Building engine")
        header = {"shapes": {k: v[1] for k, v in config.profiles[0].shapes.items()}}
        return json.dumps(header).encode() + b"\n" + network.graph


class Engine:
    def __init__(self, graph: bytes, shapes: dict[str, list[int]]) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
        model = onnx.load_from_string(graph)
        self.dtypes = {
            v.name: FROM_ONNX[v.type.tensor_type.elem_type] for v in (*model.graph.input, *model.graph.output)
        }
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.shapes = shapes

    @property
    def num_io_tensors(self) -> int:
        return len(self.inputs) + len(self.outputs)

    def get_tensor_name(self, index: int) -> str:
        return [*self.inputs, *self.outputs][index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if name in self.inputs else TensorIOMode.OUTPUT if name in self.outputs else 0

    def get_tensor_dtype(self, name: str) -> DataType:
        return self.dtypes[name]

    def create_execution_context(self) -> ExecutionContext:
        return ExecutionContext(self)


def _array_at(address: int, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    count = int(np.prod(shape))
    raw = (ctypes.c_byte * (count * np.dtype(dtype).itemsize)).from_address(address)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


class ExecutionContext:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.input_shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.streams: list[int] = []

    def set_input_shape(self, name: str, shape: Any) -> bool:
        if list(shape) != self.engine.shapes.get(name):
            return False  # outside the profile
        self.input_shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        """An input's set shape; an output's as the graph gives it at the set input shapes (-1 before they are)."""
        if name in self.engine.inputs:
            return self.input_shapes.get(name, (-1,))
        if set(self.input_shapes) != set(self.engine.inputs):
            return (-1,)
        feeds = {n: np.zeros(s, NUMPY[self.engine.dtypes[n]]) for n, s in self.input_shapes.items()}
        outputs = self.engine.session.run(None, feeds)
        return tuple(outputs[self.engine.outputs.index(name)].shape)

    def set_tensor_address(self, name: str, memory: int) -> bool:
        assert isinstance(memory, int)
        self.addresses[name] = memory
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        self.streams.append(stream_handle)
        feeds = {
            n: _array_at(self.addresses[n], self.input_shapes[n], NUMPY[self.engine.dtypes[n]]).copy()
            for n in self.engine.inputs
        }
        for name, value in zip(self.engine.outputs, self.engine.session.run(None, feeds), strict=True):
            _array_at(self.addresses[name], value.shape, NUMPY[self.engine.dtypes[name]])[...] = value
        return True


class Runtime:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> Engine | None:
        header, _, graph = bytes(serialized_engine).partition(b"\n")
        try:
            return Engine(graph, json.loads(header)["shapes"])
        except Exception:
            return None  # TensorRT logs the error and returns None


def make_tensorrt() -> ModuleType:
    trt = ModuleType("tensorrt")
    trt.__spec__ = ModuleSpec("tensorrt", None)
    for value in (
        NetworkDefinitionCreationFlag,
        MemoryPoolType,
        TensorIOMode,
        DataType,
        Logger,
        IProgressMonitor,
        OnnxParser,
        Builder,
        Runtime,
    ):
        setattr(trt, value.__name__, value)
    trt.__version__ = ENV["tensorrt"]  # type: ignore[attr-defined]
    trt.builds = []  # type: ignore[attr-defined]
    return trt


def install(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The double as `tensorrt`, an H100 as far as torch.cuda's device queries tell, a caller's stream, and any
    host synchronisation a test failure. (The CUDA availability checks are the caller's to skip.)"""
    trt = make_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: ENV["gpu"])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: SimpleNamespace(cuda_stream=STREAM))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: pytest.fail("the runner synchronised"))
    return trt
