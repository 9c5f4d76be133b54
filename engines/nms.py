"""Exact greedy non-maximum suppression in torch, on the input's device.

Design notes: docs/design-notes.md, section engines/nms.py.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

Overlap = Literal["iou", "min"]

# Pairs evaluated per block: bounds the temporaries to a few tens of MB for any N.
_BLOCK_ELEMENTS = 1 << 22


def nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    *,
    offset: float = 0.0,
    overlap: Overlap = "iou",
) -> torch.Tensor:
    """Indices (int64, on the input's device) of the boxes greedy NMS keeps, in descending score order.

    boxes: (N, 4) x0, y0, x1, y1; scores: (N,).
    """
    return _nms(boxes, scores, None, iou_threshold, offset, overlap)


def batched_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    groups: torch.Tensor,
    iou_threshold: float,
    *,
    offset: float = 0.0,
    overlap: Overlap = "iou",
) -> torch.Tensor:
    """NMS within each group (class, image, pyramid scale); boxes of different groups never suppress each other.

    Same result as torchvision's coordinate-offset trick (shift each group's boxes far apart, run one NMS), but
    done by masking the pair relation with `groups[i] == groups[j]`: shifting coordinates by large offsets would
    round them in float32 and could flip overlaps that sit on the threshold. Kept indices in descending score order.
    """
    if groups.shape != scores.shape:
        raise ValueError(f"groups {tuple(groups.shape)} and scores {tuple(scores.shape)} differ in shape")
    return _nms(boxes, scores, groups, iou_threshold, offset, overlap)


def _nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    groups: torch.Tensor | None,
    threshold: float,
    offset: float,
    overlap: Overlap,
    packed: bool | None = None,
) -> torch.Tensor:
    """`packed`: the one-transfer bit-matrix pass (default off CPU) or the block pass that skips suppressed rows
    (default on CPU, where there is nothing to transfer); both keep the same boxes."""
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"expected boxes (N, 4) and scores (N,), got {tuple(boxes.shape)} and {tuple(scores.shape)}")
    if overlap not in ("iou", "min"):
        raise ValueError(f"overlap must be 'iou' or 'min', got {overlap!r}")
    device = boxes.device
    n = boxes.shape[0]
    if n == 0:
        return torch.empty((0,), dtype=torch.long, device=device)
    order = torch.argsort(scores, descending=True, stable=True)
    b = boxes[order]
    if not b.is_floating_point():
        b = b.float()
    pairs = _Pairs(b, groups[order] if groups is not None else None, float(threshold), float(offset), overlap)
    if packed is None:
        packed = device.type != "cpu"
    keep = pairs.greedy_packed() if packed else pairs.greedy_blocks()
    return order[keep]


class _Pairs:
    """The "box i would suppress box j" relation between boxes sorted by score, computed a block of rows at a time."""

    def __init__(
        self, b: torch.Tensor, g: torch.Tensor | None, threshold: float, offset: float, overlap: Overlap
    ) -> None:
        self.n = b.shape[0]
        # contiguous coordinate vectors: broadcasting strided columns takes a slow path
        self.x0, self.y0, self.x1, self.y1 = b.t().contiguous().unbind(0)
        w, h = self.x1 - self.x0, self.y1 - self.y0
        # The same operations in the same order as torchvision's kernel (and the Caffe-era numpy code for offset
        # 1), so overlaps round identically and boxes that sit exactly on the threshold fall the same way.
        self.area = (w + offset) * (h + offset) if offset else w * h
        self.g = g
        self.threshold, self.offset, self.overlap = threshold, offset, overlap
        self.block_rows = max(8, _BLOCK_ELEMENTS // self.n)

    def hits(self, rows: torch.Tensor | slice, c0: int) -> torch.Tensor:
        """(R, N - c0) bool: whether each of `rows` would suppress each box from c0 on."""

        def pair(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return t[rows, None], t[None, c0:]

        (ax0, bx0), (ay0, by0), (ax1, bx1), (ay1, by1) = map(pair, (self.x0, self.y0, self.x1, self.y1))
        w = torch.minimum(ax1, bx1).sub_(torch.maximum(ax0, bx0))
        h = torch.minimum(ay1, by1).sub_(torch.maximum(ay0, by0))
        if self.offset:
            w.add_(self.offset)
            h.add_(self.offset)
        inter = w.clamp_(min=0).mul_(h.clamp_(min=0))
        aa, ab = pair(self.area)
        denom = (aa + ab).sub_(inter) if self.overlap == "iou" else torch.minimum(aa, ab)
        hit = inter.div_(denom) > self.threshold
        if self.g is not None:
            ga, gb = pair(self.g)
            hit &= ga == gb
        return hit

    def greedy_blocks(self) -> torch.Tensor:
        """CPU tensors: blocks of rows in score order, computing rows only for boxes not already suppressed."""
        n = self.n
        removed = np.zeros(n, dtype=bool)
        keep: list[int] = []
        for r0 in range(0, n, self.block_rows):
            r1 = min(n, r0 + self.block_rows)
            alive = np.flatnonzero(~removed[r0:r1]) + r0
            if alive.size == 0:
                continue
            hit = self.hits(torch.from_numpy(alive), r0).numpy()
            for k, i in enumerate(alive.tolist()):
                if removed[i]:
                    continue
                keep.append(i)
                removed[i + 1 :] |= hit[k, i + 1 - r0 :]
        return torch.tensor(keep, dtype=torch.long)

    def greedy_packed(self) -> torch.Tensor:
        """Accelerators: every row on the device, packed to bits, one copy to the host, the greedy pass there.

        Each row keeps only its later columns (masked on the device), so a row without a bit cannot suppress
        anything and the host visits only rows that have one; a box is kept when no kept earlier box hit it.
        """
        n = self.n
        device = self.x0.device
        nbytes = (n + 7) // 8
        # np.unpackbits' big-endian bit order; made on the device (a tensor from a list would be a blocking copy)
        shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=device)
        packed = torch.zeros((n, nbytes), dtype=torch.uint8, device=device)
        for r0 in range(0, n, self.block_rows):
            r1 = min(n, r0 + self.block_rows)
            c0 = (r0 // 8) * 8  # only later boxes matter: start at the byte holding column r0
            hit = self.hits(slice(r0, r1), c0)
            later = torch.arange(c0, n, device=device)[None, :] > torch.arange(r0, r1, device=device)[:, None]
            hit = torch.nn.functional.pad((hit & later).to(torch.uint8), (0, nbytes * 8 - n))
            packed[r0:r1, c0 // 8 :] = (hit.view(r1 - r0, -1, 8) << shifts).sum(2, dtype=torch.uint8)
        rows = packed.cpu().numpy()
        removed = np.zeros(nbytes * 8, dtype=bool)
        for i in np.flatnonzero(rows.any(axis=1)).tolist():  # ascending: every earlier suppressor seen first
            if removed[i]:
                continue
            start = i >> 3
            removed[start * 8 :] |= np.unpackbits(rows[i, start:]).view(bool)
        keep = np.flatnonzero(~removed[:n])
        return torch.from_numpy(keep.astype(np.int64)).to(device, non_blocking=True)
