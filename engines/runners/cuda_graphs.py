"""Torch fp16 + channels_last + CUDA graphs: one whole-network graph per batch bucket, replayed on the caller's stream.

Design notes: docs/design-notes.md, section engines/runners/cuda_graphs.py.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from engines.runners.base import NetworkIO, Precision, RunnerBase
from engines.runners.eager import ieee_fp32_convolutions

DEFAULT_BUCKETS: tuple[int, ...] = (1, 2, 4, 8)
WARMUP_ITERS = 3  # PyTorch's CUDA-graph notes warm up with a few iterations before capture
_CAPTURE_LOCK = threading.Lock()  # one capture in the process at a time (PyTorch's CUDA-graph constraints)
_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16}


def choose_bucket(buckets: Sequence[int], batch: int) -> int:
    """The smallest bucket that holds `batch` (`buckets` ascending); ValueError when none does."""
    for size in buckets:
        if size >= batch:
            return size
    raise ValueError(f"batch {batch} is larger than the largest CUDA-graph bucket {buckets[-1]}")


def _check_buckets(buckets: Iterable[int], max_batch: int) -> tuple[int, ...]:
    sizes = tuple(sorted(set(int(b) for b in buckets)))
    if not sizes or sizes[0] < 1 or sizes[-1] > max_batch:
        raise ValueError(f"buckets must be batch sizes in 1..{max_batch}, got {tuple(buckets)}")
    return sizes


@dataclass(slots=True)
class _Bucket:
    size: int
    inputs: tuple[torch.Tensor, ...]  # static, in the compute dtype and layout, in `io.inputs` order
    outputs: tuple[torch.Tensor, ...] = ()  # the graph's static outputs (CUDA); empty on the CPU path
    graph: torch.cuda.CUDAGraph | None = None


class CudaGraphRunner(RunnerBase):
    backend = "cuda-graphs"

    def __init__(
        self,
        model: nn.Module,
        io: NetworkIO,
        device: torch.device | str = "cuda",
        buckets: Iterable[int] = DEFAULT_BUCKETS,
        precision: Precision = "fp16",
        channels_last: bool = True,
        cudnn_benchmark: bool = True,
    ) -> None:
        super().__init__()
        if precision not in _DTYPES:
            raise ValueError(f"precision must be one of {sorted(_DTYPES)}, got {precision!r}")
        if not all(s.batched for s in (*io.inputs, *io.outputs)):
            raise ValueError(f"{io.network}: CUDA-graph buckets need a batch axis on every input and output")
        self.io = io
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None and torch.cuda.is_available():
            self.device = torch.device("cuda", torch.cuda.current_device())  # so feeds' devices compare equal
        self.precision = precision
        self.buckets = _check_buckets(buckets, io.max_batch)
        self.channels_last = channels_last
        self.cudnn_benchmark = cudnn_benchmark  # autotune convolutions during warm-up (kept for the capture)
        self._source: nn.Module | None = model
        self._model: nn.Module | None = None
        self._dtype = _DTYPES[precision]
        self._slots: dict[int, _Bucket] = {}
        self._lock = threading.Lock()
        self._done: torch.cuda.Event | None = None  # recorded after each call's last kernel (CUDA only)

    # --- activation ---------------------------------------------------------------------------------------

    def _activate(self) -> None:
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"CUDA graphs need a CUDA device; {self.device} is not usable here")
        assert self._source is not None
        # the caller's thread-local modes must not leak into buffers and graphs that outlive this call
        with torch.inference_mode(False), torch.autocast(self.device.type, enabled=False):
            # always our own copy: a graph reads the weights by address, so nobody else may move or free them
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            model = copy.deepcopy(self._source).to(device=self.device, dtype=self._dtype, memory_format=fmt)
            self._model = model.eval().requires_grad_(False)
            try:
                self._slots = {size: _Bucket(size, self._static_inputs(size)) for size in self.buckets}
                if self.device.type == "cuda":
                    # fp32 means IEEE fp32, as for the eager reference: the kernels picked now are the ones replayed
                    exact = ieee_fp32_convolutions() if self.precision == "fp32" else contextlib.nullcontext()
                    with _CAPTURE_LOCK, exact:
                        self._capture()
            except BaseException:
                self._model, self._slots, self._done = None, {}, None
                raise
        self._source = None

    def _static_inputs(self, size: int) -> tuple[torch.Tensor, ...]:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return tuple(
            torch.zeros((size, *spec.shape[1:]), device=self.device, dtype=self._dtype).contiguous(
                memory_format=fmt if len(spec.shape) == 4 else torch.contiguous_format
            )
            for spec in self.io.inputs
        )

    def _run(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        assert self._model is not None
        out = self._model(*inputs)
        outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        if len(outs) != len(self.io.outputs):
            raise RuntimeError(f"{self.io.network}: model gave {len(outs)} outputs for {list(self.io.output_names)}")
        return outs

    def _capture(self) -> None:
        cudnn = torch.backends.cudnn
        benchmark = cudnn.benchmark
        with torch.cuda.device(self.device), torch.no_grad():
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))  # the static inputs' zero fill
            order = sorted(self._slots, reverse=True)  # largest first: smaller graphs fit in its freed blocks
            cudnn.benchmark = self.cudnn_benchmark or benchmark  # restored below, under the capture lock
            try:
                with torch.cuda.stream(side):
                    for size in order:
                        for _ in range(WARMUP_ITERS):
                            self._run(self._slots[size].inputs)
                    pool = torch.cuda.graph_pool_handle()
                    for size in order:
                        slot = self._slots[size]
                        graph = torch.cuda.CUDAGraph()
                        # the warm-up stream again (cuBLAS workspaces are per stream); "thread_local": other
                        # threads of the server may keep using CUDA while this one captures
                        graph.capture_begin(pool=pool, capture_error_mode="thread_local")
                        try:
                            slot.outputs = self._run(slot.inputs)
                        except BaseException:
                            with contextlib.suppress(Exception):  # the capture's own error is the one to report
                                graph.capture_end()
                            raise
                        graph.capture_end()
                        slot.graph = graph
            finally:
                cudnn.benchmark = benchmark
            done = torch.cuda.Event()
            done.record(side)  # the first call, on whichever stream, waits for the warm-up
            self._done = done

    # --- inference ----------------------------------------------------------------------------------------

    def _infer(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n = int(feeds[self.io.inputs[0].name].shape[0])
        slot = self._slots[choose_bucket(self.buckets, n)]
        for name in self.io.input_names:
            if feeds[name].device != self.device:
                raise ValueError(f"{name} is on {feeds[name].device}; this runner takes tensors on {self.device}")
        with self._lock, torch.no_grad():
            stream = torch.cuda.current_stream(self.device) if slot.graph is not None else None
            if stream is not None and self._done is not None:
                stream.wait_event(self._done)  # the previous call (maybe on another stream) is done with the buffers
            for name, static in zip(self.io.input_names, slot.inputs, strict=True):
                x = feeds[name]
                static[:n].copy_(x)  # cast to the compute dtype and layout in the same kernel
                if n < slot.size:
                    static[n:].copy_(x[-1:])  # broadcast: pad with the last real row
            if slot.graph is not None:
                slot.graph.replay()  # launches on the current stream
                outs = slot.outputs
            else:
                outs = self._run(slot.inputs)
            # fresh float32 NCHW tensors: the next replay overwrites the static outputs
            result = {
                name: t[:n].to(torch.float32, memory_format=torch.contiguous_format, copy=True)
                for name, t in zip(self.io.output_names, outs, strict=True)
            }
            if stream is not None and self._done is not None:
                self._done.record(stream)
        return result

    def _close(self) -> None:
        # the capture lock: no capture is under way in the process meanwhile, which CUDA requires of the event wait
        # and PyTorch of empty_cache (a device-wide synchronize would fail under another thread's capture)
        with _CAPTURE_LOCK, self._lock:  # and a call under way finishes queuing before the buffers go
            captured = self.device.type == "cuda" and bool(self._slots) and torch.cuda.is_available()
            if captured and self._done is not None:
                self._done.synchronize()  # the last call's replay and copies out; they read the buffers freed below
            self._slots = {}
            self._model = self._source = None
            self._done = None
            if captured:
                torch.cuda.empty_cache()  # the graphs' private pool is only returned to the device this way
