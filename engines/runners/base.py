"""The one interface every inference backend implements, and what each network's runners take and give.

Design notes: docs/design-notes.md, section engines/runners/base.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from engines import registry
from engines.choices import BackendName, NetworkName, Precision


@dataclass(frozen=True, slots=True)
class IOSpec:
    """One named tensor of a network: its shape with -1 for the (dynamic) batch axis.

    A shape without -1 is fixed: that tensor has no batch axis (SCRFD's (anchors, channels) outputs) or only ever
    batch 1 (SCRFD's input).
    """

    name: str
    shape: tuple[int, ...]

    @property
    def batched(self) -> bool:
        return self.shape[0] == -1

    def at_batch(self, batch: int) -> tuple[int, ...]:
        """The concrete shape of this tensor in a call with `batch` items."""
        return (batch, *self.shape[1:]) if self.batched else self.shape


@dataclass(frozen=True, slots=True)
class NetworkIO:
    """What a network takes and gives, by name, for every backend (the ONNX export uses the same names)."""

    network: NetworkName
    inputs: tuple[IOSpec, ...]
    outputs: tuple[IOSpec, ...]
    max_batch: int = 8  # the largest batch every backend must accept (TensorRT profile, CUDA-graph buckets)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.outputs)

    def check_feeds(self, feeds: Mapping[str, torch.Tensor]) -> int:
        """The batch size of `feeds`; ValueError naming the first tensor that does not fit."""
        if set(feeds) != set(self.input_names):
            raise ValueError(f"{self.network}: expected inputs {list(self.input_names)}, got {sorted(feeds)}")
        batch = None
        for spec in self.inputs:
            t = feeds[spec.name]
            if t.dtype != torch.float32 or t.ndim != len(spec.shape):
                raise ValueError(
                    f"{spec.name}: expected float32 of rank {len(spec.shape)}, got {t.dtype} {tuple(t.shape)}"
                )
            if not spec.batched and tuple(t.shape) != spec.shape:
                raise ValueError(f"{spec.name}: expected {spec.shape}, got {tuple(t.shape)}")
            if tuple(t.shape[1:]) != spec.shape[1:]:
                raise ValueError(
                    f"{spec.name}: expected (N, {', '.join(map(str, spec.shape[1:]))}), got {tuple(t.shape)}"
                )
            if batch is None:
                batch = int(t.shape[0])
            elif t.shape[0] != batch:
                raise ValueError(f"{spec.name}: batch {t.shape[0]}, but {self.inputs[0].name} has {batch}")
        assert batch is not None
        if not 1 <= batch <= self.max_batch:
            raise ValueError(f"{self.network}: batch must be 1..{self.max_batch}, got {batch}")
        return batch


def facedancer_io(mapping_width: int = 256, image_size: int | None = None, max_batch: int = 8) -> NetworkIO:
    """FaceDancer's generator: target crops in [-1, 1] and one w per crop → swapped crops (linear, about [-1, 1]).
    `image_size` None: the input size of FaceDancer's registry entry."""
    image_size = image_size or registry.data_config("facedancer_c_hq").input_size
    return NetworkIO(
        "facedancer",
        (IOSpec("target", (-1, 3, image_size, image_size)), IOSpec("w", (-1, mapping_width))),
        (IOSpec("swapped", (-1, 3, image_size, image_size)),),
        max_batch,
    )


def mapping_io(z_dim: int = 512, mapping_width: int = 256, max_batch: int = 8) -> NetworkIO:
    """FaceDancer's mapping network: ArcFace embeddings (raw, as the official code feeds them) → w."""
    return NetworkIO("mapping", (IOSpec("z_id", (-1, z_dim)),), (IOSpec("w", (-1, mapping_width)),), max_batch)


def arcface_io(max_batch: int = 8) -> NetworkIO:
    """ArcFace: aligned faces (its registry entry's input size, 112) in [0, 1] → raw 512-d embeddings."""
    s = registry.data_config("arcface_r50").input_size
    return NetworkIO("arcface", (IOSpec("face", (-1, 3, s, s)),), (IOSpec("embedding", (-1, 512)),), max_batch)


@runtime_checkable
class Runner(Protocol):
    """A network on a device in a precision, behind names: see the module docstring."""

    backend: BackendName
    io: NetworkIO
    device: torch.device
    precision: Precision
    last_ms: float

    def activate(self) -> None: ...

    def infer(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    def close(self) -> None: ...


class RunnerBase:
    """Shared plumbing: the context manager, feed checks and the timing of `infer`. Subclasses implement `_infer`."""

    backend: BackendName
    io: NetworkIO
    device: torch.device
    precision: Precision

    def __init__(self) -> None:
        self.last_ms = 0.0
        self.active = False
        self.closed = False
        self.failure: str | None = None  # why activation failed (as text: not its frames): it is not tried again

    def activate(self) -> None:
        if self.closed:
            raise RuntimeError(f"{self.backend} runner is closed")
        if self.failure is not None:
            # a capture or an engine build that failed once fails again, and costs seconds each time: never per frame
            raise RuntimeError(f"{self.backend} runner could not be activated: {self.failure}")
        if not self.active:
            try:
                self._activate()
            except Exception as e:
                self.failure = f"{type(e).__name__}: {e}"
                raise
            self.active = True

    def infer(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.io.check_feeds(feeds)
        self.activate()
        start = time.perf_counter()
        out = self._infer(feeds)
        self.last_ms = (time.perf_counter() - start) * 1e3
        return out

    def close(self) -> None:
        if not self.closed:
            self._close()
            self.closed = True
            self.active = False

    def _activate(self) -> None:
        pass

    def _infer(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _close(self) -> None:
        pass

    def __enter__(self) -> RunnerBase:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.io.network}, {self.device}, {self.precision})"


@contextmanager
def private_stream(device: torch.device | str) -> Iterator[torch.cuda.Stream | None]:
    """A fresh CUDA stream made current on `device` for the block (None and nothing done on the CPU).

    For timing a runner outside a pipeline: on the legacy default stream TensorRT synchronises the whole device on
    every call, which would both slow it and charge it for everyone else's work.
    """
    device = torch.device(device)
    if device.type != "cuda":
        yield None
        return
    stream = torch.cuda.Stream(device)
    with torch.cuda.device(device), torch.cuda.stream(stream):
        yield stream
