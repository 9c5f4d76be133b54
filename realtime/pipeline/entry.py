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
# a tracked face is looked at again when an edge of its predicted box has moved this share of its size from where a
# detection last saw it: a face that stopped moving (or zooming) is left behind by its prediction
DRIFT = 0.15
# ... or when its prediction says it is still (moved less than STILL of its size since it was seen) and yet this
# share of its box's cells changed since the previous frame: a still face that starts moving fast has no velocity
# to be predicted by (talking and blinking change a few cells; a shift by a quarter of it most)
MOVED = 0.4
STILL = 0.02


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
        self._previous: torch.Tensor | None = None  # the last frame's grid: a tracked face's own fast motion
        self._cell = 1

    def reset(self) -> None:
        self._grid = self._previous = None
        self._boxes = []

    def remember(self, frame: torch.Tensor, boxes: Sequence[np.ndarray]) -> None:
        """The frame a detection has just seen (H, W, 3) uint8, and the boxes of the faces tracked after it."""
        self._cell = max(1, min(frame.shape[0], frame.shape[1]) // CELLS_SHORT_SIDE)
        self._grid = self._previous = self._cells(frame)
        self._boxes = [np.asarray(b, dtype=np.float64) for b in boxes]

    def changed(
        self,
        frame: torch.Tensor,
        boxes: Sequence[np.ndarray],
        drawn_over: tuple[int, int, int, int] | None = None,
        seen: Sequence[np.ndarray] | None = None,
    ) -> tuple[int, int, int, int] | None:
        """Where to look for faces again (x0, y0, x1, y1), or None: around the cells that changed outside the faces
        (`boxes`: where they are predicted now) since `remember`, grown by `GROW` of the short side; and around each
        tracked face whose prediction drifted `DRIFT` of its size from where it was last seen (`seen`, one box per
        `boxes`), or that is predicted still while `MOVED` of its box's cells changed since the previous frame. The
        whole frame when nothing was remembered or its size differs (a detection must look everywhere). Cells that
        touch `drawn_over` (pixels the sender drew, e.g. a measuring stamp: no camera pixels) are not watched."""
        height, width = frame.shape[0], frame.shape[1]
        if self._grid is None:
            return (0, 0, width, height)
        grid = self._cells(frame)
        if grid.shape != self._grid.shape:
            return (0, 0, width, height)
        previous, self._previous = self._previous, grid
        # one read back to the host per tracked frame, both grids' changes: 7 KB at 480p (on CUDA a sync, far
        # cheaper than a detection)
        moved, now = (torch.stack([grid - self._grid, grid - previous]).abs().amax(1) > self.threshold).cpu().numpy()
        faces = [np.asarray(b, dtype=np.float64) for b in boxes]
        looks = [b for b in self._faces_moved(faces, seen, now) if b is not None]
        if moved.any():
            for box in [*self._boxes, *faces]:
                x0, y0, x1, y1 = self._cell_span(box, moved.shape, self.margin)
                moved[y0:y1, x0:x1] = False
            if drawn_over is not None:  # a cell partly drawn over changes with the drawing: one cell's edge lost
                c, (x0, y0, x1, y1) = self._cell, drawn_over
                moved[y0 // c : math.ceil(y1 / c), x0 // c : math.ceil(x1 / c)] = False
            rows, cols = np.nonzero(moved)
            if len(rows):
                c = self._cell
                looks.append(np.array([cols.min() * c, rows.min() * c, (cols.max() + 1) * c, (rows.max() + 1) * c]))
        if not looks:
            return None
        grow = round(GROW * min(width, height))
        x0, y0 = min(b[0] for b in looks) - grow, min(b[1] for b in looks) - grow
        x1, y1 = max(b[2] for b in looks) + grow, max(b[3] for b in looks) + grow
        return (max(0, math.floor(x0)), max(0, math.floor(y0)), min(width, math.ceil(x1)), min(height, math.ceil(y1)))

    def _faces_moved(
        self, faces: list[np.ndarray], seen: Sequence[np.ndarray] | None, now: np.ndarray
    ) -> list[np.ndarray | None]:
        """Per tracked face, the box to look at again (where it was seen and where it is predicted) or None."""
        looks: list[np.ndarray | None] = []
        for k, box in enumerate(faces):
            last = np.asarray(seen[k], dtype=np.float64) if seen is not None else box
            size = math.sqrt(max(1.0, (last[2] - last[0]) * (last[3] - last[1])))
            drift = float(np.abs(box - last).max()) / size  # an edge's move: a shift, or a scale that carried on
            x0, y0, x1, y1 = self._cell_span(box, now.shape, 0.0)
            inside = now[y0:y1, x0:x1]
            fast = drift < STILL and inside.size > 0 and float(inside.mean()) >= MOVED
            union = np.concatenate([np.minimum(box[:2], last[:2]), np.maximum(box[2:], last[2:])])
            looks.append(union if drift >= DRIFT or fast else None)
        return looks

    def _cells(self, frame: torch.Tensor) -> torch.Tensor:
        planes = frame.permute(2, 0, 1).unsqueeze(0).float()  # (1, 3, H, W)
        return F.avg_pool2d(planes, self._cell, ceil_mode=True)[0]

    def _cell_span(self, box: np.ndarray, shape: tuple[int, ...], margin: float) -> tuple[int, int, int, int]:
        """The cells a face box grown by `margin` (and down by `BELOW` when grown) touches, as slice bounds (x0, y0,
        x1, y1)."""
        w, h = box[2] - box[0], box[3] - box[1]
        x0, x1 = box[0] - margin * w, box[2] + margin * w
        y0, y1 = box[1] - margin * h, box[3] + (max(margin, BELOW) if margin > 0 else 0.0) * h
        c = self._cell
        gh, gw = shape
        return (
            int(np.clip(math.floor(x0 / c), 0, gw)),
            int(np.clip(math.floor(y0 / c), 0, gh)),
            int(np.clip(math.ceil(x1 / c), 0, gw)),
            int(np.clip(math.ceil(y1 / c), 0, gh)),
        )
