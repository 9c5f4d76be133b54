"""Whether a face may have come into the picture since the last detection: change outside the tracked faces.

The pipeline detects on the frames this says so, between its scheduled detections, so that a face entering is never
shown before a detection has seen it. Design notes: docs/design-notes.md, section realtime/pipeline/entry.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

CELLS_SHORT_SIDE = 30  # cells along the frame's short side: 16 px at 480p; a face 10 % of the height spans 3x3
THRESHOLD = 10.0  # a cell changed when its mean moved by more than this in any channel (0-255): noise moves < 2
MARGIN = 0.6  # each tracked face box grown by this share of its size to the sides and up: its head, hair, motion
BELOW = 1.5  # ... and down by this share of its height: the neck and shoulders move with the face
# the changed cells' region grown by this share of the short side on every side (120 px at 480p): a face only partly
# in the changed cells (half inside a tracked face's margins already) is whole in the region
GROW = 0.25


class EntryCheck:
    """Compares each frame's coarse grid of cell means with the one of the last detection, outside the tracked faces.

    `remember` at a detection, `changed` on a frame between two: the region around the cells outside every face box
    (the remembered ones and the ones now, each grown by `margin`, and down to the shoulders) whose mean moved by more
    than `threshold`.
    """

    def __init__(self, threshold: float = THRESHOLD, margin: float = MARGIN) -> None:
        if not (math.isfinite(threshold) and threshold > 0) or not (math.isfinite(margin) and margin >= 0):
            raise ValueError(f"threshold must be > 0 and margin >= 0, got {threshold} and {margin}")
        self.threshold = float(threshold)
        self.margin = float(margin)
        self._grid: torch.Tensor | None = None  # (3, gh, gw) float32 on the frame's device
        self._boxes: list[np.ndarray] = []
        self._cell = 1

    def reset(self) -> None:
        self._grid = None
        self._boxes = []

    def remember(self, frame: torch.Tensor, boxes: Sequence[np.ndarray]) -> None:
        """The frame a detection has just seen (H, W, 3) uint8, and the boxes of the faces tracked after it."""
        self._cell = max(1, min(frame.shape[0], frame.shape[1]) // CELLS_SHORT_SIDE)
        self._grid = self._cells(frame)
        self._boxes = [np.asarray(b, dtype=np.float64) for b in boxes]

    def changed(
        self,
        frame: torch.Tensor,
        boxes: Sequence[np.ndarray],
        drawn_over: tuple[int, int, int, int] | None = None,
    ) -> tuple[int, int, int, int] | None:
        """Where something changed outside the faces (`boxes`: where they are now) since `remember`: the pixel
        region (x0, y0, x1, y1) around every changed cell, grown by `GROW` of the short side; None when nothing did.
        The whole frame when nothing was remembered or its size differs (a detection must look everywhere). Cells
        that touch `drawn_over` (pixels the sender drew, e.g. a measuring stamp: no camera pixels) are not watched."""
        height, width = frame.shape[0], frame.shape[1]
        if self._grid is None:
            return (0, 0, width, height)
        grid = self._cells(frame)
        if grid.shape != self._grid.shape:
            return (0, 0, width, height)
        # the one read back to the host per tracked frame: 3.6 KB at 480p (on CUDA a sync, far cheaper than a detection)
        moved = ((grid - self._grid).abs().amax(0) > self.threshold).cpu().numpy()
        if not moved.any():
            return None
        for box in [*self._boxes, *(np.asarray(b, dtype=np.float64) for b in boxes)]:
            x0, y0, x1, y1 = self._cell_span(box, moved.shape)
            moved[y0:y1, x0:x1] = False
        if drawn_over is not None:  # a cell partly drawn over changes with the drawing: one cell's edge of camera lost
            c, (x0, y0, x1, y1) = self._cell, drawn_over
            moved[y0 // c : math.ceil(y1 / c), x0 // c : math.ceil(x1 / c)] = False
        rows, cols = np.nonzero(moved)
        if not len(rows):
            return None
        c, grow = self._cell, round(GROW * min(width, height))
        return (
            max(0, int(cols.min()) * c - grow),
            max(0, int(rows.min()) * c - grow),
            min(width, (int(cols.max()) + 1) * c + grow),
            min(height, (int(rows.max()) + 1) * c + grow),
        )

    def _cells(self, frame: torch.Tensor) -> torch.Tensor:
        planes = frame.permute(2, 0, 1).unsqueeze(0).float()  # (1, 3, H, W)
        return F.avg_pool2d(planes, self._cell, ceil_mode=True)[0]

    def _cell_span(self, box: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """The cells a face box grown by `margin` touches, as slice bounds (x0, y0, x1, y1)."""
        w, h = box[2] - box[0], box[3] - box[1]
        x0, x1 = box[0] - self.margin * w, box[2] + self.margin * w
        y0, y1 = box[1] - self.margin * h, box[3] + max(self.margin, BELOW) * h
        c = self._cell
        gh, gw = shape
        return (
            int(np.clip(math.floor(x0 / c), 0, gw)),
            int(np.clip(math.floor(y0 / c), 0, gh)),
            int(np.clip(math.ceil(x1 / c), 0, gw)),
            int(np.clip(math.ceil(y1 / c), 0, gh)),
        )
