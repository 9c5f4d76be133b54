"""Align and paste-back on the frame's own device: the CuPy kernels on CUDA, OpenCV on the CPU.

Both take the frame as an (H, W, 3) uint8 tensor and host-side (N, 2, 3) float64 matrices (frame → crop), so the
pipeline is written once. The two paths agree within the tolerance the parity test states. The matrices come
from `face_matrices`, on the host for both paths (the landmarks are there already).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from engines.align import estimate_norms
from engines.registry import Template
from realtime.pipeline import warp_cpu
from realtime.pipeline.crops import zoom_out

if TYPE_CHECKING:
    from realtime.pipeline.warp_cuda import FaceGeometry

Box = tuple[int, int, int, int]
# per mask tensor: (tensor, its version, a read-only numpy view), so warp_cpu's per-mask caches hit frame after frame
_host_masks: dict[int, tuple[torch.Tensor, int, np.ndarray]] = {}


def face_matrices(
    landmarks: Sequence[np.ndarray] | np.ndarray, size: int, template: Template | None = None, zoom: float = 1.0
) -> np.ndarray:
    """(N, 2, 3) float64 frame → crop matrices for N faces' (5, 2) landmarks: the template (None: ArcFace's) scaled
    to `size`, zoomed out by `zoom` (see `crops.zoom_out`). On the host in numpy, whatever the frame's device."""
    return zoom_out(estimate_norms(np.stack(landmarks), size, template), size, zoom)


def face_boxes(matrices: np.ndarray, size: int, width: int, height: int) -> list[Box | None]:
    """Each face's frame region (end-exclusive, clipped), None for a face entirely off the frame."""
    return [warp_cpu.face_box(m, size, width, height) for m in matrices]


def upload_geometry(matrices: np.ndarray, boxes: list[Box | None], device: torch.device) -> FaceGeometry | None:
    """On CUDA, the faces' matrices and boxes in one upload, for `align` and `paste` to share; None on the CPU."""
    if device.type != "cuda":
        return None
    from realtime.pipeline import warp_cuda

    return warp_cuda.upload_geometry(matrices, boxes, device)


def align(
    frame: torch.Tensor,
    matrices: np.ndarray,
    size: int,
    dtype: torch.dtype = torch.float32,
    geometry: FaceGeometry | None = None,
) -> torch.Tensor:
    """(N, 3, size, size) crops in [-1, 1] of `dtype` on the frame's device."""
    if frame.device.type == "cuda":
        from realtime.pipeline import warp_cuda

        return warp_cuda.align_faces(frame, matrices, size, dtype, geometry)
    crops = warp_cpu.align_faces(frame.numpy(), matrices, size)
    return torch.from_numpy(crops).to(dtype)


def paste(
    frame: torch.Tensor,
    crops: torch.Tensor,
    matrices: np.ndarray,
    mask: torch.Tensor,
    boxes: list[Box | None],
    geometry: FaceGeometry | None = None,
) -> torch.Tensor:
    """Blend the crops back into `frame` in place, touching only the faces' boxes; returns `frame`."""
    if len(boxes) != crops.shape[0] or len(matrices) != crops.shape[0]:
        raise ValueError(f"{len(boxes)} boxes and {len(matrices)} matrices for {crops.shape[0]} crops")
    if frame.device.type == "cuda":
        from realtime.pipeline import warp_cuda

        return warp_cuda.paste_faces(frame, crops, matrices, mask, boxes, geometry)
    keep = [i for i, b in enumerate(boxes) if b is not None]
    if keep:
        host = crops.float().numpy()
        if len(keep) < len(boxes):  # only then select, in numpy: a torch list index costs ~5x as much for the copy
            host, matrices = host[keep], matrices[keep]
        warp_cpu.paste_faces(frame.numpy(), host, matrices, _host_mask(mask))
    return frame


def _host_mask(mask: torch.Tensor) -> np.ndarray:
    """The same read-only numpy view of `mask` on every call while the tensor is unchanged: `mask.numpy()` is a new
    writable array each time, which warp_cpu cannot cache its support and contiguous part for (a per-frame cost)."""
    hit = _host_masks.get(id(mask))
    if hit is not None and hit[0] is mask and hit[1] == mask._version:
        return hit[2]
    view = mask.numpy()
    view.flags.writeable = False
    if len(_host_masks) >= 16:  # masks live as long as their context: a few at a time
        _host_masks.clear()
    _host_masks[id(mask)] = (mask, mask._version, view)
    return view
