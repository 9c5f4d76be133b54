"""Face alignment and paste-back on the GPU: two fused CuPy kernels with the CPU path's behaviour
(`realtime.pipeline.warp_cpu`), on torch tensors, on the caller's CUDA stream, with no host synchronisation.

Design notes: docs/design-notes.md, section realtime/pipeline/warp_cuda.py.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from engines import registry
from engines.errors import ConfigError
from engines.facedancer import MODEL_NAME as FACEDANCER

_SOURCE = r"""
#include <cuda_fp16.h>

__device__ __forceinline__ float texel(const unsigned char* img, int w, int h, int x, int y, int c) {
    x = min(max(x, 0), w - 1);  // border replicated
    y = min(max(y, 0), h - 1);
    return (float)img[((long long)y * w + x) * 3 + c];
}

template <typename T>
__device__ __forceinline__ void store(T* p, float v);
template <> __device__ __forceinline__ void store<float>(float* p, float v) { *p = v; }
template <> __device__ __forceinline__ void store<__half>(__half* p, float v) { *p = __float2half_rn(v); }

template <typename T>
__device__ __forceinline__ float load(const T* p);
template <> __device__ __forceinline__ float load<float>(const float* p) { return *p; }
template <> __device__ __forceinline__ float load<__half>(const __half* p) { return __half2float(*p); }

// inv: (N, 6) crop -> frame affine; out: (N, 3, S, S)
template <typename T>
__global__ void align_kernel(const unsigned char* frame, int w, int h, const float* inv, int size, T* out) {
    int n = blockIdx.y;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= size * size) return;
    int cx = i % size, cy = i / size;
    const float* m = inv + n * 6;
    // a point beyond the frame reads its border however far off it lies: clamped first, so that the conversion to
    // int below stays in range (past 2^31 it is undefined; the GPU saturates and the crop became garbage)
    float sx = fminf(fmaxf(m[0] * cx + m[1] * cy + m[2], -1.f), (float)w);
    float sy = fminf(fmaxf(m[3] * cx + m[4] * cy + m[5], -1.f), (float)h);
    int x0 = (int)floorf(sx), y0 = (int)floorf(sy);
    float fx = sx - x0, fy = sy - y0;
    long long plane = (long long)size * size;
    T* dst = out + (long long)n * 3 * plane + i;
    #pragma unroll
    for (int c = 0; c < 3; ++c) {
        float top = texel(frame, w, h, x0, y0, c) * (1.f - fx) + texel(frame, w, h, x0 + 1, y0, c) * fx;
        float bot = texel(frame, w, h, x0, y0 + 1, c) * (1.f - fx) + texel(frame, w, h, x0 + 1, y0 + 1, c) * fx;
        float v = top * (1.f - fy) + bot * fy;
        store<T>(dst + c * plane, v * (1.f / 127.5f) - 1.f);
    }
}

// one tap of a (S, S) plane, zero outside (the CPU path warps with a constant zero border)
__device__ __forceinline__ float tap(const float* plane, int size, int x, int y) {
    if (x < 0 || y < 0 || x >= size || y >= size) return 0.f;
    return plane[y * size + x];
}

// one tap of a crop channel as a 0..255 pixel value (clipped, as the CPU path clips before warping), zero outside
template <typename T>
__device__ __forceinline__ float pixel(const T* plane, int size, int x, int y) {
    if (x < 0 || y < 0 || x >= size || y >= size) return 0.f;
    return fminf(fmaxf((load<T>(plane + y * size + x) + 1.f) * 127.5f, 0.f), 255.f);
}

// fwd: (N, 6) frame -> crop affine; boxes: (N, 4) x0, y0, x1, y1 (end-exclusive, clipped);
// union box origin (ux, uy) and width uw; crops (N, 3, S, S) in [-1, 1]; mask (S, S) in [0, 1]
template <typename T>
__global__ void paste_kernel(unsigned char* frame, int w, int h, const float* fwd, const int* boxes, int n_faces,
                             int ux, int uy, int uw, int uh, const T* crops, const float* mask, int size) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= uw * uh) return;
    int px = ux + i % uw, py = uy + i / uw;
    if (px < 0 || py < 0 || px >= w || py >= h) return;  // the boxes are clipped on the host; never write outside
    float rgb[3];
    bool loaded = false;
    long long plane = (long long)size * size;
    for (int n = 0; n < n_faces; ++n) {
        const int* b = boxes + n * 4;
        if (px < b[0] || py < b[1] || px >= b[2] || py >= b[3]) continue;
        const float* m = fwd + n * 6;
        // outside (-1, size) a point weighs nothing; clamped there, so the conversion to int stays in range
        float cx = fminf(fmaxf(m[0] * px + m[1] * py + m[2], -1.f), (float)size);
        float cy = fminf(fmaxf(m[3] * px + m[4] * py + m[5], -1.f), (float)size);
        int x0 = (int)floorf(cx), y0 = (int)floorf(cy);
        float fx = cx - x0, fy = cy - y0;
        float w00 = (1.f - fx) * (1.f - fy), w10 = fx * (1.f - fy), w01 = (1.f - fx) * fy, w11 = fx * fy;
        float alpha = tap(mask, size, x0, y0) * w00 + tap(mask, size, x0 + 1, y0) * w10
                    + tap(mask, size, x0, y0 + 1) * w01 + tap(mask, size, x0 + 1, y0 + 1) * w11;
        if (alpha <= 0.f) continue;
        if (!loaded) {
            for (int c = 0; c < 3; ++c) rgb[c] = (float)frame[((long long)py * w + px) * 3 + c];
            loaded = true;
        }
        const T* crop = crops + (long long)n * 3 * plane;
        #pragma unroll
        for (int c = 0; c < 3; ++c) {
            const T* p = crop + c * plane;
            float v00 = pixel<T>(p, size, x0, y0), v10 = pixel<T>(p, size, x0 + 1, y0);
            float v01 = pixel<T>(p, size, x0, y0 + 1), v11 = pixel<T>(p, size, x0 + 1, y0 + 1);
            float face = v00 * w00 + v10 * w10 + v01 * w01 + v11 * w11;
            rgb[c] = rgb[c] + alpha * (face - rgb[c]);
            rgb[c] = floorf(rgb[c] + 0.5f);  // each face's paste rounds to uint8, as the CPU path does
        }
    }
    if (loaded) {
        unsigned char* out = frame + ((long long)py * w + px) * 3;
        for (int c = 0; c < 3; ++c) out[c] = (unsigned char)fminf(fmaxf(rgb[c], 0.f), 255.f);
    }
}
"""

_NAMES = (
    "align_kernel<float>",
    "align_kernel<__half>",
    "paste_kernel<float>",
    "paste_kernel<__half>",
)
_THREADS = 256


@lru_cache(maxsize=1)
def _module() -> Any:
    import cupy

    data = registry.data_config(FACEDANCER)
    if (data.mean, data.std) != (127.5, 127.5):  # the kernels' constants; the CPU path reads the entry
        raise ConfigError(f"the CUDA warp kernels normalise crops with (x - 127.5) / 127.5, not {data}")

    return cupy.RawModule(code=_SOURCE, options=("-std=c++17",), name_expressions=_NAMES)


_SUFFIXES = {torch.float32: "<float>", torch.float16: "<__half>"}


def _kernel(name: str, dtype: torch.dtype) -> Any:
    if dtype not in _SUFFIXES:
        raise ValueError(f"crops must be float32 or float16, not {dtype}")
    return _module().get_function(name + _SUFFIXES[dtype])


def compile_kernels() -> None:
    """Compile the module now (NVRTC, about a second): at a pipeline's start rather than on its first face, and
    loudly when the CUDA headers NVRTC needs are missing."""
    try:
        for dtype in _SUFFIXES:
            _kernel("align_kernel", dtype)
            _kernel("paste_kernel", dtype)
    except Exception as e:  # CuPy's CompileException / NVRTC errors
        raise RuntimeError(
            f"the CUDA warp kernels do not compile here ({type(e).__name__}: {str(e).splitlines()[0]}); with CUDA "
            "12.2 or newer NVRTC needs the CUDA runtime headers: pip install nvidia-cuda-runtime-cu12 (or -cu13)"
        ) from e


def _cp(t: torch.Tensor) -> Any:
    """A CuPy view of a CUDA tensor through the CUDA array interface (version 2: no stream handshake). DLPack's
    exchange would make CuPy's current stream wait on torch's with an event per tensor, or, outside the
    ExternalStream block, queue that wait on the legacy default stream every thread shares."""
    import cupy

    return cupy.asarray(t.detach())


Box = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class FaceGeometry:
    """One frame's faces on the device, from one upload: what align and paste-back both read."""

    fwd: torch.Tensor  # (N, 6) float32, frame → crop
    inv: torch.Tensor  # (N, 6) float32, crop → frame
    boxes: torch.Tensor  # (N, 4) int32 frame regions; (0, 0, 0, 0) for a face that is skipped
    host_boxes: tuple[Box | None, ...]  # the boxes uploaded, kept on the host: paste checks its own against them

    @classmethod
    def from_buffer(cls, t: torch.Tensor, n: int, host_boxes: Sequence[Box | None] | None = None) -> FaceGeometry:
        """Views into one float32 buffer laid out by `geometry_buffer` (on any device)."""
        boxes = tuple(host_boxes) if host_boxes is not None else (None,) * n
        return cls(t[: 6 * n].view(n, 6), t[6 * n : 12 * n].view(n, 6), t[12 * n :].view(torch.int32).view(n, 4), boxes)


def clip_boxes(boxes: Sequence[Box | None], width: int, height: int) -> list[Box | None]:
    """Face boxes checked (four integers each) and clipped to the frame; a box that is left empty becomes None."""
    out: list[Box | None] = []
    for b in boxes:
        if b is None:
            out.append(None)
            continue
        try:
            x0, y0, x1, y1 = (operator.index(v) for v in b)
        except (TypeError, ValueError) as e:
            raise ValueError(f"a face box must be four integers (x0, y0, x1, y1), got {b!r}") from e
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
        out.append((x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None)
    return out


def paste_region(
    boxes: Sequence[Box | None],
    n_faces: int,
    width: int,
    height: int,
    uploaded: Sequence[Box | None] | None = None,
) -> tuple[list[Box | None], tuple[int, int, int, int] | None]:
    """What `paste_faces` launches over: the boxes clipped to the frame (checked against the crops' count and, when
    the geometry was uploaded before, against the boxes it holds), and their union (x, y, width, height); None
    when no face is pasted."""
    if len(boxes) != n_faces:
        raise ValueError(f"{len(boxes)} boxes for {n_faces} crops")
    clipped = clip_boxes(boxes, width, height)
    if uploaded is not None and clip_boxes(uploaded, width, height) != clipped:
        raise ValueError(
            "the uploaded geometry holds other boxes than the ones given to paste: upload the geometry with the "
            "same boxes (upload_geometry(matrices, boxes, device))"
        )
    kept = [b for b in clipped if b is not None]
    if not kept:
        return clipped, None
    ux, uy = min(b[0] for b in kept), min(b[1] for b in kept)
    return clipped, (ux, uy, max(b[2] for b in kept) - ux, max(b[3] for b in kept) - uy)


def invert_affines(m: np.ndarray) -> np.ndarray:
    """(N, 2, 3) crop → frame inverses of frame → crop matrices, as `cv2.warpAffine` inverts them: a singular matrix
    (coincident landmarks give one) gets the zero matrix, so its crop is the frame's corner pixel on both paths,
    instead of a LinAlgError here only."""
    a, b, c = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
    d, e, f = m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
    det = a * e - b * d
    r = np.divide(1.0, det, out=np.zeros_like(det), where=det != 0)
    ia, ib, id_, ie = e * r, -b * r, -d * r, a * r
    return np.stack([np.stack([ia, ib, -(ia * c + ib * f)], -1), np.stack([id_, ie, -(id_ * c + ie * f)], -1)], 1)


def geometry_buffer(
    matrices: torch.Tensor | np.ndarray, boxes: list[tuple[int, int, int, int] | None] | None
) -> tuple[np.ndarray, int]:
    """The faces' forward matrices, inverses and boxes packed in one float32 array (the int32 boxes bit for bit),
    and the face count. Inverses on the host: `torch.linalg.inv` on the device would check its result and
    synchronise. `boxes` None: empty boxes (align alone does not read them)."""
    m = np.asarray(torch.as_tensor(matrices).cpu() if isinstance(matrices, torch.Tensor) else matrices, np.float64)
    m = m.reshape(-1, 2, 3)
    n = len(m)
    inv = invert_affines(m)
    rows = [b or (0, 0, 0, 0) for b in boxes] if boxes is not None else [(0, 0, 0, 0)] * n
    box = np.array(rows, np.int32) if rows else np.zeros((0, 4), np.int32)
    if box.shape != (n, 4):
        raise ValueError(f"{len(box)} boxes for {n} faces")
    parts = (m.reshape(-1).astype(np.float32), inv.reshape(-1).astype(np.float32), box.view(np.float32).reshape(-1))
    return np.concatenate(parts), n


def upload_geometry(
    matrices: torch.Tensor | np.ndarray, boxes: list[tuple[int, int, int, int] | None] | None, device: torch.device
) -> FaceGeometry:
    """The faces' geometry on the device in one non-blocking copy from pinned memory."""
    packed, n = geometry_buffer(matrices, boxes)
    return FaceGeometry.from_buffer(torch.from_numpy(packed).pin_memory().to(device, non_blocking=True), n, boxes)


def align_faces(
    frame: torch.Tensor,
    matrices: torch.Tensor | np.ndarray,
    size: int = 256,
    dtype: torch.dtype = torch.float32,
    geometry: FaceGeometry | None = None,
) -> torch.Tensor:
    """(N, 3, size, size) crops in [-1, 1] from an (H, W, 3) uint8 RGB CUDA frame; one kernel launch. `geometry`:
    the frame's faces already uploaded (`upload_geometry`), else uploaded here."""
    if frame.device.type != "cuda" or frame.dtype != torch.uint8 or frame.ndim != 3:
        raise ValueError("align_faces needs an (H, W, 3) uint8 CUDA tensor")
    import cupy

    inv = (geometry or upload_geometry(matrices, None, frame.device)).inv
    n = inv.shape[0]
    out = torch.empty((n, 3, size, size), dtype=dtype, device=frame.device)
    if n == 0:
        return out
    frame = frame.contiguous()
    h, w = frame.shape[:2]
    grid = ((size * size + _THREADS - 1) // _THREADS, n)
    with cupy.cuda.ExternalStream(torch.cuda.current_stream(frame.device).cuda_stream):
        _kernel("align_kernel", dtype)(
            grid, (_THREADS,), (_cp(frame), np.int32(w), np.int32(h), _cp(inv), np.int32(size), _cp(out))
        )
    return out


def paste_faces(
    frame: torch.Tensor,
    crops: torch.Tensor,
    matrices: torch.Tensor | np.ndarray,
    mask: torch.Tensor,
    boxes: list[tuple[int, int, int, int] | None],
    geometry: FaceGeometry | None = None,
) -> torch.Tensor:
    """Blend (N, 3, S, S) crops in [-1, 1] back into the (H, W, 3) uint8 CUDA frame, in place; one launch.

    `boxes` are the faces' frame regions from `realtime.pipeline.warp_cpu.face_box` (computed on the host from the
    matrices the host already has, so no device value is read back here), clipped to the frame here; None skips a
    face. `geometry`: the same matrices and boxes already uploaded (`upload_geometry`; other boxes are a
    ValueError), else uploaded here.
    """
    if frame.device.type != "cuda" or frame.dtype != torch.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError("paste_faces needs a contiguous (H, W, 3) uint8 CUDA tensor")
    if not frame.is_contiguous():
        raise ValueError("paste_faces needs a contiguous (H, W, 3) uint8 CUDA tensor")
    import cupy

    h, w = frame.shape[:2]
    size = crops.shape[-1]
    if crops.ndim != 4 or crops.shape[1:] != (3, size, size) or mask.shape != (size, size):
        raise ValueError(f"crops {tuple(crops.shape)} and mask {tuple(mask.shape)} must be (N, 3, S, S) and (S, S)")
    boxes, union = paste_region(boxes, crops.shape[0], w, h, geometry.host_boxes if geometry is not None else None)
    if union is None:
        return frame
    geo = geometry or upload_geometry(matrices, boxes, frame.device)
    crops = crops.contiguous()
    ux, uy, uw, uh = union
    mask = mask.to(device=frame.device, dtype=torch.float32).contiguous()
    grid = ((uw * uh + _THREADS - 1) // _THREADS,)
    with cupy.cuda.ExternalStream(torch.cuda.current_stream(frame.device).cuda_stream):
        args = (
            _cp(frame), np.int32(w), np.int32(h), _cp(geo.fwd), _cp(geo.boxes), np.int32(len(boxes)),
            np.int32(ux), np.int32(uy), np.int32(uw), np.int32(uh), _cp(crops), _cp(mask), np.int32(size),
        )  # fmt: skip
        _kernel("paste_kernel", crops.dtype)(grid, (_THREADS,), args)
    return frame
