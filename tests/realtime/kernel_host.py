"""warp_cuda's kernels run exactly on the CPU: their C++ source compiled with g++, one loop over the launch grid.

The kernels use no shared memory, barriers or atomics, so defining `__global__`/`__device__` away, supplying
threadIdx/blockIdx/blockDim and a float-backed `__half` turns each launch into a plain loop with the same
arithmetic (float32, the same expressions; only fp16 rounding of `__half` crops is not modelled). The tests use it
for what the kernels do at their edges: bounds, boxes and degenerate matrices, without a GPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from realtime.pipeline import warp_cuda

_PRELUDE = r"""
#include <cmath>
#include <algorithm>
using std::min; using std::max;
struct Dim { int x, y, z; };
static Dim threadIdx, blockIdx, blockDim;
#define __global__
#define __device__
#define __forceinline__ inline
struct __half { float v; };
inline __half __float2half_rn(float f) { return __half{f}; }
inline float __half2float(__half h) { return h.v; }
"""

_DRIVER = r"""
static void grid(int blocks_x, int blocks_y, int threads, void (*body)(void*), void* args) {
    blockDim = Dim{threads, 1, 1};
    for (int by = 0; by < blocks_y; ++by)
        for (int bx = 0; bx < blocks_x; ++bx)
            for (int t = 0; t < threads; ++t) {
                blockIdx = Dim{bx, by, 0};
                threadIdx = Dim{t, 0, 0};
                body(args);
            }
}

struct AlignArgs { const unsigned char* frame; int w, h; const float* inv; int size; float* out; };
static void align_body(void* p) {
    AlignArgs* a = (AlignArgs*)p;
    align_kernel<float>(a->frame, a->w, a->h, a->inv, a->size, a->out);
}

struct PasteArgs {
    unsigned char* frame; int w, h; const float* fwd; const int* boxes; int n; int ux, uy, uw, uh;
    const float* crops; const float* mask; int size;
};
static void paste_body(void* p) {
    PasteArgs* a = (PasteArgs*)p;
    paste_kernel<float>(a->frame, a->w, a->h, a->fwd, a->boxes, a->n, a->ux, a->uy, a->uw, a->uh, a->crops,
                        a->mask, a->size);
}

extern "C" void run_align(const unsigned char* frame, int w, int h, const float* inv, int n, int size, float* out,
                          int threads) {
    AlignArgs a{frame, w, h, inv, size, out};
    grid((size * size + threads - 1) / threads, n, threads, align_body, &a);
}

extern "C" void run_paste(unsigned char* frame, int w, int h, const float* fwd, const int* boxes, int n, int ux,
                          int uy, int uw, int uh, const float* crops, const float* mask, int size, int threads) {
    PasteArgs a{frame, w, h, fwd, boxes, n, ux, uy, uw, uh, crops, mask, size};
    grid((uw * uh + threads - 1) / threads, 1, threads, paste_body, &a);
}
"""


def available() -> str | None:
    """None when g++ is here, else why the kernels cannot run on the CPU."""
    return None if shutil.which("g++") else "g++ is not installed: the CUDA kernels cannot be run on the CPU"


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL:
    source = _PRELUDE + warp_cuda._SOURCE.replace("#include <cuda_fp16.h>", "") + _DRIVER
    tag = hashlib.sha256(source.encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / "dancecam-kernel-host"
    folder.mkdir(exist_ok=True)
    lib = folder / f"warp-{tag}.so"
    if not lib.exists():
        src = folder / f".warp-{tag}-{os.getpid()}.cpp"
        src.write_text(source)
        tmp = folder / f".warp-{tag}-{os.getpid()}.so"  # one compile per process; the rename is atomic
        proc = subprocess.run(
            ["g++", "-O2", "-std=c++17", "-shared", "-fPIC", "-Wno-unknown-pragmas", str(src), "-o", str(tmp)],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        src.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise RuntimeError(f"g++ cannot compile the kernels:\n{proc.stderr}")
        tmp.replace(lib)
    return ctypes.CDLL(str(lib))


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    assert a.flags.c_contiguous
    return ctypes.c_void_p(a.ctypes.data)


def align(frame: np.ndarray, inv: np.ndarray, size: int) -> np.ndarray:
    """align_kernel<float>: (N, 3, size, size) float32 crops from an (H, W, 3) uint8 frame and (N, 6) inverses."""
    frame = np.ascontiguousarray(frame, np.uint8)
    inv = np.ascontiguousarray(inv, np.float32).reshape(-1, 6)
    out = np.zeros((len(inv), 3, size, size), np.float32)
    h, w = frame.shape[:2]
    _library().run_align(_ptr(frame), w, h, _ptr(inv), len(inv), size, _ptr(out), warp_cuda._THREADS)
    return out


def paste(
    frame: np.ndarray,
    width: int,
    height: int,
    fwd: np.ndarray,
    boxes: np.ndarray,
    union: tuple[int, int, int, int],
    crops: np.ndarray,
    mask: np.ndarray,
) -> None:
    """paste_kernel<float> in place on `frame`, a uint8 buffer holding at least height x width x 3 values (more
    for guard bytes); `union` is the launch's (ux, uy, uw, uh), as `paste_faces` computes it."""
    assert frame.dtype == np.uint8
    assert frame.flags.c_contiguous
    fwd = np.ascontiguousarray(fwd, np.float32).reshape(-1, 6)
    boxes = np.ascontiguousarray(boxes, np.int32).reshape(-1, 4)
    crops = np.ascontiguousarray(crops, np.float32)
    mask = np.ascontiguousarray(mask, np.float32)
    ux, uy, uw, uh = union
    _library().run_paste(
        _ptr(frame), width, height, _ptr(fwd), _ptr(boxes), len(fwd), ux, uy, uw, uh, _ptr(crops), _ptr(mask),
        crops.shape[-1], warp_cuda._THREADS,
    )  # fmt: skip
