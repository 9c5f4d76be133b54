"""Face alignment and paste-back on the CPU (OpenCV): the reference path the GPU kernels must agree with.

- `align_faces`: each face warped onto the template crop (bilinear, border replicated so faces at the frame edge
  get no black band), normalised to [-1, 1] and laid out as one NCHW float32 batch.
- `paste_faces`: each crop warped back with its mask in one 4-channel warp and blended into the frame, touching only
  the face's bounding box in the frame, not the whole frame (the common tools' way, which costs tens of ms at 720p).

Matrices map frame pixels to crop pixels (what `engines.align.estimate_norm` returns), one (2, 3) per face. Pixel
centres sit at integer coordinates, as in OpenCV and the official FaceDancer code.
"""

from __future__ import annotations

import cv2
import numpy as np

_WARP = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP


def align_faces(frame: np.ndarray, matrices: np.ndarray, size: int = 256, out: np.ndarray | None = None) -> np.ndarray:
    """(N, 3, size, size) float32 crops in [-1, 1] from an (H, W, 3) uint8 RGB frame."""
    n = len(matrices)
    if out is None:
        out = np.empty((n, 3, size, size), np.float32)
    for i, m in enumerate(np.asarray(matrices, np.float64)):
        crop = cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        # (x - 127.5) / 127.5, written straight into the NCHW slot
        np.multiply(crop.transpose(2, 0, 1), 1 / 127.5, out=out[i], casting="unsafe")
        out[i] -= 1.0
    return out


def face_box(matrix: np.ndarray, size: int, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The frame region (x0, y0, x1, y1), end-exclusive and clipped, that the crop covers; None when off-frame."""
    a = np.vstack([np.asarray(matrix, np.float64), [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(a)[:2]
    corners = np.array([[-0.5, -0.5, 1], [size - 0.5, -0.5, 1], [-0.5, size - 0.5, 1], [size - 0.5, size - 0.5, 1]])
    pts = corners @ inv.T
    x0 = max(0, int(np.floor(pts[:, 0].min())))
    y0 = max(0, int(np.floor(pts[:, 1].min())))
    x1 = min(width, int(np.ceil(pts[:, 0].max())) + 1)
    y1 = min(height, int(np.ceil(pts[:, 1].max())) + 1)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def paste_faces(frame: np.ndarray, crops: np.ndarray, matrices: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend (N, 3, S, S) crops in [-1, 1] back into the (H, W, 3) uint8 frame, in place; returns the frame."""
    h, w = frame.shape[:2]
    size = crops.shape[-1]
    rgba = np.empty((size, size, 4), np.float32)
    rgba[..., 3] = mask
    for crop, m in zip(crops, np.asarray(matrices, np.float64), strict=True):
        box = face_box(m, size, w, h)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        # crop values to 0..255 with the mask as a fourth channel: one warp moves both
        np.clip((crop.transpose(1, 2, 0) + 1.0) * 127.5, 0.0, 255.0, out=rgba[..., :3])
        m_roi = m.copy()
        m_roi[:, 2] += m[:, :2] @ np.array([x0, y0], np.float64)  # the box's origin becomes (0, 0)
        face = cv2.warpAffine(
            rgba, m_roi, (x1 - x0, y1 - y0), flags=_WARP, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
        roi = frame[y0:y1, x0:x1]
        alpha = face[..., 3:4]
        blended = roi + alpha * (face[..., :3] - roi)
        np.add(blended, 0.5, out=blended)
        roi[...] = blended.astype(np.uint8)  # in [0, 255] already: a convex mix of two values in range
    return frame
