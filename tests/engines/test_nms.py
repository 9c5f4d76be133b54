"""Exact greedy NMS: checked against a plain-Python greedy reference that rounds exactly as float32 does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines import nms as nms_module
from engines.nms import Overlap, batched_nms, nms

f32 = np.float32


def reference_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    offset: float = 0.0,
    overlap: Overlap = "iou",
    groups: np.ndarray | None = None,
) -> list[int]:
    """The textbook loop: visit boxes by descending score (ties: lower index first); keep a box unless a kept box
    of its group overlaps it by more than the threshold. Arithmetic in float32 scalars, in torchvision's order."""
    off = f32(offset)
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))

    def area(i: int) -> np.float32:
        x0, y0, x1, y1 = boxes[i]
        return (x1 - x0 + off) * (y1 - y0 + off) if offset else (x1 - x0) * (y1 - y0)

    def suppresses(k: int, i: int) -> bool:
        if groups is not None and groups[k] != groups[i]:
            return False
        w = min(boxes[k][2], boxes[i][2]) - max(boxes[k][0], boxes[i][0])
        h = min(boxes[k][3], boxes[i][3]) - max(boxes[k][1], boxes[i][1])
        if offset:
            w, h = w + off, h + off
        inter = max(f32(0), w) * max(f32(0), h)
        denom = (area(k) + area(i)) - inter if overlap == "iou" else min(area(k), area(i))
        return bool(inter / denom > f32(threshold))

    keep: list[int] = []
    for i in order:
        if not any(suppresses(k, i) for k in keep):
            keep.append(i)
    return keep


def random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Boxes crowded enough to overlap a lot: some on an integer grid (exact ties in overlap), some continuous;
    scores with many exact ties."""
    n = int(rng.integers(0, 60))
    if rng.random() < 0.5:
        xy = rng.integers(0, 12, (n, 2)).astype(f32)
        wh = rng.integers(1, 8, (n, 2)).astype(f32)
    else:
        xy = rng.uniform(0, 40, (n, 2)).astype(f32)
        wh = rng.uniform(0.5, 25, (n, 2)).astype(f32)
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(f32)
    levels = int(rng.integers(1, 6)) if rng.random() < 0.5 else 1000
    scores = (rng.integers(0, levels, n) / levels).astype(f32)
    return boxes, scores


def as_list(t: torch.Tensor) -> list[int]:
    assert t.dtype == torch.long
    return t.tolist()


@pytest.mark.parametrize("packed", [False, True], ids=["blocks", "packed"])
@pytest.mark.parametrize(("offset", "overlap"), [(0.0, "iou"), (1.0, "iou"), (1.0, "min"), (0.0, "min")])
def test_matches_reference_on_random_boxes(offset: float, overlap: Overlap, packed: bool) -> None:
    rng = np.random.default_rng(int(offset) * 10 + (overlap == "min"))
    for seed in range(60):
        boxes, scores = random_case(rng)
        threshold = float(rng.choice([0.0, 0.3, 0.5, 0.7, 0.9]))
        got = nms_module._nms(
            torch.from_numpy(boxes), torch.from_numpy(scores), None, threshold, offset, overlap, packed
        )
        assert as_list(got) == reference_nms(boxes, scores, threshold, offset, overlap), f"case {seed}"


@pytest.mark.parametrize("packed", [False, True], ids=["blocks", "packed"])
def test_many_small_blocks_give_the_same_result(monkeypatch: pytest.MonkeyPatch, packed: bool) -> None:
    """Rows are processed in blocks; with tiny blocks every block boundary (and byte boundary) is crossed."""
    monkeypatch.setattr(nms_module, "_BLOCK_ELEMENTS", 64)
    rng = np.random.default_rng(7)
    for _ in range(10):
        boxes, scores = random_case(rng)
        got = nms_module._nms(torch.from_numpy(boxes), torch.from_numpy(scores), None, 0.4, 0.0, "iou", packed)
        assert as_list(got) == reference_nms(boxes, scores, 0.4)


def test_empty_input_gives_an_empty_long_tensor() -> None:
    for keep in (
        nms(torch.zeros((0, 4)), torch.zeros((0,)), 0.5),
        nms(torch.zeros((0, 4)), torch.zeros((0,)), 0.5, offset=1.0, overlap="min"),
        batched_nms(torch.zeros((0, 4)), torch.zeros((0,)), torch.zeros((0,), dtype=torch.long), 0.5),
    ):
        assert keep.shape == (0,)
        assert keep.dtype == torch.long


def test_single_box_is_kept() -> None:
    assert as_list(nms(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([0.1]), 0.5)) == [0]


def test_identical_boxes_keep_only_the_best() -> None:
    boxes = torch.tensor([[5.0, 5.0, 15.0, 25.0]]).repeat(6, 1)
    assert as_list(nms(boxes, torch.tensor([0.2, 0.9, 0.5, 0.9, 0.1, 0.3]), 0.5)) == [1]  # tie: lower index
    assert as_list(nms(boxes, torch.full((6,), 0.5), 0.99)) == [0]
    assert as_list(nms(boxes, torch.full((6,), 0.5), 0.99, offset=1.0, overlap="min")) == [0]


def test_overlap_exactly_at_the_threshold_does_not_suppress() -> None:
    boxes = torch.tensor([[0.0, 0.0, 4.0, 1.0], [0.0, 0.0, 2.0, 1.0]])  # IoU exactly 0.5
    scores = torch.tensor([0.9, 0.8])
    assert as_list(nms(boxes, scores, 0.5)) == [0, 1]
    assert as_list(nms(boxes, scores, 0.49)) == [0]
    # with +1 sides: areas 10 and 6, intersection 6 -> IoU 0.6, and 1.0 over the smaller area
    assert as_list(nms(boxes, scores, 0.6, offset=1.0)) == [0, 1]
    assert as_list(nms(boxes, scores, 0.59, offset=1.0)) == [0]
    assert as_list(nms(boxes, scores, 0.99, offset=1.0, overlap="min")) == [0]


def test_offset_changes_touching_boxes() -> None:
    """Boxes sharing one edge do not intersect with offset 0, but do with the +1 convention."""
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [9.0, 0.0, 18.0, 9.0]])
    scores = torch.tensor([0.9, 0.8])
    assert as_list(nms(boxes, scores, 0.0)) == [0, 1]
    assert as_list(nms(boxes, scores, 0.0, offset=1.0)) == [0]


def test_integer_boxes_and_order_follow_scores() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [100, 100, 110, 110], [1, 1, 11, 11]])
    assert as_list(nms(boxes, torch.tensor([0.1, 0.9, 0.5]), 0.5)) == [1, 2]


def test_batched_groups_never_suppress_each_other() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(4, 1)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert as_list(batched_nms(boxes, scores, torch.tensor([0, 1, 2, 3]), 0.1)) == [0, 1, 2, 3]
    assert as_list(batched_nms(boxes, scores, torch.tensor([0, 1, 0, 1]), 0.1)) == [0, 1]


@pytest.mark.parametrize("packed", [False, True], ids=["blocks", "packed"])
def test_batched_matches_per_group_reference(packed: bool) -> None:
    rng = np.random.default_rng(3)
    for seed in range(40):
        boxes, scores = random_case(rng)
        groups = rng.integers(0, 3, len(scores))
        cases: tuple[tuple[float, Overlap], ...] = ((0.0, "iou"), (1.0, "min"))
        for offset, overlap in cases:
            got = nms_module._nms(
                torch.from_numpy(boxes),
                torch.from_numpy(scores),
                torch.from_numpy(groups),
                0.5,
                offset,
                overlap,
                packed,
            )
            want = reference_nms(boxes, scores, 0.5, offset, overlap, groups)
            assert as_list(got) == want, f"case {seed}"
            # and the same as running each group alone
            alone = set()
            for g in np.unique(groups):
                idx = np.flatnonzero(groups == g)
                alone |= {int(idx[k]) for k in reference_nms(boxes[idx], scores[idx], 0.5, offset, overlap)}
            assert set(want) == alone


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="expected boxes"):
        nms(torch.zeros((3, 5)), torch.zeros((3,)), 0.5)
    with pytest.raises(ValueError, match="expected boxes"):
        nms(torch.zeros((3, 4)), torch.zeros((2,)), 0.5)
    with pytest.raises(ValueError, match="overlap"):
        nms(torch.zeros((3, 4)), torch.zeros((3,)), 0.5, overlap="max")
    with pytest.raises(ValueError, match="groups"):
        batched_nms(torch.zeros((3, 4)), torch.zeros((3,)), torch.zeros((2,)), 0.5)


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    rng = np.random.default_rng(11)
    for _ in range(20):
        boxes, scores = random_case(rng)
        groups = rng.integers(0, 3, len(scores))
        b, s, g = torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(groups)
        cases: tuple[tuple[float, Overlap], ...] = ((0.0, "iou"), (1.0, "min"))
        for offset, overlap in cases:
            cpu = nms(b, s, 0.5, offset=offset, overlap=overlap)
            cuda = nms(b.cuda(), s.cuda(), 0.5, offset=offset, overlap=overlap)
            assert cuda.device.type == "cuda"
            assert cuda.cpu().tolist() == cpu.tolist()
        assert batched_nms(b.cuda(), s.cuda(), g.cuda(), 0.5).cpu().tolist() == batched_nms(b, s, g, 0.5).tolist()
    n = 5000  # several row blocks on the device
    xy = torch.rand(n, 2) * 500
    boxes_big = torch.cat([xy, xy + torch.rand(n, 2) * 40 + 5], 1)
    scores_big = torch.rand(n)
    assert nms(boxes_big.cuda(), scores_big.cuda(), 0.5).cpu().tolist() == nms(boxes_big, scores_big, 0.5).tolist()
