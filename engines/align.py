"""Five-point face alignment: the least-squares similarity that maps detected landmarks onto the ArcFace template.

Matrices are OpenCV-style (2, 3) affines in pixel coordinates (pixel centres at integers), the convention of
`cv2.warpAffine(image, M, (size, size))`. Every function is batched, runs on the tensors' device, and never reads
a value back to the host, so it can sit on the GPU path between detection and the warp kernel. `estimate_norms`
is the same solve on host numpy arrays, for landmarks that are on the host already (the tracker's).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from engines.registry import ARCFACE_112, Template

# The ArcFace 112x112 template (left eye, right eye, nose, left and right mouth corner), from the registry
ARCFACE_TEMPLATE: tuple[tuple[float, float], ...] = ARCFACE_112.points
ARCFACE_SIZE = ARCFACE_112.size
# points whose rms spread is below this fraction of their magnitude are one point: float64 rounding of the
# coordinates is ~1e-16 of it, a real face's landmarks spread over pixels
_DEGENERATE_SPREAD = 1e-9


def template(
    size: int = ARCFACE_SIZE,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    base: Template | None = None,
) -> torch.Tensor:
    """The (5, 2) template for a `size` x `size` crop: `base` (a registry entry's template; None: ArcFace's 112)
    scaled by size / base.size.

    Uniform scaling is what the official FaceDancer code does for its 256 crop (not insightface's 128-based
    layout, which shifts x by 8 for sizes that are multiples of 128).
    """
    base = base or ARCFACE_112
    t = torch.tensor(base.points, dtype=torch.float64, device=device) * (size / base.size)
    return t.to(dtype)


def similarity_transform(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity (rotation, uniform scale, translation; never a reflection) mapping src onto dst.

    src, dst: (B, N, 2) or (N, 2) point sets, N >= 2. Returns (B, 2, 3) or (2, 3) in src's dtype.

    In 2-D, Umeyama's solution restricted to proper rotations has a closed form: with points as complex numbers
    z (src) and w (dst), centred, the optimum of |a z + b - w|^2 is a = sum(conj(z) w) / sum(|z|^2). That is the
    same matrix scikit-image's SVD-based estimate gives (including its det < 0 correction), but needs no SVD,
    so it is cheap in a batch and has no device synchronisation. Computed in float64.
    """
    if src.shape != dst.shape or src.shape[-1] != 2 or src.ndim not in (2, 3):
        raise ValueError(
            f"expected matching (B, N, 2) or (N, 2) point sets, got {tuple(src.shape)} and {tuple(dst.shape)}"
        )
    out_dtype = src.dtype if src.is_floating_point() else torch.float32
    s = src.to(torch.float64)
    d = dst.to(device=src.device, dtype=torch.float64)
    s_mean = s.mean(dim=-2, keepdim=True)
    d_mean = d.mean(dim=-2, keepdim=True)
    sx, sy = (s - s_mean).unbind(-1)
    dx, dy = (d - d_mean).unbind(-1)
    var = (sx * sx + sy * sy).sum(-1)
    # A degenerate src (all points equal, up to the rounding of their coordinates) gives exactly a = b = 0:
    # everything maps to dst's centroid, instead of NaN or a scale of rounding noise over a vanishing spread.
    tol = _DEGENERATE_SPREAD * (1 + s_mean.abs().amax(dim=(-2, -1)))
    degenerate = var <= s.shape[-2] * tol * tol
    var = torch.where(degenerate, torch.ones_like(var), var)
    a = torch.where(degenerate, 0.0, (sx * dx + sy * dy).sum(-1) / var)  # scale * cos(angle)
    b = torch.where(degenerate, 0.0, (sx * dy - sy * dx).sum(-1) / var)  # scale * sin(angle)
    mx, my = s_mean.squeeze(-2).unbind(-1)
    tx = d_mean[..., 0, 0] - (a * mx - b * my)
    ty = d_mean[..., 0, 1] - (b * mx + a * my)
    m = torch.stack((torch.stack((a, -b, tx), -1), torch.stack((b, a, ty), -1)), -2)
    return m.to(out_dtype)


def estimate_norm(landmarks: torch.Tensor, size: int = ARCFACE_SIZE, base: Template | None = None) -> torch.Tensor:
    """The (2, 3) or (B, 2, 3) matrix taking image landmarks ((5, 2) or (B, 5, 2)) to `base` scaled to `size`.

    `cv2.warpAffine(image, M, (size, size))` with it gives the aligned crop.
    """
    if landmarks.shape[-2:] != (5, 2):
        raise ValueError(f"expected (5, 2) or (B, 5, 2) landmarks, got {tuple(landmarks.shape)}")
    dst = template(size, device=landmarks.device, dtype=torch.float64, base=base).expand_as(landmarks)
    return similarity_transform(landmarks, dst)


@lru_cache(maxsize=16)
def _host_template(size: int, base: Template) -> tuple[np.ndarray, complex]:
    """`template(size, base=base)` on the host as complex points z = x + iy, centred, and their centroid."""
    w = (np.array(base.points, np.float64) * (size / base.size)).view(np.complex128)[:, 0]
    mean = w.sum() / len(w)
    centred = w - mean
    centred.setflags(write=False)
    return centred, complex(mean)


def estimate_norms(landmarks: np.ndarray, size: int = ARCFACE_SIZE, base: Template | None = None) -> np.ndarray:
    """`estimate_norm` on the host: (B, 2, 3) float64 matrices from (B, 5, 2) landmarks (any real dtype).

    The same closed form in numpy on complex points (the same products and sums, so the same matrices to float64
    rounding): for the few faces of a frame, a dozen numpy calls cost microseconds where the torch ops cost tens
    (each op's dispatch), and far more with cold caches.
    """
    lm = np.ascontiguousarray(landmarks, np.float64)
    if lm.ndim != 3 or lm.shape[1:] != (5, 2):
        raise ValueError(f"expected (B, 5, 2) landmarks, got {lm.shape}")
    w, w_mean = _host_template(size, base or ARCFACE_112)
    z = lm.view(np.complex128)[..., 0]  # (B, 5): x + iy, no copy
    z_mean = z.sum(axis=1) / 5  # not .mean(): its Python wrapper costs more than the sum here
    zc = z - z_mean[:, None]
    var = (zc.real * zc.real + zc.imag * zc.imag).sum(axis=1)
    ab = (zc.conj() * w).sum(axis=1)  # sum(conj(z) w): var * (scale cos + i scale sin)
    # Coincident points (up to the rounding of their coordinates) give a = b = 0 exactly, as similarity_transform
    # does: everything maps to the template's centroid.
    tol = _DEGENERATE_SPREAD * (1 + np.maximum(np.abs(z_mean.real), np.abs(z_mean.imag)))
    ab = np.divide(ab, var, out=np.zeros_like(ab), where=var > 5 * tol * tol)
    t = w_mean - ab * z_mean  # translation: the template's centroid minus the rotated, scaled landmark centroid
    m = np.empty((len(lm), 2, 3), np.float64)
    m[:, 0, 0] = m[:, 1, 1] = ab.real
    m[:, 1, 0] = ab.imag
    m[:, 0, 1] = -ab.imag
    m[:, 0, 2] = t.real
    m[:, 1, 2] = t.imag
    return m


def invert_affine(m: torch.Tensor) -> torch.Tensor:
    """The inverse of (..., 2, 3) affine matrices (closed form, float64 inside, no host sync)."""
    if m.shape[-2:] != (2, 3):
        raise ValueError(f"expected (..., 2, 3) affine matrices, got {tuple(m.shape)}")
    x = m.to(torch.float64)
    a, b, tx = x[..., 0, 0], x[..., 0, 1], x[..., 0, 2]
    c, d, ty = x[..., 1, 0], x[..., 1, 1], x[..., 1, 2]
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    itx = -(ia * tx + ib * ty)
    ity = -(ic * tx + id_ * ty)
    inv = torch.stack((torch.stack((ia, ib, itx), -1), torch.stack((ic, id_, ity), -1)), -2)
    return inv.to(m.dtype)


def apply_affine(m: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Points (..., N, 2) mapped through matrices (..., 2, 3): x' = A x + t."""
    return points @ m[..., :2].transpose(-1, -2) + m[..., 2].unsqueeze(-2)
