"""Face alignment and paste-back on the CPU (OpenCV): the reference path the GPU kernels must agree with.

Design notes: docs/design-notes.md, section realtime/pipeline/warp_cpu.py.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import TypeVar

import cv2
import numpy as np

from engines import registry
from engines.facedancer import MODEL_NAME as FACEDANCER

Box = tuple[int, int, int, int]
_T = TypeVar("_T")

_WARP = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
# below this the blend `roi + alpha * (face - roi)` rounds back to roi for any face and roi in 0..255
SUPPORT_THRESHOLD = 0.5 / 255
# crops are normalised as FaceDancer's registry entry says: (x - mean) / std, [-1, 1] for mean = std = 127.5
_DATA = registry.data_config(FACEDANCER)
# uint8 -> x / std - mean / std (x / 127.5 - 1), the same float32 values as numpy's float64 multiply then float32
# subtract
_NORMALISE = (np.arange(256) * (1 / _DATA.std)).astype(np.float32).reshape(1, 256) - np.float32(_DATA.mean / _DATA.std)

_local = threading.local()
_masks: dict[tuple[int, Box], tuple[np.ndarray, np.ndarray]] = {}  # (id, support) -> (mask, contiguous part)
_supports: dict[tuple[int, float], tuple[np.ndarray, Box | None]] = {}  # (id, threshold) -> (mask, support)


def _scratch(name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """A contiguous `shape` array reused across calls on this thread (grown as needed; contents undefined)."""
    bufs = _local.__dict__.setdefault("bufs", {})
    need = 1
    for s in shape:
        need *= s
    buf = bufs.get(name)
    if buf is None or buf.size < need or buf.dtype != dtype:
        buf = bufs[name] = np.empty(max(need, 1), dtype)
    return buf[:need].reshape(shape)


def _cached(cache: dict, key: tuple, mask: np.ndarray, make: Callable[[], _T]) -> _T:
    """`make()` memoised per read-only mask (build_mask's are); the entry holds the mask so its id stays unique."""
    hit = cache.get(key)
    if hit is not None and hit[0] is mask:
        return hit[1]
    value = make()
    if not mask.flags.writeable:
        if len(cache) >= 32:
            cache.clear()
        cache[key] = (mask, value)
    return value


def align_faces(frame: np.ndarray, matrices: np.ndarray, size: int = 256, out: np.ndarray | None = None) -> np.ndarray:
    """(N, 3, size, size) float32 crops in [-1, 1] from an (H, W, 3) uint8 RGB frame."""
    n = len(matrices)
    if out is None:
        out = np.empty((n, 3, size, size), np.float32)
    h, w = frame.shape[:2]
    # each face's region of the frame goes to RGBA in place in a frame-sized buffer (the rest is stale and never
    # read), so the warp keeps the frame's coordinates and gives exactly what warping the whole frame gives
    rgba = _scratch("rgba", (h, w, 4), np.uint8)
    crop = _scratch("crop", (size, size, 4), np.uint8)
    planes = [_scratch(f"plane{c}", (size, size), np.uint8) for c in range(4)]
    for i, m in enumerate(np.asarray(matrices, np.float64)):
        # the region the crop reads, grown 2 px for the bilinear footprint and OpenCV's 1/32 px rounding; where it
        # meets the frame's edge, replicating its border is replicating the frame's
        box = face_box(m, size, w, h) or (0, 0, w, h)  # off the frame: every texel is a replicated edge pixel
        x0, y0, x1, y1 = max(0, box[0] - 2), max(0, box[1] - 2), min(w, box[2] + 2), min(h, box[3] + 2)
        cv2.cvtColor(frame[y0:y1, x0:x1], cv2.COLOR_RGB2RGBA, dst=rgba[y0:y1, x0:x1])
        cv2.warpAffine(rgba, m, (size, size), dst=crop, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        cv2.split(crop, planes)
        for c in range(3):  # normalised by table lookup straight into the NCHW slot
            slot = out[i, c]
            if cv2.LUT(planes[c], _NORMALISE, dst=slot) is not slot:  # `out` not a float32 NCHW array OpenCV can
                slot[...] = cv2.LUT(planes[c], _NORMALISE)  # write in place: copy (never the case for ours)
    return out


def _frame_box(matrix: np.ndarray, corners: tuple[float, float, float, float], width: int, height: int) -> Box | None:
    """The clipped, end-exclusive frame region covering the crop rectangle `corners` (x0, y0, x1, y1)."""
    (a, b, c), (d, e, f) = np.asarray(matrix, np.float64).tolist()
    det = a * e - b * d
    if det == 0:
        return None
    # crop -> frame: the inverse of [[a, b, c], [d, e, f]]
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    ic, if_ = -(ia * c + ib * f), -(id_ * c + ie * f)
    cx0, cy0, cx1, cy1 = corners
    xs = [ia * u + ib * v + ic for u, v in ((cx0, cy0), (cx1, cy0), (cx0, cy1), (cx1, cy1))]
    ys = [id_ * u + ie * v + if_ for u, v in ((cx0, cy0), (cx1, cy0), (cx0, cy1), (cx1, cy1))]
    # math.floor and math.ceil: numpy's on scalars cost a microsecond each, and a face needs 4 boxes a frame
    x0, y0 = max(0, math.floor(min(xs))), max(0, math.floor(min(ys)))
    x1, y1 = min(width, math.ceil(max(xs)) + 1), min(height, math.ceil(max(ys)) + 1)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def face_box(matrix: np.ndarray, size: int, width: int, height: int) -> Box | None:
    """The frame region (x0, y0, x1, y1), end-exclusive and clipped, that the crop reaches; None when off-frame.

    Reaches, not covers: a frame pixel whose crop point lies anywhere in (-1, size) on both axes gets bilinear
    weight from an edge texel (up to -0.5 / size - 0.5 is only the crop's own area), which for a large face is
    several frame pixels more on each side.
    """
    return _frame_box(matrix, (-1.0, -1.0, float(size), float(size)), width, height)


def mask_support(mask: np.ndarray, threshold: float = SUPPORT_THRESHOLD) -> Box | None:
    """The crop region (x0, y0, x1, y1), end-exclusive, holding every mask value >= `threshold`; None if none.

    Cached for read-only masks (what `realtime.pipeline.masks.build_mask` returns): passing the same mask every frame
    costs nothing after the first call.
    """

    def make() -> Box | None:
        on = np.asarray(mask) >= threshold
        rows, cols = np.flatnonzero(on.any(axis=1)), np.flatnonzero(on.any(axis=0))
        return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1) if rows.size else None

    return _cached(_supports, (id(mask), threshold), mask, make)


def paste_faces(
    frame: np.ndarray,
    crops: np.ndarray,
    matrices: np.ndarray,
    mask: np.ndarray,
    support: Box | bool | None = True,
) -> np.ndarray:
    """Blend (N, 3, S, S) crops in [-1, 1] back into the (H, W, 3) uint8 frame, in place; returns the frame.

    `support`: the crop region outside which the mask is below `SUPPORT_THRESHOLD` (see `mask_support`), True to
    find it (cached for read-only masks), False or None to visit each face's whole box (the same result, slower).
    """
    h, w = frame.shape[:2]
    size = crops.shape[-1]
    crops = np.asarray(crops, np.float32)
    packed = frame.strides[1:] == (3, 1)  # rows of packed RGB pixels: OpenCV writes into the frame's boxes
    if support is True:
        support = mask_support(mask)
        if support is None:  # the mask is zero everywhere: nothing changes
            return frame
    elif support is False or support is None:
        support = (0, 0, size, size)
    sx0, sy0, sx1, sy1 = support
    # a frame pixel reads texels floor(c) and floor(c) + 1 of its crop point c, so it sees the support only if c
    # lies in (sx0 - 1, sx1) x (sy0 - 1, sy1); the source is the support grown by one texel, so every pixel visited
    # reads exactly the texels the whole crop would give it
    reach = (sx0 - 1, sy0 - 1, sx1, sy1)
    cx0, cy0, cx1, cy1 = max(0, sx0 - 1), max(0, sy0 - 1), min(size, sx1 + 1), min(size, sy1 + 1)
    sw, sh = cx1 - cx0, cy1 - cy0
    part = (cx0, cy0, cx1, cy1)
    mask_part = _cached(
        _masks, (id(mask), part), mask, lambda: np.ascontiguousarray(mask[cy0:cy1, cx0:cx1], np.float32)
    )
    # RGB (0..255, clipped) and mask as one float32 RGBA image: one vectorised warp moves both, and nothing is
    # rounded before the blend, as on the GPU
    src = _scratch("paste_src", (sh, sw, 4), np.float32)
    planes = [_scratch(f"paste{c}", (sh, sw), np.float32) for c in range(3)]
    for crop, m in zip(crops, np.asarray(matrices, np.float64), strict=True):
        full = face_box(m, size, w, h)
        seen = _frame_box(m, reach, w, h)
        if full is None or seen is None:
            continue
        x0, y0, x1, y1 = max(full[0], seen[0]), max(full[1], seen[1]), min(full[2], seen[2]), min(full[3], seen[3])
        if x1 <= x0 or y1 <= y0:
            continue
        bw, bh = x1 - x0, y1 - y0
        for c in range(3):  # x * std + mean ((x + 1) * 127.5) clipped to 0..255, plane by plane while it is in cache
            p = crop[c, cy0:cy1, cx0:cx1]
            cv2.addWeighted(p, _DATA.std, p, 0.0, _DATA.mean, dst=planes[c], dtype=cv2.CV_32F)
            cv2.threshold(planes[c], 255.0, 255.0, cv2.THRESH_TRUNC, dst=planes[c])
            cv2.threshold(planes[c], 0.0, 0.0, cv2.THRESH_TOZERO, dst=planes[c])
        cv2.merge([*planes, mask_part], dst=src)
        # frame (x0, y0) becomes (0, 0) of the box, crop (cx0, cy0) becomes (0, 0) of the source
        m_box = m.copy()
        m_box[:, 2] += m[:, :2] @ np.array([x0, y0], np.float64) - np.array([cx0, cy0], np.float64)
        warped = _scratch("warped", (bh, bw, 4), np.float32)
        cv2.warpAffine(src, m_box, (bw, bh), dst=warped, flags=_WARP, borderMode=cv2.BORDER_CONSTANT)
        face = cv2.cvtColor(warped, cv2.COLOR_RGBA2RGB, dst=_scratch("face", (bh, bw, 3), np.float32))
        alpha = cv2.extractChannel(warped, 3, dst=_scratch("alpha", (bh, bw), np.float32))
        # numpy, not cv2.subtract: OpenCV takes a 1x1 array beside a scalar for a 4-vector (a 4x1 result)
        keep = np.subtract(1.0, alpha, out=_scratch("keep", (bh, bw), np.float32))
        roi = frame[y0:y1, x0:x1]
        base = _scratch("base", (bh, bw, 3), np.float32)
        np.copyto(base, roi, casting="unsafe")
        # alpha * face + (1 - alpha) * roi, a convex mix of values in 0..255, rounded into the frame
        cv2.blendLinear(face, base, alpha, keep, dst=base)
        if packed:
            cv2.convertScaleAbs(base, dst=roi)
        else:  # a view OpenCV cannot write into (e.g. channels reversed): through a copy
            roi[...] = cv2.convertScaleAbs(base)
    return frame
