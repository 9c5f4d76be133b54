"""warp_cuda's kernels run exactly on the CPU: their C++ source compiled with g++, one loop over the launch grid.

The kernels use no shared memory, barriers or atomics, so defining `__global__`/`__device__` away and supplying
threadIdx/blockIdx/blockDim turns a launch into a loop over its threads, in order or in any permutation; `__half`
is g++'s `_Float16` (IEEE binary16, round to nearest even, as `__float2half_rn`). Two builds of one source: a
shared library loaded with ctypes, and a standalone program under AddressSanitizer/UBSan run as a subprocess.
Not modelled: NVRTC fuses multiply-adds by default (--fmad=true); here float32 arithmetic is unfused
(-ffp-contract=off), so the GPU may differ from this in the last bits of an intermediate.
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
import torch

from realtime.pipeline import warp, warp_cuda

_PRELUDE = r"""
#include <cmath>
#include <algorithm>
using std::min; using std::max;
struct Dim { int x, y, z; };
static Dim threadIdx, blockIdx, blockDim;
#define __global__
#define __device__
#define __forceinline__ inline
struct __half { _Float16 v; };
static_assert(sizeof(__half) == 2, "__half must be 16 bits: numpy float16 arrays are passed as-is");
inline __half __float2half_rn(float f) { return __half{(_Float16)f}; }  // IEEE conversion: nearest, ties to even
inline float __half2float(__half h) { return (float)h.v; }
"""

_DRIVER = r"""
// Every thread of a (blocks_x, blocks_y) x threads launch once: in order when `order` is null, else in the order of
// `order`, a permutation of the launch's linear thread ids (block id * threads + thread).
template <typename Body>
static void grid(int blocks_x, int blocks_y, int threads, const long long* order, Body body) {
    blockDim = Dim{threads, 1, 1};
    long long total = (long long)blocks_x * blocks_y * threads;
    for (long long k = 0; k < total; ++k) {
        long long id = order ? order[k] : k;
        long long block = id / threads;
        blockIdx = Dim{(int)(block % blocks_x), (int)(block / blocks_x), 0};
        threadIdx = Dim{(int)(id % threads), 0, 0};
        body();
    }
}

template <typename T>
static void run_align(const unsigned char* frame, int w, int h, const float* inv, int n, int size, T* out,
                      int threads, const long long* order) {
    grid((size * size + threads - 1) / threads, n, threads, order,
         [&] { align_kernel<T>(frame, w, h, inv, size, out); });
}

template <typename T>
static void run_paste(unsigned char* frame, int w, int h, const float* fwd, const int* boxes, int n, int ux, int uy,
                      int uw, int uh, const T* crops, const float* mask, int size, int threads,
                      const long long* order) {
    grid((uw * uh + threads - 1) / threads, 1, threads, order,
         [&] { paste_kernel<T>(frame, w, h, fwd, boxes, n, ux, uy, uw, uh, crops, mask, size); });
}

extern "C" {
// the prelude's __float2half_rn on its own, to check it against IEEE rounding
void to_half(const float* in, __half* out, long long n) {
    for (long long i = 0; i < n; ++i) out[i] = __float2half_rn(in[i]);
}
void align_float(const unsigned char* f, int w, int h, const float* inv, int n, int s, float* o, int t,
                 const long long* ord) { run_align<float>(f, w, h, inv, n, s, o, t, ord); }
void align_half(const unsigned char* f, int w, int h, const float* inv, int n, int s, __half* o, int t,
                const long long* ord) { run_align<__half>(f, w, h, inv, n, s, o, t, ord); }
void paste_float(unsigned char* f, int w, int h, const float* m, const int* b, int n, int ux, int uy, int uw, int uh,
                 const float* c, const float* k, int s, int t, const long long* ord) {
    run_paste<float>(f, w, h, m, b, n, ux, uy, uw, uh, c, k, s, t, ord);
}
void paste_half(unsigned char* f, int w, int h, const float* m, const int* b, int n, int ux, int uy, int uw, int uh,
                const __half* c, const float* k, int s, int t, const long long* ord) {
    run_paste<__half>(f, w, h, m, b, n, ux, uy, uw, uh, c, k, s, t, ord);
}
}
"""

# The sanitizer build's program: `warp-check DIR` reads DIR/ints.bin (int32: op, half, threads, w, h, n, size, ux,
# uy, uw, uh) and the arrays, each into a heap block of exactly the size the launch implies, so AddressSanitizer
# sees any access past an array's end; it writes DIR/out.bin (the crops, or the pasted frame).
_MAIN = r"""
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

template <typename T>
static std::vector<T> read(const std::string& dir, const char* name, size_t count) {
    std::string path = dir + "/" + name;
    FILE* f = fopen(path.c_str(), "rb");
    if (!f) { fprintf(stderr, "cannot open %s\n", path.c_str()); exit(2); }
    std::vector<T> data(count);
    size_t got = count ? fread(data.data(), sizeof(T), count, f) : 0;
    bool extra = fgetc(f) != EOF;
    fclose(f);
    if (got != count || extra) { fprintf(stderr, "%s does not hold %zu values\n", name, count); exit(2); }
    return data;
}

template <typename T>
static void write(const std::string& dir, const std::vector<T>& data) {
    FILE* f = fopen((dir + "/out.bin").c_str(), "wb");
    if (!f || fwrite(data.data(), sizeof(T), data.size(), f) != data.size()) { fprintf(stderr, "write\n"); exit(2); }
    fclose(f);
}

template <typename T>
static void serve(const std::string& dir, const std::vector<int>& a, const std::vector<long long>& order) {
    int op = a[0], threads = a[2], w = a[3], h = a[4], n = a[5], size = a[6];
    int ux = a[7], uy = a[8], uw = a[9], uh = a[10];
    size_t pixels = (size_t)w * h * 3, crops = (size_t)n * 3 * size * size;
    const long long* ord = order.empty() ? nullptr : order.data();
    std::vector<unsigned char> frame = read<unsigned char>(dir, "frame.bin", pixels);
    std::vector<float> mat = read<float>(dir, "mat.bin", (size_t)n * 6);
    if (op == 0) {
        std::vector<T> out(crops);
        run_align<T>(frame.data(), w, h, mat.data(), n, size, out.data(), threads, ord);
        write(dir, out);
    } else {
        std::vector<int> boxes = read<int>(dir, "boxes.bin", (size_t)n * 4);
        std::vector<T> crop = read<T>(dir, "crops.bin", crops);
        std::vector<float> mask = read<float>(dir, "mask.bin", (size_t)size * size);
        run_paste<T>(frame.data(), w, h, mat.data(), boxes.data(), n, ux, uy, uw, uh, crop.data(), mask.data(), size,
                     threads, ord);
        write(dir, frame);
    }
}

int main(int argc, char** argv) {
    if (argc != 3) { fprintf(stderr, "usage: warp-check DIR ORDER_COUNT\n"); return 2; }
    std::string dir = argv[1];
    std::vector<int> a = read<int>(dir, "ints.bin", 11);
    std::vector<long long> order = read<long long>(dir, "order.bin", (size_t)atoll(argv[2]));
    if (a[1]) serve<__half>(dir, a, order); else serve<float>(dir, a, order);
    return 0;
}
"""

# One float32 semantics on every host: no fused multiply-adds (aarch64 g++ would fuse by default), no fast-math.
_COMMON = ["-std=c++17", "-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas"]
_LIBRARY_FLAGS = ["-O2", "-shared", "-fPIC"]
# float-cast-overflow is not part of -fsanitize=undefined in g++: a float -> int conversion out of range is UB
_SANITIZER_FLAGS = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined,float-cast-overflow",
                    "-fno-sanitize-recover=all"]  # fmt: skip


def available() -> str | None:
    """None when g++ is here, else why the kernels cannot run on the CPU."""
    return None if shutil.which("g++") else "g++ is not installed: the CUDA kernels cannot be run on the CPU"


def kernel_source() -> str:
    """The exact source CuPy compiles, without the CUDA header the prelude stands in for."""
    return warp_cuda._SOURCE.replace("#include <cuda_fp16.h>", "")


def _build(name: str, source: str, flags: list[str]) -> Path:
    """`source` compiled with `flags`, cached under the temp folder by a hash of both (one compile per change)."""
    tag = hashlib.sha256((source + "\0".join(flags)).encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / "dancecam-kernel-host"
    folder.mkdir(exist_ok=True)
    target = folder / f"{name}-{tag}"
    if not target.exists():
        src = folder / f".{name}-{tag}-{os.getpid()}.cpp"
        src.write_text(source)
        tmp = folder / f".{name}-{tag}-{os.getpid()}.out"  # one compile per process; the rename is atomic
        proc = subprocess.run(
            ["g++", *_COMMON, *flags, str(src), "-o", str(tmp)], capture_output=True, text=True, timeout=300,
            check=False,
        )  # fmt: skip
        src.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise RuntimeError(f"g++ cannot compile the kernels:\n{proc.stderr}")
        tmp.replace(target)
    return target


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL:
    return ctypes.CDLL(str(_build("warp-lib", _PRELUDE + kernel_source() + _DRIVER, _LIBRARY_FLAGS)))


@lru_cache(maxsize=2)
def sanitizer_program(source: str | None = None) -> Path:
    """The kernels (`source`, else warp_cuda's) and the driver under AddressSanitizer and UBSan, as a program (the
    sanitizers' runtime must be loaded first, which a library opened inside Python cannot arrange)."""
    return _build("warp-check", _PRELUDE + (source or kernel_source()) + _DRIVER + _MAIN, _SANITIZER_FLAGS)


def _ptr(a: np.ndarray | None) -> ctypes.c_void_p | None:
    if a is None:
        return None
    assert a.flags.c_contiguous
    return ctypes.c_void_p(a.ctypes.data)


def launch_order(blocks: int, seed: int | None) -> np.ndarray | None:
    """None (in order), or every thread id of a launch of `blocks` blocks in a random order: blocks run in any order
    on a GPU, and threads of a block in any interleaving."""
    if seed is None:
        return None
    return np.random.default_rng(seed).permutation(blocks * warp_cuda._THREADS).astype(np.int64)


def _crop_type(dtype: np.dtype) -> str:
    if dtype == np.float32:
        return "float"
    if dtype == np.float16:
        return "half"
    raise ValueError(f"crops are float32 or float16, not {dtype}")


def _sanitized(
    ints: list[int], arrays: dict[str, np.ndarray], order: np.ndarray | None, out: np.ndarray, source: str | None
) -> None:
    """One launch in the sanitizer build; its output read into `out`. A sanitizer report raises with its text."""
    with tempfile.TemporaryDirectory(prefix="dancecam-kernel-") as d:
        np.array(ints, np.int32).tofile(f"{d}/ints.bin")
        for name, a in arrays.items():
            a.tofile(f"{d}/{name}.bin")
        (order if order is not None else np.zeros(0, np.int64)).tofile(f"{d}/order.bin")
        count = 0 if order is None else len(order)
        # leaks are not the kernels' business (they allocate nothing) and LeakSanitizer needs ptrace, which some
        # containers forbid; setarch -R: g++ 12's ASan cannot map its shadow memory under some kernels' ASLR
        command = [str(sanitizer_program(source)), d, str(count)]
        if shutil.which("setarch"):
            command = ["setarch", os.uname().machine, "-R", *command]
        env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0", "UBSAN_OPTIONS": "print_stacktrace=1"}
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, check=False)
        if proc.returncode != 0 or proc.stderr:
            raise RuntimeError(f"the sanitizer build failed (exit {proc.returncode}):\n{proc.stderr}")
        out[...] = np.fromfile(f"{d}/out.bin", out.dtype).reshape(out.shape)


def to_half(values: np.ndarray) -> np.ndarray:
    """float32 values through the prelude's `__float2half_rn`, as float16."""
    values = np.ascontiguousarray(values, np.float32)
    out = np.empty(values.shape, np.float16)
    _library().to_half(_ptr(values), _ptr(out), ctypes.c_longlong(values.size))
    return out


def align(
    frame: np.ndarray,
    inv: np.ndarray,
    size: int,
    dtype: type = np.float32,
    seed: int | None = None,
    sanitize: bool = False,
) -> np.ndarray:
    """align_kernel<float> or <__half>: (N, 3, size, size) crops from an (H, W, 3) uint8 frame and (N, 6) inverses.
    `seed`: run the threads in a random order; `sanitize`: in the sanitizer build."""
    frame = np.ascontiguousarray(frame, np.uint8)
    inv = np.ascontiguousarray(inv, np.float32).reshape(-1, 6)
    out = np.zeros((len(inv), 3, size, size), dtype)
    kind = _crop_type(out.dtype)
    h, w = frame.shape[:2]
    blocks = (size * size + warp_cuda._THREADS - 1) // warp_cuda._THREADS
    order = launch_order(blocks * len(inv), seed)
    if sanitize:
        ints = [0, kind == "half", warp_cuda._THREADS, w, h, len(inv), size, 0, 0, 0, 0]
        _sanitized(ints, {"frame": frame, "mat": inv}, order, out, None)
        return out
    fn = getattr(_library(), f"align_{kind}")
    fn(_ptr(frame), w, h, _ptr(inv), len(inv), size, _ptr(out), warp_cuda._THREADS, _ptr(order))
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
    seed: int | None = None,
    sanitize: bool = False,
    source: str | None = None,
) -> None:
    """paste_kernel<float> or <__half> (the crops' dtype) in place on `frame`, a uint8 buffer holding at least
    height x width x 3 values (more for guard bytes; the sanitizer build gets exactly those); `union` is the
    launch's (ux, uy, uw, uh), as `paste_faces` computes it. `seed`, `sanitize`: as for `align`; `source`: other
    kernel source for the sanitizer build (a deliberately broken kernel, to see the sanitizer report it)."""
    assert source is None or sanitize
    assert frame.dtype == np.uint8
    assert frame.flags.c_contiguous
    fwd = np.ascontiguousarray(fwd, np.float32).reshape(-1, 6)
    boxes = np.ascontiguousarray(boxes, np.int32).reshape(-1, 4)
    crops = np.ascontiguousarray(crops)
    mask = np.ascontiguousarray(mask, np.float32)
    kind = _crop_type(crops.dtype)
    ux, uy, uw, uh = union
    size = crops.shape[-1]
    order = launch_order((uw * uh + warp_cuda._THREADS - 1) // warp_cuda._THREADS, seed)
    if sanitize:
        ints = [1, kind == "half", warp_cuda._THREADS, width, height, len(fwd), size, ux, uy, uw, uh]
        pixels = frame.reshape(-1)[: width * height * 3]
        arrays = {"frame": pixels, "mat": fwd, "boxes": boxes, "crops": crops, "mask": mask}
        _sanitized(ints, arrays, order, pixels, source)
        return
    fn = getattr(_library(), f"paste_{kind}")
    fn(
        _ptr(frame), width, height, _ptr(fwd), _ptr(boxes), len(fwd), ux, uy, uw, uh, _ptr(crops), _ptr(mask), size,
        warp_cuda._THREADS, _ptr(order),
    )  # fmt: skip


def inverses(matrices: np.ndarray) -> np.ndarray:
    """The (N, 6) float32 crop -> frame inverses warp_cuda uploads for (N, 2, 3) frame -> crop matrices."""
    packed, n = warp_cuda.geometry_buffer(matrices, None)
    return warp_cuda.FaceGeometry.from_buffer(torch.from_numpy(packed), n).inv.numpy()


def align_faces(
    frame: np.ndarray, matrices: np.ndarray, size: int = 256, dtype: type = np.float32, **launch: object
) -> np.ndarray:
    """warp_cuda.align_faces with the kernel run here, on the inverses the host code uploads."""
    return align(frame, inverses(matrices), size, dtype, **launch)  # type: ignore[arg-type]


def paste_faces(
    frame: np.ndarray, crops: np.ndarray, matrices: np.ndarray, mask: np.ndarray, **launch: object
) -> np.ndarray:
    """warp.paste's CUDA path with the kernel run here, on a copy of `frame`: host boxes, the checked launch region,
    the packed geometry."""
    h, w = frame.shape[:2]
    boxes, union = warp_cuda.paste_region(warp.face_boxes(matrices, crops.shape[-1], w, h), len(matrices), w, h)
    out = np.ascontiguousarray(frame).copy()
    if union is None:
        return out
    packed, n = warp_cuda.geometry_buffer(matrices, boxes)
    geo = warp_cuda.FaceGeometry.from_buffer(torch.from_numpy(packed), n, boxes)
    paste(out.reshape(-1), w, h, geo.fwd.numpy(), geo.boxes.numpy(), union, crops, mask, **launch)  # type: ignore[arg-type]
    return out
