"""The baselines for align + paste-back: the whole-frame way of the common face-swap tools, and Deep-Live-Cam's box way.

Roop- and FaceFusion-style `paste_back`, in our own words: each face is cut out with one `cv2.warpAffine`; to paste
it back, the crop and its mask are each warped with the inverted matrix over the WHOLE frame, and every face then
blends the whole frame in float32, `frame * (1 - m) + face * m`. Same inputs and outputs as
`realtime.pipeline.warp_cpu`'s `align_faces` and `paste_faces`, so `benchmarks.warp_cpu_bench` can time both on the
same data. `dlc_align` and `dlc_paste` are Deep-Live-Cam's way at inswapper's 128 crops: a uint8 crop and blob, and a
paste confined to the face's box with a uint8 alpha template and a uint8 blend.
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


def dlc_align(frame: np.ndarray, matrices: np.ndarray, size: int = 128) -> np.ndarray:
    """Deep-Live-Cam's (insightface's) crop for inswapper: one uint8 warp per face, then a float32 NCHW blob in
    [0, 1] (`cv2.dnn.blobFromImage`)."""
    crops = [cv2.warpAffine(frame, m, (size, size), borderValue=0.0) for m in np.asarray(matrices, np.float64)]
    return cv2.dnn.blobFromImages(crops, 1.0 / 255.0, (size, size), (0, 0, 0), swapRB=False)


def dlc_paste(frame: np.ndarray, crops: np.ndarray, matrices: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Deep-Live-Cam's "fast paste back", in our words: per face, (N, 3, S, S) crops in [0, 1] to uint8, warped
    with a uint8 alpha template into the box the crop's corners reach (2 px margin) and blended in uint8 there."""
    h, w = frame.shape[:2]
    size = crops.shape[-1]
    corners = np.array([[0, 0, 1], [size, 0, 1], [size, size, 1], [0, size, 1]], np.float64)
    for crop, m in zip(crops, np.asarray(matrices, np.float64), strict=True):
        face = np.clip(crop.transpose(1, 2, 0) * 255.0, 0, 255).astype(np.uint8)
        back = cv2.invertAffineTransform(m)
        xy = corners @ back.T
        x0, y0 = int(np.floor(xy[:, 0].min())), int(np.floor(xy[:, 1].min()))
        x1, y1 = int(np.ceil(xy[:, 0].max())), int(np.ceil(xy[:, 1].max()))
        if x0 >= x1 or y0 >= y1:
            continue
        x0, y0, x1, y1 = max(0, x0 - 2), max(0, y0 - 2), min(w, x1 + 3), min(h, y1 + 3)
        if x0 >= x1 or y0 >= y1:
            continue
        box_m = back.copy()
        box_m[:, 2] -= (x0, y0)
        bw, bh = x1 - x0, y1 - y0
        face_box = cv2.warpAffine(face, box_m, (bw, bh), borderMode=cv2.BORDER_REPLICATE)
        a = cv2.warpAffine(alpha, box_m, (bw, bh), borderValue=0)
        a3 = cv2.merge([a, a, a])
        roi = frame[y0:y1, x0:x1]
        mixed = cv2.add(cv2.multiply(face_box, a3, scale=1 / 255), cv2.multiply(roi, 255 - a3, scale=1 / 255))
        roi[...] = mixed
    return frame
