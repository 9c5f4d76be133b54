"""The one owner of a pipeline's device resources: device, CUDA stream, pinned staging buffers, frame tensors, masks.

Design notes: docs/design-notes.md, section realtime/pipeline/context.py.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from engines.errors import ConfigError
from realtime.pipeline.masks import CoverMask, MaskSpec, build_mask


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' → the first CUDA device when one works, else the CPU; an explicit CUDA request must be satisfiable."""
    if str(device) == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"unknown device {device!r}: use auto, cpu or cuda[:N]") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but this machine has no usable CUDA device")
        index = dev.index or 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r} asked for, but only {torch.cuda.device_count()} CUDA device(s)")
        dev = torch.device("cuda", index)
    elif dev.type != "cpu":
        raise ConfigError(f"device {device!r} is not supported: use auto, cpu or cuda[:N]")
    return dev


MASK_CACHE = 8  # blend masks kept per context (one per crop size and mask setting in use)


@dataclass(slots=True)
class FrameBuffers:
    """Everything sized by the frame: reused frame after frame at one resolution."""

    shape: tuple[int, ...]  # (H, W, 3) for RGB, (H * 3 / 2, W) for packed yuv420p planes
    frame: torch.Tensor  # uint8 on the device: the frame the stages read and write
    host_in: torch.Tensor  # uint8 on the host (pinned with CUDA): staging for the upload
    host_out: torch.Tensor  # uint8 on the host (pinned with CUDA): staging for the download


class DeviceContext:
    """Device, stream and buffers for one pipeline (one session). Not thread-safe: one worker thread uses it."""

    def __init__(self, device: str | torch.device = "auto") -> None:
        self.device = resolve_device(device)
        self.is_cuda = self.device.type == "cuda"
        if self.is_cuda and importlib.util.find_spec("cupy") is None:
            raise ConfigError(
                "the CUDA pipeline needs CuPy (the gpu extra): run ./scripts/setup.sh on this machine, or "
                "pip install 'dancecam[gpu]'; or use --device cpu"
            )
        if self.is_cuda:
            from realtime.pipeline import warp_cuda

            try:
                warp_cuda.compile_kernels()  # once per process (cached): fail now, not on the first face
            except RuntimeError as e:
                raise ConfigError(f"{e}; or use --device cpu") from e
        self.stream: torch.cuda.Stream | None = torch.cuda.Stream(self.device) if self.is_cuda else None
        self._buffers: FrameBuffers | None = None
        self._masks: dict[tuple[int, MaskSpec | CoverMask], torch.Tensor] = {}
        self._done: torch.cuda.Event | None = torch.cuda.Event() if self.is_cuda else None
        self.reallocations = 0  # frame buffer (re)allocations: 1 per resolution seen

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """Make this context's stream current: every kernel of the frame is queued on it."""
        if self.stream is None:
            yield
            return
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            yield

    def buffers(self, shape: tuple[int, ...]) -> FrameBuffers:
        b = self._buffers
        if b is not None and b.shape == shape:
            return b
        if self.is_cuda and b is not None:
            # the old buffers may still be in use by queued copies: let them finish before they are freed
            assert self.stream is not None
            self.stream.synchronize()
        frame = torch.empty(shape, dtype=torch.uint8, device=self.device)
        if self.is_cuda:
            staging = (torch.empty(shape, dtype=torch.uint8, pin_memory=True) for _ in range(2))
            self._buffers = b = FrameBuffers(shape, frame, *staging)
        else:  # the frame already lives on the host: no staging copies to make
            self._buffers = b = FrameBuffers(shape, frame, frame, frame)
        self.reallocations += 1
        return b

    def upload(self, frame: np.ndarray) -> torch.Tensor:
        """Copy a uint8 frame (H, W, 3) RGB, or packed (H * 3 / 2, W) yuv420p planes, into the device buffer."""
        ok = isinstance(frame, np.ndarray) and frame.dtype == np.uint8
        ok = ok and ((frame.ndim == 3 and frame.shape[2] == 3) or frame.ndim == 2)
        if not ok:
            shape = getattr(frame, "shape", None)
            raise ValueError(
                f"expected an (H, W, 3) uint8 RGB frame or uint8 yuv420p planes, got {type(frame).__name__} {shape}"
            )
        b = self.buffers(tuple(frame.shape))
        if not self.is_cuda:
            np.copyto(b.frame.numpy(), frame)
            return b.frame
        np.copyto(b.host_in.numpy(), frame)
        b.frame.copy_(b.host_in, non_blocking=True)
        return b.frame

    def download(self, frame: torch.Tensor) -> np.ndarray:
        """The processed frame on the host as a new array; with CUDA, waits for this frame's work (the one sync)."""
        if not self.is_cuda:
            return frame.numpy().copy()
        b = self.buffers(tuple(frame.shape))
        b.host_out.copy_(frame, non_blocking=True)
        assert self._done is not None
        assert self.stream is not None
        self._done.record(self.stream)
        self._done.synchronize()
        return b.host_out.numpy().copy()

    def mask(self, size: int, spec: MaskSpec | CoverMask) -> torch.Tensor:
        """The (size, size) float32 blend mask on the device, built once per size and spec."""
        key = (size, spec)
        if key not in self._masks:
            if len(self._masks) >= MASK_CACHE:  # live settings change the spec: keep the recent ones
                self._masks.pop(next(iter(self._masks)))
            host = torch.from_numpy(np.array(build_mask(size, spec)))
            # from pinned memory without blocking: a pageable copy would wait for the stream mid-frame
            self._masks[key] = host.pin_memory().to(self.device, non_blocking=True) if self.is_cuda else host
        return self._masks[key]

    def close(self) -> None:
        """Free the buffers (a session's end); the context can still be used and will reallocate."""
        if self.stream is not None:
            self.stream.synchronize()
        self._buffers = None
        self._masks.clear()
