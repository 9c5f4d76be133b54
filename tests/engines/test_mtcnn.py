"""MTCNN: the astronaut as facenet-pytorch sees it, composed multi-face frames, blank images, the two work layouts
(mosaic + summed-area table, level by level + per-box crops) agreeing exactly, and strict weight loading."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engines import mtcnn
from engines.detect import Detections, image_tensor
from engines.errors import CheckpointFormatError, ConfigError, ModelMissingError
from engines.mtcnn import MTCNN, PNet, load_state_strict, pyramid_scales
from tests.faces import ASTRONAUT_BOX, ASTRONAUT_LANDMARKS, PlacedFace


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN("cpu")


@pytest.fixture(scope="module")
def batched_detector() -> MTCNN:
    return MTCNN("cpu", batched=True)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def clipped(box: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.array([max(box[0], 0), max(box[1], 0), min(box[2], width), min(box[3], height)], dtype=np.float32)


def assert_empty(found: Detections, device: torch.device) -> None:
    assert len(found) == 0
    assert found.boxes.shape == (0, 4)
    assert found.scores.shape == (0,)
    assert found.landmarks.shape == (0, 5, 2)
    assert found.boxes.device == found.scores.device == found.landmarks.device == device


# --- the astronaut: what facenet-pytorch's MTCNN reports ---------------------------------------------------


@pytest.mark.parametrize("layout", ["looped", "batched"])
def test_astronaut_matches_facenet_pytorch(
    astronaut: np.ndarray, detector: MTCNN, batched_detector: MTCNN, layout: str
) -> None:
    det = batched_detector if layout == "batched" else detector
    found = det(image_tensor(astronaut, det.device))
    assert len(found) == 1
    assert found.boxes.dtype == found.scores.dtype == found.landmarks.dtype == torch.float32
    assert float(found.scores[0]) > 0.99
    np.testing.assert_allclose(found.boxes[0].numpy(), ASTRONAUT_BOX, atol=3.0)
    np.testing.assert_allclose(found.landmarks[0].numpy(), ASTRONAUT_LANDMARKS, atol=3.0)
    # in fact the same numbers to the rounding of the published ones
    np.testing.assert_allclose(found.boxes[0].numpy(), ASTRONAUT_BOX, atol=0.06)
    np.testing.assert_allclose(found.landmarks[0].numpy(), ASTRONAUT_LANDMARKS, atol=0.06)


def test_landmark_order_is_as_seen_in_the_image(astronaut: np.ndarray, detector: MTCNN) -> None:
    mirrored = np.ascontiguousarray(astronaut[:, ::-1])
    found = detector(image_tensor(mirrored, "cpu"))
    assert len(found) == 1
    lm = found.landmarks[0].numpy()
    assert lm[0, 0] < lm[1, 0]  # left eye left of the right one
    assert lm[3, 0] < lm[4, 0]  # same for the mouth corners
    assert lm[0, 1] < lm[2, 1] < lm[3, 1]  # eyes above nose above mouth
    expected = ASTRONAUT_LANDMARKS[[1, 0, 2, 4, 3]] * np.array([-1, 1], np.float32) + np.array([511, 0], np.float32)
    np.testing.assert_allclose(lm, expected, atol=3.0)


# --- nothing to find ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("colour", [(0, 0, 0), (255, 255, 255), (128, 128, 128), (200, 150, 120)])
def test_blank_image_has_no_face(detector: MTCNN, colour: tuple[int, int, int]) -> None:
    image = torch.tensor(colour, dtype=torch.uint8).expand(360, 480, 3).contiguous()
    assert_empty(detector(image), detector.device)


def test_noise_image_has_no_face(detector: MTCNN, batched_detector: MTCNN) -> None:
    noise = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    assert_empty(detector(noise), detector.device)
    assert_empty(batched_detector(noise), batched_detector.device)


def test_image_smaller_than_the_smallest_face(detector: MTCNN, astronaut: np.ndarray) -> None:
    assert_empty(detector(image_tensor(astronaut[:19, :40], "cpu")), detector.device)


def test_rejects_other_inputs(detector: MTCNN) -> None:
    with pytest.raises(ValueError, match="uint8"):
        detector(torch.zeros((64, 64, 3)))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        detector(torch.zeros((3, 64, 64), dtype=torch.uint8))


# --- composed frames with four faces ------------------------------------------------------------------------


def test_multi_face_frame(multi_face_frame: tuple[np.ndarray, list[PlacedFace]], detector: MTCNN) -> None:
    frame, faces = multi_face_frame
    height, width = frame.shape[:2]
    found = detector(image_tensor(frame, "cpu"))
    boxes, landmarks, scores = found.boxes.numpy(), found.landmarks.numpy(), found.scores.numpy()
    assert np.all(np.diff(scores) <= 0), "sorted by score"

    matched: set[int] = set()
    for face in faces:
        if not face.inside:
            continue
        ious = [box_iou(face.box, b) for b in boxes]
        assert max(ious, default=0.0) >= 0.5, f"face at {face.box.round()} not found; IoUs {np.round(ious, 2)}"
        j = int(np.argmax(ious))
        err = np.abs(landmarks[j] - face.landmarks).max()
        assert err <= 0.04 * face.height, f"landmarks off by {err:.1f} px on a {face.height:.0f} px face"
        assert j not in matched
        matched.add(j)

    # no false positives: anything else must be one of the faces that cross the border
    for j in set(range(len(found))) - matched:
        partial = [f for f in faces if not f.inside]
        assert any(box_iou(clipped(f.box, width, height), boxes[j]) >= 0.3 for f in partial), (
            f"false positive at {boxes[j].round()}"
        )


@pytest.mark.xfail(
    strict=True,
    reason="MTCNN misses a face ~60% inside the frame with one eye outside: RNet scores it ~0.6 < 0.7",
)
def test_face_across_the_border_is_found(compose_faces: Callable[..., tuple[np.ndarray, list[PlacedFace]]]) -> None:
    frame, faces = compose_faces(1280, 720)
    border = next(f for f in faces if not f.inside)
    found = MTCNN("cpu")(image_tensor(frame, "cpu"))
    visible = clipped(border.box, 1280, 720)
    assert any(box_iou(visible, b) >= 0.3 for b in found.boxes.numpy())


def test_padding_keeps_landmarks_of_faces_near_the_border(
    compose_faces: Callable[..., tuple[np.ndarray, list[PlacedFace]]], detector: MTCNN
) -> None:
    """At 640x480 the corner face's square crop crosses the left border. Clipping and stretching it, as
    facenet-pytorch does, skews its landmarks by ~7% of the face height; black padding keeps them within ~1%."""
    frame, faces = compose_faces(640, 480)
    corner = faces[2]
    assert corner.inside
    assert corner.box[0] < 20

    def landmark_error(det: MTCNN) -> float:
        found = det(image_tensor(frame, "cpu"))
        j = int(np.argmax([box_iou(corner.box, b) for b in found.boxes.numpy()]))
        return float(np.abs(found.landmarks[j].numpy() - corner.landmarks).max() / corner.height)

    assert landmark_error(detector) < 0.02
    assert landmark_error(MTCNN("cpu", pad_crops=False)) > 0.04


# --- the two layouts compute the same thing -----------------------------------------------------------------


@pytest.mark.parametrize("pad", [True, False])
def test_batched_and_looped_layouts_agree(
    compose_faces: Callable[..., tuple[np.ndarray, list[PlacedFace]]], pad: bool
) -> None:
    frame, _ = compose_faces(640, 480)
    image = image_tensor(frame, "cpu")
    a = MTCNN("cpu", batched=False, pad_crops=pad)(image)
    b = MTCNN("cpu", batched=True, pad_crops=pad)(image)
    assert len(a) == len(b) == 3
    torch.testing.assert_close(a.boxes, b.boxes, atol=1e-3, rtol=0)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.landmarks, b.landmarks, atol=1e-3, rtol=0)


@pytest.mark.parametrize(("height", "width"), [(97, 131), (120, 90), (64, 64)])
def test_mosaic_cells_equal_levels_run_alone(height: int, width: int) -> None:
    """Odd level sizes put a partial ceil-mode pooling window at the right or bottom edge: the pool bias must
    reproduce it exactly, and without the bias the test would see the difference."""
    torch.manual_seed(0)
    pnet = PNet().eval()
    for p in pnet.parameters():  # random weights with a strong spread: border effects cannot hide
        p.data.normal_(0, 0.5)
    img = torch.rand(1, 3, height, width) * 255
    scales = pyramid_scales(height, width, 20, 0.709)
    assert len(scales) >= 3
    layout = mtcnn._mosaic_layout(height, width, scales, torch.device("cpu"))
    assert any(lv.w % 2 == 1 for lv in layout.levels)
    assert any(lv.h % 2 == 1 for lv in layout.levels)
    canvas = torch.zeros(1, 3, layout.height, layout.width)
    for lv in layout.levels:
        canvas[:, :, lv.y : lv.y + lv.h, lv.x : lv.x + lv.w] = F.adaptive_avg_pool2d(img, (lv.h, lv.w))
    with torch.no_grad():
        prob, reg = pnet(mtcnn._normalise(canvas), layout.pool_bias)
        prob_unbiased, _ = pnet(mtcnn._normalise(canvas))
    unbiased_differs = False
    for lv in layout.levels:
        with torch.no_grad():
            p_alone, r_alone = pnet(mtcnn._normalise(F.adaptive_avg_pool2d(img, (lv.h, lv.w))))
        oy, ox = lv.y // 2, lv.x // 2
        region = (slice(oy, oy + lv.out_h), slice(ox, ox + lv.out_w))
        assert p_alone.shape[1:] == (lv.out_h, lv.out_w)
        torch.testing.assert_close(prob[0][region], p_alone[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(reg[0][(slice(None), *region)], r_alone[0], atol=1e-4, rtol=1e-5)
        unbiased_differs |= not torch.allclose(prob_unbiased[0][region], p_alone[0], atol=1e-4)
    assert unbiased_differs
    # the cell table points every valid cell at its level and position
    cells = layout.cells
    assert cells.valid is not None
    assert int(cells.valid.sum()) == sum(lv.out_h * lv.out_w for lv in layout.levels)


@pytest.mark.parametrize("pad", [True, False])
def test_crops_from_the_table_equal_per_box_area_resampling(pad: bool) -> None:
    rng = np.random.default_rng(1)
    h, w = 70, 90
    image = torch.from_numpy(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    img = image.permute(2, 0, 1)[None].contiguous().float()
    xy = rng.uniform(-30, 80, (40, 2))
    side = rng.uniform(1, 60, (40, 1))
    boxes = torch.from_numpy(np.concatenate([xy, xy + side], 1)).float()
    boxes[0] = torch.tensor([-50.0, -50.0, -10.0, -10.0])  # nothing inside the image
    det = MTCNN.__new__(MTCNN)  # only the crop helpers: no weights needed
    det.pad_crops = pad
    for size in (24, 48):
        looped, ok_a = det._crops(img, None, boxes, size)
        table, ok_b = det._crops(img, mtcnn._summed_area_table(image), boxes, size)
        assert torch.equal(ok_a, ok_b)
        assert not ok_a[0]
        assert ok_a[1:].any()
        assert torch.equal(looped[ok_a], table[ok_a])


def test_pyramid_scales() -> None:
    scales = pyramid_scales(512, 512, 20, 0.709)
    assert len(scales) == 10
    assert scales[0] == pytest.approx(0.6)
    assert all(b == pytest.approx(a * 0.709) for a, b in itertools.pairwise(scales))
    assert 512 * 0.6 * 0.709**9 >= 12 > 512 * 0.6 * 0.709**10
    assert pyramid_scales(11, 400, 12, 0.709) == []


# --- weights --------------------------------------------------------------------------------------------------


def shipped_state(stage: str) -> dict[str, torch.Tensor]:
    return torch.load(mtcnn.default_weights_path(stage), map_location="cpu", weights_only=True)


def test_shipped_weights_load_strictly() -> None:
    for stage, cls in mtcnn.NETWORKS.items():
        state = shipped_state(stage)
        assert set(state) == set(cls().state_dict())
        model = mtcnn.load_network(stage)
        assert not model.training
        for name, t in model.state_dict().items():
            assert torch.equal(t, state[name])


@pytest.mark.parametrize(
    ("stage", "edit", "message"),
    [
        ("pnet", lambda s: s.pop("conv4_2.bias"), "'conv4_2.bias' is missing"),
        ("rnet", lambda s: s.__setitem__("dense4.weight", torch.zeros(128, 575)), r"'dense4.weight' has shape"),
        ("onet", lambda s: s.__setitem__("prelu9.weight", torch.zeros(3)), "unexpected tensors 'prelu9.weight'"),
        ("onet", lambda s: s.__setitem__("dense6_3.bias", [0.0] * 10), r"'dense6_3.bias' has shape list"),
    ],
)
def test_strict_loading_names_the_bad_tensor(
    tmp_path: Path, stage: str, edit: Callable[[dict[str, object]], None], message: str
) -> None:
    state: dict[str, object] = dict(shipped_state(stage))
    edit(state)
    with pytest.raises(CheckpointFormatError, match=message):
        load_state_strict(mtcnn.NETWORKS[stage](), state, "test")
    if all(isinstance(v, torch.Tensor) for v in state.values()):
        path = tmp_path / f"{stage}.pt"
        torch.save(state, path)
        with pytest.raises(CheckpointFormatError, match=message):
            MTCNN("cpu", **{stage: path})


def test_not_a_state_dict(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointFormatError, match=r"bad\.pt"):
        MTCNN("cpu", pnet=bad)
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointFormatError, match="expected a state dict"):
        MTCNN("cpu", onet=tmp_path / "list.pt")


def test_missing_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelMissingError, match=r"nowhere\.pt"):
        MTCNN("cpu", rnet=tmp_path / "nowhere.pt")
    monkeypatch.setattr(mtcnn.store, "bundled_path", lambda entry: None)
    with pytest.raises(ModelMissingError, match="pip install --no-deps facenet-pytorch"):
        MTCNN("cpu")


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="min_face_size"):
        MTCNN("cpu", min_face_size=0)
    with pytest.raises(ConfigError, match="thresholds"):
        MTCNN("cpu", thresholds=(0.6, 0.7, 1.5))
    with pytest.raises(ConfigError, match="factor"):
        MTCNN("cpu", factor=1.0)


# --- GPU ------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_matches_cpu(
    astronaut: np.ndarray, compose_faces: Callable[..., tuple[np.ndarray, list[PlacedFace]]], detector: MTCNN
) -> None:
    """The batched layout on CUDA (mosaic PNet, summed-area-table crops, packed-bit NMS) finds the same faces as
    the looped layout on CPU. cuDNN may use TF32 and other algorithms, so boxes and landmarks are compared within
    2% of the face size rather than exactly."""
    cuda = MTCNN("cuda")
    assert cuda.batched
    assert cuda.device == torch.device("cuda", torch.cuda.current_device())
    frames = [astronaut, compose_faces(640, 480)[0], compose_faces(1280, 720)[0], compose_faces(1920, 1080)[0]]
    for frame in frames:
        want = detector(image_tensor(frame, "cpu"))
        got = cuda(image_tensor(frame, "cuda"))
        assert got.boxes.device == got.scores.device == got.landmarks.device == cuda.device
        assert len(got) == len(want) >= 1
        size = (want.boxes[:, 3] - want.boxes[:, 1])[:, None]
        assert ((got.boxes.cpu() - want.boxes).abs() <= 0.02 * size + 0.5).all()
        assert ((got.landmarks.cpu() - want.landmarks).abs() <= 0.02 * size[:, :, None] + 0.5).all()
        torch.testing.assert_close(got.scores.cpu(), want.scores, atol=1e-2, rtol=0)
    assert_empty(cuda(torch.full((480, 640, 3), 128, dtype=torch.uint8, device="cuda")), cuda.device)
    noise = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    assert_empty(cuda(noise.cuda()), cuda.device)


def test_threads_sharing_one_detector_get_the_same_answers(astronaut: np.ndarray) -> None:
    """Live sessions share the detector from their worker threads, at different frame sizes (more of them than
    the layout cache holds, so layouts are evicted while others are being used)."""
    import threading

    import cv2

    from engines.mtcnn import LAYOUT_CACHE

    detector = MTCNN("cpu")
    sizes = [(160 + 8 * k, 160 + 8 * k) for k in range(LAYOUT_CACHE + 4)]
    images = [torch.from_numpy(cv2.resize(astronaut, size)) for size in sizes]
    want = [MTCNN("cpu")(image) for image in images]
    errors: list[BaseException] = []
    got: dict[tuple[int, int], list[torch.Tensor]] = {}

    def work(worker: int) -> None:
        try:
            for k in range(len(images)):
                i = (k + worker * 5) % len(images)
                got[(worker, i)] = [detector(images[i]).boxes]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(detector._layouts) <= LAYOUT_CACHE
    for (_, i), [boxes] in got.items():
        torch.testing.assert_close(boxes, want[i].boxes, rtol=0, atol=1e-4)
