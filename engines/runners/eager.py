"""Torch eager: the reference backend (fp32 on CPU and GPU), and plain fp16 on either.

The model's forward takes the inputs positionally in `io.inputs` order (FaceDancer: `forward(target, w)`; ArcFace:
`forward(face)`) and returns the outputs in `io.outputs` order (one tensor for both networks).
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from engines.runners.base import NetworkIO, Precision, RunnerBase

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16}


def prepared_model(
    model: nn.Module, device: torch.device, dtype: torch.dtype, channels_last: bool = False
) -> nn.Module:
    """`model` in eval mode on `device` in `dtype` (and channels_last): the model itself when it already is, else
    a converted copy, so that runners sharing one model (`choose("auto")`) never change it under each other."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    tensors = [*model.parameters(), *model.buffers()]
    fits = all(
        t.device == device
        and (t.dtype == dtype or not t.is_floating_point())
        and (t.ndim != 4 or t.is_contiguous(memory_format=fmt))
        for t in tensors
    )
    if not fits:
        model = copy.deepcopy(model).to(device=device, dtype=dtype, memory_format=fmt)
    return model.eval()


_IEEE_LOCK = threading.Lock()  # guards the two below
_ieee_depth = 0  # fp32 sections open now, on any thread
_saved_precision: object = None  # the flag as the first of them found it


@contextlib.contextmanager
def ieee_fp32_convolutions() -> Iterator[None]:
    """cuDNN convolutions in full fp32 for the duration: torch lets them use TF32 by default (~1e-3 relative
    error on Ampere and later), which the fp32 reference must not. The flag is process-wide, so the sections of all
    threads share it: the first to open sets it, the last to close restores it, and none waits for another (an
    fp32 CUDA-graph capture takes seconds; MTCNN's short sections run beside it)."""
    global _ieee_depth, _saved_precision
    with _IEEE_LOCK:
        if _ieee_depth == 0:
            _saved_precision = _set_conv_precision("ieee")
        _ieee_depth += 1
    try:
        yield
    finally:
        with _IEEE_LOCK:
            _ieee_depth -= 1
            if _ieee_depth == 0:
                _set_conv_precision(_saved_precision)


def _set_conv_precision(value: object) -> object:
    """Set cuDNN's fp32 convolution precision ("ieee", or a value this returned before); returns the old one.
    torch >= 2.9 spells it `cudnn.conv.fp32_precision`; older torch has the boolean `cudnn.allow_tf32`."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        old = conv.fp32_precision
        conv.fp32_precision = value
        return old
    old_flag = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False if value == "ieee" else bool(value)
    return old_flag


class EagerRunner(RunnerBase):
    backend = "eager"

    def __init__(
        self,
        model: nn.Module,
        io: NetworkIO,
        device: torch.device | str = "cpu",
        precision: Precision = "fp32",
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if precision not in DTYPES:
            raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
        self.io = io
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.precision = precision
        self.channels_last = channels_last
        self._source: nn.Module | None = model
        self._model: nn.Module | None = None
        self._dtype = DTYPES[precision]

    def _activate(self) -> None:
        assert self._source is not None
        self._model = prepared_model(self._source, self.device, self._dtype, self.channels_last)
        self._source = None  # the runner holds only what it runs

    def _infer(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        assert self._model is not None
        exact = self.device.type == "cuda" and self.precision == "fp32"
        with torch.inference_mode(), ieee_fp32_convolutions() if exact else contextlib.nullcontext():
            args = [feeds[name].to(self.device, self._dtype, non_blocking=True) for name in self.io.input_names]
            if self.channels_last:
                args = [a.contiguous(memory_format=torch.channels_last) if a.ndim == 4 else a for a in args]
            out = self._model(*args)
            outs = out if isinstance(out, (tuple, list)) else (out,)
            # float32, plainly contiguous: what every backend gives, whatever it computed in
            return {
                name: t.to(torch.float32, memory_format=torch.contiguous_format)
                for name, t in zip(self.io.output_names, outs, strict=True)
            }

    def _close(self) -> None:
        self._model = self._source = None
