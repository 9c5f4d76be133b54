"""The frame pipeline on real faces: identity round trip, a real (random-weight) swap, fail-closed, scheduling."""

from __future__ import annotations

import importlib.util
from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch

from engines.align import estimate_norm
from engines.arcface import ArcFace
from engines.detect import Detections, image_tensor
from engines.errors import ConfigError
from engines.facedancer import FaceDancer, FaceDancerConfig
from engines.identity import source_face
from engines.mtcnn import MTCNN
from realtime.pipeline import warp_cpu
from realtime.pipeline.context import DeviceContext
from realtime.pipeline.crops import pixelate
from realtime.pipeline.face_choice import FaceChoice, choose_faces
from realtime.pipeline.frame import (
    ArcFaceEmbedder,
    FaceDancerSwap,
    FramePipeline,
    IdentitySwap,
    PipelineConfig,
)
from realtime.pipeline.masks import build_mask
from realtime.pipeline.video import Frame
from tests import faces


def rgb24(image: np.ndarray) -> Frame:
    return Frame(image, "rgb24")


def yuv420p(planes: np.ndarray) -> Frame:
    return Frame(planes, "yuv420p")


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN()


def _alphas(placed: list[faces.PlacedFace], w: int, h: int) -> list[np.ndarray]:
    """Each ground-truth face's blend mask in frame coordinates."""
    lm = torch.tensor(np.stack([p.landmarks for p in placed]), dtype=torch.float64)
    mask = build_mask(256)
    return [
        cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        for m in estimate_norm(lm, 256).numpy()
    ]


def test_identity_engine_round_trip(
    detector: MTCNN, multi_face_frame: tuple[np.ndarray, list[faces.PlacedFace]]
) -> None:
    """Detect → track → align → identity → paste reproduces the frame within 2 grey levels inside every mask."""
    frame, placed = multi_face_frame
    h, w = frame.shape[:2]
    result = FramePipeline(detector, IdentitySwap(), PipelineConfig(detect_every=1)).process(rgb24(frame), 0.0)
    assert result.detected
    assert result.faces >= 3
    assert not result.fail_closed
    for face, alpha in zip(placed, _alphas(placed, w, h), strict=True):
        if not face.inside:
            continue
        inside = alpha > 0.5
        mae = np.abs(result.frame.data[inside].astype(np.float32) - frame[inside].astype(np.float32)).mean()
        assert mae < 2.0
    assert set(result.stages_ms) >= {"detect", "track", "align", "swap", "paste"}


def test_random_facedancer_changes_faces_and_nothing_else(detector: MTCNN, astronaut: np.ndarray) -> None:
    torch.manual_seed(0)
    model = FaceDancer(FaceDancerConfig(widths=(4, 8, 8, 16, 16, 16, 16), mapping_width=16)).eval()
    engine = FaceDancerSwap(model, torch.randn(512))
    result = FramePipeline(detector, engine).process(rgb24(astronaut), 0.0)
    assert result.faces == 1
    (alpha,) = _alphas([faces.PlacedFace(faces.ASTRONAUT_BOX, faces.ASTRONAUT_LANDMARKS, 1.0, 1.0)], 512, 512)
    changed = np.abs(result.frame.data.astype(np.int16) - astronaut.astype(np.int16)).max(axis=2)
    assert changed[alpha > 0.9].mean() > 10  # the face is replaced
    assert changed[alpha == 0].max() == 0  # nothing outside the mask moves


class FlakyEngine:
    """Paints every face white, but fails on chosen frames (raises, or returns NaN)."""

    def __init__(self, raise_on: set[int], nan_on: set[int]) -> None:
        self.calls = 0
        self.raise_on, self.nan_on = raise_on, nan_on

    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        i = self.calls
        self.calls += 1
        if i in self.raise_on:
            raise RuntimeError("injected failure")
        if i in self.nan_on:
            return torch.full_like(crops, float("nan"))
        return torch.ones_like(crops)


def test_fail_closed_never_shows_the_real_face(detector: MTCNN) -> None:
    frame, placed = faces.compose_faces(640, 480)
    alphas = _alphas(placed, 640, 480)
    engine = FlakyEngine(raise_on={1, 3}, nan_on={4})
    pipe = FramePipeline(detector, engine, PipelineConfig(detect_every=2))
    flags = []
    for k in range(6):
        result = pipe.process(rgb24(frame), k / 30)
        flags.append(result.fail_closed)
        for face, alpha in zip(placed, alphas, strict=True):
            if face.inside:
                inside = alpha > 0.9
                # every frame shows the swapped (white) face: the last good swap stands in for a failed one
                assert result.frame.data[inside].mean() > 240, (k, face.box)
    assert flags == [False, True, False, True, True, False]
    assert pipe.fail_closed_events == 3


def test_a_first_failure_pixelates_the_face(detector: MTCNN, astronaut: np.ndarray) -> None:
    """No earlier swap to repeat: the face region is replaced by its own pixelated crop, pasted with the mask."""
    pipe = FramePipeline(detector, FlakyEngine(raise_on={0}, nan_on=set()))
    result = pipe.process(rgb24(astronaut), 0.0)
    assert result.fail_closed
    assert pipe.fail_closed_events == 1
    (track,) = pipe.tracker.tracks
    m = estimate_norm(torch.tensor(track.landmarks[None], dtype=torch.float64), 256).numpy()
    crops = torch.from_numpy(warp_cpu.align_faces(astronaut, m, 256))
    expected = warp_cpu.paste_faces(astronaut.copy(), pixelate(crops).numpy(), m, build_mask(256))
    assert np.abs(result.frame.data.astype(np.int16) - expected.astype(np.int16)).max() <= 1
    (alpha,) = _alphas([faces.PlacedFace(faces.ASTRONAUT_BOX, faces.ASTRONAUT_LANDMARKS, 1.0, 1.0)], 512, 512)
    inside = alpha > 0.99
    # the real face is gone: eyes, nose and mouth differ by far more than any codec or blending error
    assert np.abs(result.frame.data[inside].astype(np.float32) - astronaut[inside].astype(np.float32)).mean() > 15


def test_pixelate_keeps_colour_and_removes_detail() -> None:
    crop = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (2, 3, 256, 256)).astype(np.float32))
    p = pixelate(crop)
    assert p.shape == crop.shape
    assert abs(float(p.mean() - crop.mean())) < 0.01
    assert len(torch.unique(p[0, 0])) <= 64
    # each 32x32 cell is the cell's mean, as cv2.INTER_AREA computes it
    cell = crop[1, 2, 64:96, 32:64].numpy()
    assert np.allclose(p[1, 2, 64:96, 32:64].numpy(), cell.mean(), atol=1e-6)


def test_swap_off_is_a_passthrough(detector: MTCNN, astronaut: np.ndarray) -> None:
    result = FramePipeline(detector, IdentitySwap(), PipelineConfig(swap=False)).process(rgb24(astronaut), 0.0)
    assert np.array_equal(result.frame.data, astronaut)
    assert not result.detected


def test_detection_runs_every_n_frames_and_tracking_carries_between(detector: MTCNN, astronaut: np.ndarray) -> None:
    calls = []

    class Counting:
        device = detector.device

        def __call__(self, image: torch.Tensor):  # type: ignore[no-untyped-def]
            calls.append(1)
            return detector(image)

    pipe = FramePipeline(Counting(), IdentitySwap(), PipelineConfig(detect_every=5))
    results = [pipe.process(rgb24(astronaut), k / 30) for k in range(10)]
    assert len(calls) == 2
    assert [r.detected for r in results] == [True, False, False, False, False, True, False, False, False, False]
    assert all(r.faces == 1 for r in results)


def test_only_the_face_that_failed_stands_in(detector: MTCNN) -> None:
    """A non-finite result for one face hides that face alone; the others keep their swap."""
    frame, _ = faces.compose_faces(640, 480)

    class OneBad:
        def __call__(self, crops: torch.Tensor) -> torch.Tensor:
            out = torch.ones_like(crops)
            out[0, :, 100, 100] = float("nan")
            return out

    pipe = FramePipeline(detector, OneBad(), PipelineConfig(detect_every=1))
    result = pipe.process(rgb24(frame), 0.0)
    assert result.fail_closed
    assert pipe.fail_closed_events == 1
    chosen = choose_faces(np.stack([tr.box for tr in pipe.tracker.tracks]), pipe.config.choice)
    tracks = [pipe.tracker.tracks[i] for i in chosen]
    lm = torch.tensor(np.stack([tr.landmarks for tr in tracks]), dtype=torch.float64)
    for k, m in enumerate(estimate_norm(lm, 256).numpy()):
        alpha = cv2.warpAffine(build_mask(256), m, (640, 480), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        region = result.frame.data[alpha > 0.99]
        if len(region) == 0:
            continue
        white = region.min() > 250
        assert white == (k != 0), f"face {k}: {'swapped' if white else 'hidden'}"


def test_reference_mode_swaps_only_the_reference_person(detector: MTCNN, astronaut: np.ndarray) -> None:
    torch.manual_seed(0)
    arcface = ArcFace().eval()
    embedder = ArcFaceEmbedder(arcface)
    with torch.inference_mode():
        me = source_face(astronaut, detector, arcface).z_id.numpy()
    someone_else = np.random.default_rng(1).standard_normal(512).astype(np.float32)
    white = FlakyEngine(raise_on=set(), nan_on=set())
    for reference, expect in [(me, 1), (someone_else, 0)]:
        config = PipelineConfig(choice=FaceChoice(mode="reference", reference=reference, threshold=0.8))
        result = FramePipeline(detector, white, config, embedder=embedder).process(rgb24(astronaut), 0.0)
        assert result.faces == expect
        assert np.array_equal(result.frame.data, astronaut) == (expect == 0)


def test_reference_mode_without_arcface_is_a_config_error(detector: MTCNN) -> None:
    config = PipelineConfig(choice=FaceChoice(mode="reference", reference=np.ones(512, np.float32)))
    with pytest.raises(ConfigError, match="ArcFace"):
        FramePipeline(detector, IdentitySwap(), config)


def test_colour_transfer_gives_the_swap_the_target_lighting(detector: MTCNN, astronaut: np.ndarray) -> None:
    (alpha,) = _alphas([faces.PlacedFace(faces.ASTRONAUT_BOX, faces.ASTRONAUT_LANDMARKS, 1.0, 1.0)], 512, 512)
    inside = alpha > 0.9

    class Darker:  # a swap whose face comes out much darker than the target's
        def __call__(self, crops: torch.Tensor) -> torch.Tensor:
            return crops * 0.5 - 0.5

    plain = FramePipeline(detector, Darker()).process(rgb24(astronaut), 0.0).frame.data
    matched_pipe = FramePipeline(detector, Darker(), PipelineConfig(colour_transfer=True))
    matched = matched_pipe.process(rgb24(astronaut), 0.0).frame.data
    target = astronaut[inside].astype(np.float32).mean()
    assert abs(matched[inside].astype(np.float32).mean() - target) < 0.25 * abs(plain[inside].mean() - target)
    # with the identity engine the transfer has nothing to correct
    same = FramePipeline(detector, IdentitySwap(), PipelineConfig(colour_transfer=True)).process(rgb24(astronaut), 0.0)
    assert np.abs(same.frame.data[inside].astype(np.float32) - astronaut[inside]).mean() < 2.0
    assert "colour" in same.stages_ms


def test_a_new_resolution_starts_tracking_afresh(detector: MTCNN, astronaut: np.ndarray) -> None:
    pipe = FramePipeline(detector, IdentitySwap(), PipelineConfig(detect_every=30))
    assert pipe.process(rgb24(astronaut), 0.0).detected
    assert not pipe.process(rgb24(astronaut), 1 / 30).detected
    small = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    result = pipe.process(rgb24(small), 2 / 30)
    assert result.detected  # old positions mean nothing at the new size
    assert result.frame.data.shape == small.shape
    assert pipe.context.reallocations == 2


def test_profiler_sees_every_stage(detector: MTCNN, astronaut: np.ndarray) -> None:
    pipe = FramePipeline(detector, IdentitySwap(), PipelineConfig(detect_every=2, colour_transfer=True))
    for k in range(4):
        pipe.process(rgb24(astronaut), k / 30)
    snap = pipe.profiler.snapshot()
    assert snap["frames"] == 4
    stages = {"upload", "detect", "track", "entry", "align", "swap", "colour", "paste", "download"}
    assert set(snap["stages"]) == stages
    assert snap["stages"]["detect"]["count"] == 2
    assert snap["stages"]["swap"]["count"] == 4
    assert snap["counters"]["detections"] == 2
    assert snap["end_to_end"]["p50"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("cupy") is None, reason="CuPy is not installed (the gpu extra)")
def test_cuda_pipeline_matches_the_cpu_pipeline(multi_face_frame: tuple[np.ndarray, list[faces.PlacedFace]]) -> None:
    """The same frames through the CUDA and CPU pipelines (identity engine, the same detections fed to both):
    within the warp parity tolerance (max 4 grey levels, mean 0.2), and nothing outside the faces' boxes changes."""
    frame, _ = multi_face_frame
    cpu_detector = MTCNN()
    found = cpu_detector(image_tensor(frame, "cpu"))

    class Fixed:  # both pipelines get the CPU detector's faces, so only the warps differ
        def __init__(self, device: str) -> None:
            self.device = torch.device(device)

        def __call__(self, image: torch.Tensor) -> Detections:
            return found.to(self.device)

    outs = []
    for device in ("cpu", "cuda"):
        pipe = FramePipeline(
            Fixed(device), IdentitySwap(), PipelineConfig(detect_every=1), context=DeviceContext(device)
        )
        outs.append([pipe.process(rgb24(frame), k / 30).frame.data for k in range(3)])
        assert pipe.fail_closed_events == 0
    for cpu_out, gpu_out in zip(*outs, strict=True):
        d = np.abs(cpu_out.astype(np.int16) - gpu_out.astype(np.int16))
        assert d.max() <= 4
        assert d.mean() <= 0.2


def _yuv(rgb: np.ndarray) -> np.ndarray:
    import av

    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray()


def test_yuv420p_frames_round_trip_and_only_face_boxes_change(detector: MTCNN) -> None:
    """Live video arrives as yuv420p: converted on the device, and only the faces' boxes are converted back."""
    frame, placed = faces.compose_faces(640, 480)
    planes = _yuv(frame)
    pipe = FramePipeline(detector, IdentitySwap(), PipelineConfig(detect_every=1))
    result = pipe.process(yuv420p(planes), 0.0)
    assert result.faces >= 3
    assert result.frame.data.shape == planes.shape
    assert result.frame.data.dtype == np.uint8
    assert {"to_rgb", "to_yuv"} <= set(result.stages_ms)
    # outside every face's box the planes are bit-identical
    lm = torch.tensor(np.stack([tr.landmarks for tr in pipe.tracker.tracks]), dtype=torch.float64)
    touched = np.zeros((480, 640), bool)
    for m in estimate_norm(lm, 256).numpy():
        box = warp_cpu.face_box(m, 256, 640, 480)
        if box is not None:
            touched[max(0, box[1] - 2) : box[3] + 2, max(0, box[0] - 2) : box[2] + 2] = True
    assert np.array_equal(result.frame.data[:480][~touched], planes[:480][~touched])
    # and inside the faces the picture is the same within the identity round trip's tolerance
    import av

    out_rgb = av.VideoFrame.from_ndarray(result.frame.data, format="yuv420p").to_ndarray(format="rgb24")
    in_rgb = av.VideoFrame.from_ndarray(planes, format="yuv420p").to_ndarray(format="rgb24")
    for face, alpha in zip(placed, _alphas(placed, 640, 480), strict=True):
        if face.inside:
            inside = alpha > 0.5
            assert np.abs(out_rgb[inside].astype(np.float32) - in_rgb[inside]).mean() < 2.5


def _frame_alphas(pipe: FramePipeline, w: int, h: int) -> np.ndarray:
    """The union (max) of the blend masks the pipeline pasted with, from its tracks, in frame coordinates."""
    lm = torch.tensor(np.stack([tr.landmarks for tr in pipe.tracker.tracks]), dtype=torch.float64)
    mask = build_mask(256)
    warped = [
        cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        for m in estimate_norm(lm, 256).numpy()
    ]
    return np.max(warped, axis=0)


def test_yuv420p_keeps_every_sample_the_paste_left_alone(detector: MTCNN) -> None:
    """Inside a face's box, samples the blend did not touch come back bit for bit: here luma outside the video
    range and saturated chroma, which a YUV → RGB → YUV round trip would clip and filter (a visible rectangle)."""
    frame, _ = faces.compose_faces(640, 480)
    planes = _yuv(frame)
    probe = FramePipeline(detector, IdentitySwap(), PipelineConfig(detect_every=1))
    probe.process(yuv420p(planes), 0.0)
    untouched = _frame_alphas(probe, 640, 480) == 0
    boxes = np.zeros((480, 640), bool)
    for tr in probe.tracker.tracks:
        x0, y0, x1, y1 = tr.box.astype(int)
        boxes[max(0, y0 - 60) : y1 + 60, max(0, x0 - 60) : x1 + 60] = True  # around each face, inside its paste box
    odd = untouched & boxes
    rng = np.random.default_rng(0)
    planes[:480][odd] = np.where(rng.random(int(odd.sum())) < 0.5, 4, 252).astype(np.uint8)
    chroma = planes[480:].reshape(2, 240, 320)  # the U and V planes, as views
    chroma[:, ::7, ::5] = 250  # saturated samples sprinkled everywhere

    pipe = FramePipeline(detector, FlakyEngine(set(), set()), PipelineConfig(detect_every=1))
    result = pipe.process(yuv420p(planes), 0.0)
    assert result.faces >= 3
    alpha = _frame_alphas(pipe, 640, 480)
    still = alpha == 0
    assert np.array_equal(result.frame.data[:480][still], planes[:480][still])  # luma the paste left alone
    # a chroma sample keeps its value when no pixel of its (1, 3, 3, 1) x (1, 1) support changed
    support = torch.from_numpy(~still)[None, None].float()
    support = torch.nn.functional.max_pool2d(support, kernel_size=(4, 2), stride=2, padding=(1, 0))[0, 0] > 0
    keep = ~support.numpy()
    out_uv = result.frame.data[480:].reshape(2, 240, 320)
    in_uv = planes[480:].reshape(2, 240, 320)
    assert np.array_equal(out_uv[:, keep], in_uv[:, keep])
    assert result.frame.data[:480][alpha > 0.99].min() > 230  # and the faces were swapped (white)


def test_yuv420p_swap_changes_the_face(detector: MTCNN, astronaut: np.ndarray) -> None:
    result = FramePipeline(detector, FlakyEngine(set(), set())).process(yuv420p(_yuv(astronaut)), 0.0)
    assert result.faces == 1
    (alpha,) = _alphas([faces.PlacedFace(faces.ASTRONAUT_BOX, faces.ASTRONAUT_LANDMARKS, 1.0, 1.0)], 512, 512)
    luma = result.frame.data[:512]
    assert luma[alpha > 0.99].min() > 230  # white face (Y of white is 235)


def test_the_pipeline_takes_typed_frames_only(detector: MTCNN, astronaut: np.ndarray) -> None:
    with pytest.raises(TypeError, match="Frame"):
        FramePipeline(detector, IdentitySwap()).process(astronaut, 0.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("swap", [True, False])
@pytest.mark.parametrize("fmt", ["rgb24", "yuv420p"])
def test_the_output_frame_keeps_the_inputs_format_pts_and_time_base(
    detector: MTCNN, astronaut: np.ndarray, swap: bool, fmt: str
) -> None:
    data = astronaut if fmt == "rgb24" else _yuv(astronaut)
    frame = Frame(data, fmt, 123_456, Fraction(1, 90_000))  # type: ignore[arg-type]
    result = FramePipeline(detector, IdentitySwap(), PipelineConfig(swap=swap)).process(frame)
    out = result.frame
    assert (out.format, out.pts, out.time_base, out.data.shape) == (fmt, 123_456, Fraction(1, 90_000), data.shape)
    assert out.data is not data  # the caller's pixels are never written


def test_detection_at_half_resolution_finds_the_same_face(detector: MTCNN, astronaut: np.ndarray) -> None:
    """The detector sees the frame at half size; boxes and landmarks come back in full-frame pixels."""
    from realtime.pipeline.frame import detect_scaled

    full = detect_scaled(detector, torch.from_numpy(astronaut), 1.0)
    half = detect_scaled(detector, torch.from_numpy(astronaut), 0.5)
    assert len(full) == len(half) == 1
    # MTCNN's own jitter under a 1-2 px shift of the image is as large as these bounds
    assert np.abs(half.boxes.numpy() - full.boxes.numpy()).max() < 4.0
    assert np.abs(half.landmarks.numpy() - full.landmarks.numpy()).max() < 3.5
    assert np.abs(half.landmarks.numpy() - full.landmarks.numpy()).mean() < 2.0
    assert np.abs(half.landmarks[0].numpy() - faces.ASTRONAUT_LANDMARKS).max() < 3.5
    # through the pipeline: the tracked face is where the full-resolution detector puts it
    pipe = FramePipeline(detector, IdentitySwap(), PipelineConfig(detect_scale=0.5))
    result = pipe.process(rgb24(astronaut), 0.0)
    assert result.detected
    assert result.faces == 1
    (track,) = pipe.tracker.tracks
    assert np.abs(track.landmarks - faces.ASTRONAUT_LANDMARKS).max() < 3.5


@pytest.mark.parametrize(("size", "scale"), [((640, 480), 0.5), ((641, 481), 0.3), ((100, 60), 0.25)])
def test_detection_scale_maps_pixel_centres_back(size: tuple[int, int], scale: float) -> None:
    """A point found at small-image pixel (x, y) is at ((x + 0.5) * W / w - 0.5, ...) in the frame; the small
    image is the frame area-averaged."""
    from realtime.pipeline.frame import detect_scaled

    w, h = size
    frame = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    seen = []

    class Fixed:
        device = torch.device("cpu")

        def __call__(self, image: torch.Tensor) -> Detections:
            seen.append(image)
            lm = torch.tensor([[[0.0, 0.0], [10.0, 20.0], [-0.5, -0.5], [5.0, 5.0], [1.0, 2.0]]])
            return Detections(torch.tensor([[-0.5, -0.5, 10.0, 20.0]]), torch.tensor([0.9]), lm)

    found = detect_scaled(Fixed(), torch.from_numpy(frame), scale)
    (image,) = seen
    sw, sh = round(w * scale), round(h * scale)
    assert image.shape == (sh, sw, 3)
    assert image.dtype == torch.uint8
    rx, ry = w / sw, h / sh
    assert np.allclose(found.boxes.numpy(), [[-0.5, -0.5, 10.5 * rx - 0.5, 20.5 * ry - 0.5]], atol=1e-4)
    assert np.allclose(found.landmarks[0, 1].numpy(), [10.5 * rx - 0.5, 20.5 * ry - 0.5], atol=1e-4)
    assert np.allclose(found.landmarks[0, 2].numpy(), [-0.5, -0.5])  # the frame's outer edge stays the edge
    assert np.allclose(found.scores.numpy(), [0.9])
    if scale == 0.5:  # an exact factor: plain 2x2 averages, as OpenCV's INTER_AREA computes them
        ref = cv2.resize(frame, (sw, sh), interpolation=cv2.INTER_AREA)
        assert np.abs(image.numpy().astype(np.int16) - ref).max() <= 1


@pytest.mark.parametrize("scale", [0.2, 0.0, 1.5, -1.0, float("nan")])
def test_detection_scale_out_of_range_is_a_config_error(scale: float) -> None:
    with pytest.raises(ConfigError, match="detection scale"):
        PipelineConfig(detect_scale=scale)


def test_faces_are_counted_detected_tracked_and_swapped(detector: MTCNN) -> None:
    frame, _ = faces.compose_faces(1280, 720)
    pipeline = FramePipeline(detector, IdentitySwap(), PipelineConfig(detect_every=3, choice=FaceChoice("all", 2)))
    first = pipeline.process(rgb24(frame), 0.0)
    found = len(detector(torch.from_numpy(frame)))
    assert found >= 3
    assert (first.found, first.tracked, first.faces) == (found, found, 2)  # at most 2 swapped
    second = pipeline.process(rgb24(frame), 1 / 30)  # between detections: nothing found, all still tracked
    assert second.found is None
    assert (second.tracked, second.faces) == (found, 2)
    counters = pipeline.profiler.snapshot()["counters"]
    assert counters["faces_detected"] == found
    assert counters["faces_swapped"] == 4


@pytest.mark.parametrize("yuv", [False, True], ids=["rgb", "yuv420p"])
def test_draw_boxes_outlines_every_tracked_face(detector: MTCNN, yuv: bool) -> None:
    from realtime.pipeline import draw
    from realtime.pipeline.colour import rgb_to_yuv420p, yuv420p_to_rgb

    frame, _ = faces.compose_faces(640, 480)
    y, u, v = rgb_to_yuv420p(torch.from_numpy(frame))
    packed = torch.cat([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(720, 640).numpy()
    config = PipelineConfig(detect_every=1, choice=FaceChoice("largest", 1), draw_boxes=True)
    pipeline = FramePipeline(detector, IdentitySwap(), config)
    result = pipeline.process(yuv420p(packed), 0.0) if yuv else pipeline.process(rgb24(frame), 0.0)
    assert result.tracked >= 2
    assert result.faces == 1
    out = result.frame.data
    if yuv:
        planes = torch.from_numpy(out).reshape(-1).split([640 * 480, 320 * 240, 320 * 240])
        out = yuv420p_to_rgb(planes[0].view(480, 640), planes[1].view(240, 320), planes[2].view(240, 320)).numpy()
    tolerance = 12 if yuv else 0  # one round trip through yuv420p
    colours = []
    for track in pipeline.tracker.tracks:
        x0, y0, x1, _ = track.box
        top = max(0, round(y0) - round(y0) % 2)
        colours.append(out[top, round((x0 + x1) / 2)].astype(int))  # the middle of the box's top edge
    green = [np.abs(c - draw.SWAPPED_RGB).max() <= tolerance for c in colours]
    orange = [np.abs(c - draw.OTHER_RGB).max() <= tolerance for c in colours]
    assert sum(green) == 1, colours  # the one swapped face
    assert all(g or o for g, o in zip(green, orange, strict=True)), colours  # every other tracked face


def test_boxes_are_not_drawn_unless_asked(detector: MTCNN) -> None:
    frame, _ = faces.compose_faces(640, 480)
    out = FramePipeline(detector, IdentitySwap(), PipelineConfig(detect_every=1)).process(rgb24(frame), 0.0).frame.data
    from realtime.pipeline import draw

    assert not (np.abs(out.astype(int) - draw.SWAPPED_RGB).max(-1) == 0).any()
