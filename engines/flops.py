"""The compute floor of a network on a device: FLOPs counted from the module over the device's measured peak.

    floor_ms = FLOPs / peak FLOP/s

Design notes: docs/design-notes.md, section engines/flops.py.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from engines.facedancer import FaceDancer, FaceDancerConfig

PeakKind = str  # "fp32", "tf32" or "fp16"


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 x MAC) of one call of `fn`, counted by dispatch, without gradients."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


@lru_cache(maxsize=8)
def facedancer_flops(config: FaceDancerConfig | None = None) -> int:
    """FLOPs of one FaceDancer forward on one face (the mapping network, run once per identity, not included)."""
    config = config or FaceDancerConfig()
    with torch.device("meta"):
        model = FaceDancer(config).eval()
        target = torch.empty(1, 3, config.image_size, config.image_size)
        w = torch.empty(1, config.mapping_width)
    return count_flops(lambda: model(target, w))


@dataclass(frozen=True, slots=True)
class Peak:
    """A measured dense-matmul throughput."""

    kind: PeakKind
    tflops: float
    size: int  # n of the n x n x n matmul (channels of the 1x1 convolution)
    ms: float  # best time of one call
    device: str
    kernel: str = "matmul"  # the kernel that reached it

    def floor_ms(self, flops: float) -> float:
        return flops / (self.tflops * 1e12) * 1e3

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


_PEAKS: dict[tuple[str, PeakKind], Peak] = {}  # measured once per process: the benchmarks' "cached per run"


def peak(device: torch.device | str, kind: PeakKind = "fp32", remeasure: bool = False) -> Peak:
    """The measured peak of `device` for `kind` (fp32 / tf32 / fp16), measured on first use, then cached.

    `remeasure` measures again and keeps the higher: a benchmark calls it once more at its end, so that a
    neighbour that held the cores during the first measurement cannot leave the peak too low (the floor too high).
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type == "cpu" and kind != "fp32":
        raise ValueError(f"the CPU peak is measured in fp32 only, not {kind}")
    if kind not in ("fp32", "tf32", "fp16"):
        raise ValueError(f"peak kind must be fp32, tf32 or fp16, not {kind!r}")
    key = (str(device), kind)
    if key not in _PEAKS:
        _PEAKS[key] = _measure(device, kind)
    elif remeasure:
        _PEAKS[key] = max(_PEAKS[key], _measure(device, kind), key=lambda p: p.tflops)
    return _PEAKS[key]


def device_peaks(device: torch.device | str, remeasure: bool = False) -> dict[PeakKind, Peak]:
    """Every peak that applies to `device`: fp32 on the CPU; fp32, tf32 and fp16 on CUDA."""
    kinds = ("fp32", "tf32", "fp16") if torch.device(device).type == "cuda" else ("fp32",)
    return {k: peak(device, k, remeasure) for k in kinds}


def peak_kind(device: torch.device | str, precision: str) -> PeakKind:
    """Which peak bounds a network run in `precision` (fp32 / fp16) on `device`."""
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be fp32 or fp16, not {precision!r}")
    if torch.device(device).type != "cuda":
        return "fp32"
    return "fp16" if precision == "fp16" else "fp32"  # fp32 runners here keep TF32 off (module docstring)


def floor_ms(flops: float, device: torch.device | str, precision: str = "fp32") -> float:
    """The time `flops` take at `device`'s measured peak for `precision`."""
    return peak(device, peak_kind(device, precision)).floor_ms(flops)


@dataclass(frozen=True, slots=True)
class Floor:
    """The FaceDancer compute floor of one frame: `faces` crops at the device's peak for `precision`."""

    faces: int
    gflop: float
    peak: Peak
    ms: float

    def to_dict(self) -> dict[str, object]:
        return {"faces": self.faces, "gflop": self.gflop, "ms": self.ms, "peak": self.peak.to_dict()}


def facedancer_floor(
    device: torch.device | str, precision: str = "fp32", faces: int = 1, config: FaceDancerConfig | None = None
) -> Floor:
    flops = facedancer_flops(config) * faces
    p = peak(device, peak_kind(device, precision))
    return Floor(faces, flops / 1e9, p, p.floor_ms(flops))


# --- measuring --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _matmul_tf32(allowed: bool) -> Iterator[None]:
    """Allow or forbid TF32 in fp32 matmuls for the block (newer torch spells it fp32_precision)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        old = matmul.fp32_precision
        matmul.fp32_precision = "tf32" if allowed else "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision = old
    else:  # pragma: no cover - torch < 2.9
        old_flag = matmul.allow_tf32
        matmul.allow_tf32 = allowed
        try:
            yield
        finally:
            matmul.allow_tf32 = old_flag


def _measure(device: torch.device, kind: PeakKind, budget_s: float = 0.3) -> Peak:
    best: tuple[float, str, int, float] | None = None  # (tflops, kernel, size, ms)
    ctx = _matmul_tf32(kind == "tf32") if device.type == "cuda" else contextlib.nullcontext()
    with ctx, torch.no_grad():
        for kernel, size, flops, fn in _kernels(device, kind):
            ms = _best_ms(fn, device, budget_s)
            tflops = flops / (ms / 1e3) / 1e12
            if best is None or tflops > best[0]:
                best = (tflops, kernel, size, ms)
    assert best is not None
    return Peak(kind, best[0], best[2], best[3], str(device), best[1])


def _kernels(device: torch.device, kind: PeakKind) -> list[tuple[str, int, float, Callable[[], object]]]:
    """(name, size, FLOPs, call) of the dense kernels whose best throughput is the peak."""
    dtype = torch.float16 if kind == "fp16" else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    # big enough to saturate the device, small enough to time in a fraction of a second
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    out = torch.empty(n, n, device=device, dtype=dtype)
    kernels: list[tuple[str, int, float, Callable[[], object]]] = [
        ("matmul", n, 2.0 * n**3, lambda: torch.mm(a, b, out=out))
    ]
    if device.type == "cpu":
        # MKL's sgemm does not take the AVX-512 path on every CPU (AMD) that oneDNN's convolutions take: a 1x1
        # convolution is the same dense product (pixels x channels by channels x channels) computed by oneDNN
        c, hw = 1024, 64
        x = torch.randn(1, c, hw, hw, generator=gen).contiguous(memory_format=torch.channels_last)
        k = torch.randn(c, c, 1, 1, generator=gen).contiguous(memory_format=torch.channels_last)
        kernels.append(("conv1x1", c, 2.0 * c * c * hw * hw, lambda: F.conv2d(x, k)))
    return kernels


def _best_ms(fn: Callable[[], object], device: torch.device, budget_s: float, reps: int = 4) -> float:
    """Best ms per call over trials of `reps` calls back to back (launch overhead amortised on CUDA)."""
    cuda = device.type == "cuda"
    reps = reps if cuda else 1
    fn()  # warm-up: kernel selection, clocks
    if cuda:
        torch.cuda.synchronize(device)
    best = float("inf")
    deadline = time.perf_counter() + budget_s
    trials = 0
    while trials < 3 or (time.perf_counter() < deadline and trials < 50):
        trials += 1
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / reps)
        else:
            t0 = time.perf_counter()
            fn()
            best = min(best, (time.perf_counter() - t0) * 1e3)
    return best
