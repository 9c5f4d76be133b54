"""The whole-frame baseline for align + paste-back, written the way the common face-swap tools do it.

Roop- and FaceFusion-style `paste_back`, in our own words: each face is cut out with one `cv2.warpAffine`; to paste
it back, the crop and its mask are each warped with the inverted matrix over the WHOLE frame, and every face then
blends the whole frame in float32, `frame * (1 - m) + face * m`. Same inputs and outputs as
`realtime.pipeline.warp_cpu`'s `align_faces` and `paste_faces`, so `benchmarks.warp_cpu_bench` can time both on the
same data.
"""

from __future__ import annotations

import cv2
import numpy as np


def naive_align(frame: np.ndarray, matrices: np.ndarray, size: int = 256) -> np.ndarray:
    """(N, 3, size, size) float32 crops in [-1, 1] from an (H, W, 3) uint8 RGB frame, one warp per face."""
    crops = []
    for m in np.asarray(matrices, np.float64):
        crop = cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        crops.append(crop.astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0)
    return np.stack(crops) if crops else np.zeros((0, 3, size, size), np.float32)


def naive_paste(frame: np.ndarray, crops: np.ndarray, matrices: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend (N, 3, S, S) crops in [-1, 1] into the (H, W, 3) uint8 frame, in place, whole frame per face."""
    h, w = frame.shape[:2]
    for crop, m in zip(crops, np.asarray(matrices, np.float64), strict=True):
        back = cv2.invertAffineTransform(m)  # crop -> frame
        face = np.clip((crop.transpose(1, 2, 0) + 1.0) * 127.5, 0, 255).astype(np.uint8)
        face_full = cv2.warpAffine(face, back, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        mask_full = cv2.warpAffine(np.asarray(mask, np.float32), back, (w, h), flags=cv2.INTER_LINEAR)
        m3 = np.clip(mask_full, 0.0, 1.0)[..., None]
        blended = frame.astype(np.float32) * (1.0 - m3) + face_full.astype(np.float32) * m3
        frame[...] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return frame
