"""Faces that come in between two detections: the entry check finds the change, an entry detection hides the face
on that very frame; with the check off the same scenes leak (so these tests can fail)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.mtcnn import MTCNN
from realtime.bench.faces import Placement, compose_faces
from realtime.pipeline.anonymize import FaceAnonymizer
from realtime.pipeline.colour import rgb_to_yuv420p
from realtime.pipeline.entry import EntryCheck
from realtime.pipeline.frame import FramePipeline, IdentitySwap, PipelineConfig
from realtime.pipeline.tracking import FaceTracker
from realtime.pipeline.video import Frame

W, H = 640, 480
STILL = Placement(0.3, 0.5, 0.35)  # the face already tracked


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN()


def _frame(rng: np.random.Generator) -> torch.Tensor:
    return torch.from_numpy(rng.integers(60, 200, (H, W, 3), dtype=np.uint8))


# --- the check alone ------------------------------------------------------------------------------------------


def test_nothing_remembered_means_look_everywhere() -> None:
    frame = _frame(np.random.default_rng(0))
    assert EntryCheck().changed(frame, []) == (0, 0, W, H)


def test_the_same_picture_with_sensor_noise_is_no_change() -> None:
    rng = np.random.default_rng(1)
    base = rng.integers(60, 200, (H, W, 3)).astype(np.float32)
    check = EntryCheck()
    check.remember(torch.from_numpy(base.astype(np.uint8)), [])
    for _ in range(5):  # per-pixel noise of sigma 6 (a webcam in dim light): cell means move by < 1
        noisy = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
        assert check.changed(torch.from_numpy(noisy), []) is None


def test_a_change_outside_the_faces_is_where_it_happened() -> None:
    frame = _frame(np.random.default_rng(2))
    check = EntryCheck()
    check.remember(frame, [np.array([100, 100, 200, 220])])
    later = frame.clone()
    later[300:360, 500:560] = 255  # something new at the right
    x0, y0, x1, y1 = check.changed(later, [np.array([100, 100, 200, 220])])
    assert x0 <= 500
    assert y0 <= 300
    assert x1 >= 560
    assert y1 >= 360
    assert (x1 - x0) * (y1 - y0) < W * H / 3  # the region around it (grown by a quarter of 480 px), not the frame


@pytest.mark.parametrize("where", ["now", "then"])
def test_a_change_on_a_tracked_face_is_its_own_motion(where: str) -> None:
    frame = _frame(np.random.default_rng(3))
    then, now = np.array([100, 100, 200, 220]), np.array([300, 100, 400, 220])
    check = EntryCheck()
    check.remember(frame, [then])
    later = frame.clone()
    box = now if where == "now" else then  # the face moved from `then` to `now`: both places change
    later[box[1] - 10 : box[3] + 10, box[0] - 10 : box[2] + 10] = 0  # inside the box grown by the margin
    check.changed(frame, [now], seen=[now])  # the frame before: the face's own box unchanged frame to frame
    later[now[1] : now[3], now[0] : now[2]] = frame[now[1] : now[3], now[0] : now[2]]
    assert check.changed(later, [now], seen=[now]) is None


def test_a_prediction_that_drifted_from_where_the_face_was_seen_is_looked_at_again() -> None:
    """A face that stopped: its prediction carries on at the old speed and leaves it uncovered."""
    frame = _frame(np.random.default_rng(6))
    seen = np.array([100, 100, 200, 220])
    predicted = seen + np.array([25, 0, 25, 0])
    check = EntryCheck()
    check.remember(frame, [seen])
    assert check.changed(frame, [seen + np.array([10, 0, 10, 0])], seen=[seen]) is None  # 10 px of a 110 px face: fine
    x0, y0, x1, y1 = check.changed(frame, [predicted], seen=[seen])  # 25 px: look again, both places
    assert x0 <= 100
    assert y0 <= 100
    assert x1 >= 225
    assert y1 >= 220


def test_a_prediction_that_kept_shrinking_a_face_is_looked_at_again() -> None:
    """A face that stopped zooming out: its box's centre stays, but the prediction keeps shrinking it off the face."""
    frame = _frame(np.random.default_rng(7))
    seen = np.array([100, 100, 200, 220])
    check = EntryCheck()
    check.remember(frame, [seen])
    assert check.changed(frame, [seen + np.array([5, 5, -5, -5])], seen=[seen]) is None  # 5 px an edge: fine
    x0, y0, x1, y1 = check.changed(frame, [seen + np.array([20, 20, -20, -20])], seen=[seen])
    assert x0 <= 100
    assert y0 <= 100
    assert x1 >= 200
    assert y1 >= 220


def test_a_still_face_that_moves_fast_is_looked_at_again() -> None:
    """No velocity yet to predict it by: its box's cells change from one frame to the next."""
    still, (face,) = compose_faces(W, H, (Placement(0.4, 0.5, 0.3),), seed=1)
    box = np.asarray(face.box, dtype=np.float64)
    check = EntryCheck()
    check.remember(torch.from_numpy(still), [box])
    talking = still.copy()
    mouth = face.landmarks[3:].mean(0).astype(int)
    talking[mouth[1] - 6 : mouth[1] + 6, mouth[0] - 12 : mouth[0] + 12] //= 2  # the mouth opens: a cell or two
    assert check.changed(torch.from_numpy(talking), [box], seen=[box]) is None
    moved, _ = compose_faces(W, H, (Placement(0.4 + 30 / W, 0.5, 0.3),), seed=1)  # 30 px in one frame
    x0, y0, x1, y1 = check.changed(torch.from_numpy(moved), [box], seen=[box])
    assert x0 <= box[0]
    assert y0 <= box[1]
    assert x1 >= box[2]
    assert y1 >= box[3]


def test_a_new_frame_size_means_look_everywhere() -> None:
    check = EntryCheck()
    check.remember(_frame(np.random.default_rng(4)), [])
    assert check.changed(torch.zeros((240, 320, 3), dtype=torch.uint8), []) == (0, 0, 320, 240)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="threshold must be > 0"):
        EntryCheck(threshold=float("nan"))
    with pytest.raises(ValueError, match="margin >= 0"):
        EntryCheck(margin=-1)


def test_an_extra_detection_never_spends_a_tracks_misses() -> None:
    tracker = FaceTracker(max_misses=1)
    box = np.array([[100.0, 100.0, 200.0, 220.0]])
    tracker.update((box, np.ones(1), np.zeros((1, 5, 2))), 0.0)
    none = (np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))
    for k in range(5):  # extra detections that find nothing: the track stays, its misses untouched
        (track,) = tracker.update(none, 0.01 * (k + 1), count_misses=False)
        assert track.misses == 0
    assert len(tracker.update(none, 0.1)) == 1  # a scheduled one counts: 1 miss, still within max_misses
    assert tracker.update(none, 0.2) == []


# --- through the pipeline, on real faces -------------------------------------------------------------------------

ENTRIES = {  # a face coming in from each edge, (cx, cy) from outside to inside over the clip
    "left": ((-0.2, 0.45), (0.15, 0.45)),
    "right": ((1.2, 0.45), (0.75, 0.45)),
    "top": ((0.7, -0.25), (0.7, 0.3)),
    "bottom": ((0.7, 1.25), (0.7, 0.7)),
}
FRAMES = 24


def _scene(edge: str, k: int) -> tuple[np.ndarray, object]:
    (ax, ay), (bx, by) = ENTRIES[edge]
    f = k / (FRAMES - 1)
    image, placed = compose_faces(W, H, (STILL, Placement(ax + (bx - ax) * f, ay + (by - ay) * f, 0.3)), seed=k)
    return image, placed[1]


def _core(box: np.ndarray) -> tuple[slice, slice]:
    """The middle half of a face box (eyes, nose, mouth), clipped to the frame."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    xs = slice(max(0, int(x0 + w / 4)), min(W, int(x1 - w / 4)))
    ys = slice(max(0, int(y0 + h / 4)), min(H, int(y1 - h / 4)))
    return ys, xs


def _leaks(detector: MTCNN, edge: str, on: bool, yuv: bool = False) -> list[int]:
    """Frames where the entering face, at least 70 % inside, leaves with its core unchanged (its own pixels)."""
    pipe = FramePipeline(detector, FaceAnonymizer("fill"), PipelineConfig(detect_every=10, detect_on_change=on))
    leaked = []
    for k in range(FRAMES):
        image, face = _scene(edge, k)
        ys, xs = _core(face.box)
        counted = face.visible_fraction >= 0.7
        if yuv:  # compared on the luma plane
            planes = rgb_to_yuv420p(torch.from_numpy(image))
            packed = torch.cat([p.reshape(-1, W) for p in planes]).numpy()
            out = pipe.process(Frame(packed, "yuv420p"), k / 30).frame.data
            diff = np.abs(out[:H][ys, xs].astype(np.float32) - packed[:H][ys, xs]).mean() if counted else 0.0
        else:
            out = pipe.process(Frame(image, "rgb24"), k / 30).frame.data
            diff = np.abs(out[ys, xs].astype(np.float32) - image[ys, xs]).mean() if counted else 0.0
        if counted and diff < 20:  # filled black: ~100 away; unchanged: 0
            leaked.append(k)
    return leaked


@pytest.mark.parametrize("edge", list(ENTRIES))
def test_a_face_coming_in_from_any_edge_is_hidden_on_every_frame(detector: MTCNN, edge: str) -> None:
    assert _leaks(detector, edge, on=True) == []
    assert _leaks(detector, edge, on=False), "with the check off the scene leaks: it tests nothing"


def test_yuv420p_frames_are_checked_too(detector: MTCNN) -> None:
    assert _leaks(detector, "right", on=True, yuv=True) == []
    assert _leaks(detector, "right", on=False, yuv=True)


def test_a_moving_tracked_face_is_not_found_twice(detector: MTCNN) -> None:
    pipe = FramePipeline(detector, IdentitySwap(), PipelineConfig(detect_every=10))
    for k in range(12):  # one face moving right 8 px a frame: its hair and shoulders change outside its box
        image, _ = compose_faces(W, H, (Placement(0.3 + 0.0125 * k, 0.5, 0.35),), seed=k)
        result = pipe.process(Frame(image, "rgb24"), k / 30)
        assert result.tracked == 1, f"frame {k}: {result.tracked} tracks for one face"


def test_the_check_off_detects_only_on_schedule(detector: MTCNN) -> None:
    pipe = FramePipeline(detector, IdentitySwap(), PipelineConfig(detect_every=10, detect_on_change=False))
    for k in range(FRAMES):
        pipe.process(Frame(_scene("right", k)[0], "rgb24"), k / 30)
    counts = pipe.counters()
    assert counts["detections"] == 3
    assert "entry_detections" not in counts


def test_a_failed_entry_detection_fails_the_frame_not_the_face(detector: MTCNN) -> None:
    """A detector that raises on the entry detection: that frame is not output at all (the worker drops it, the
    consumer keeps the last processed one); the next frame's entry detection hides the face."""

    class FailsOnce:
        device = detector.device
        calls = 0

        def __call__(self, image: torch.Tensor):  # type: ignore[no-untyped-def]
            FailsOnce.calls += 1
            if FailsOnce.calls == 2:  # the first entry detection, after the scheduled one of frame 0
                raise RuntimeError("detector crashed")
            return detector(image)

    pipe = FramePipeline(FailsOnce(), FaceAnonymizer("fill"), PipelineConfig(detect_every=100))
    pipe.process(Frame(_scene("right", 0)[0], "rgb24"), 0.0)
    failed = None
    for k in range(1, FRAMES):
        image, face = _scene("right", k)
        try:
            out = pipe.process(Frame(image, "rgb24"), k / 30).frame.data
        except RuntimeError:
            failed = k
            continue
        ys, xs = _core(face.box)
        if face.visible_fraction >= 0.7:
            assert np.abs(out[ys, xs].astype(np.float32) - image[ys, xs]).mean() > 20, f"frame {k} leaked"
    assert failed is not None


def test_one_person_moving_is_one_track_and_mostly_no_entry_detection(detector: MTCNN) -> None:
    """The page's fake camera: one face drifting side to side. Its head, hair and shoulders move with it, inside
    the margins the check leaves to a tracked face: no second track, and most frames cost no detection at all."""
    from tests.web.y4m import moving_face_frames

    pipe = FramePipeline(detector, FaceAnonymizer("blur"), PipelineConfig())
    frames = list(moving_face_frames(W, H, 60))
    tracked = [pipe.process(Frame(f, "rgb24"), k / 30).tracked for k, f in enumerate(frames)]
    assert set(tracked) == {1}
    counts = pipe.counters()
    between = len(frames) - counts["detections"]
    assert counts.get("entry_detections", 0) < 0.6 * between, counts  # was every frame with 25 % margins


def test_a_drawn_over_region_is_not_watched() -> None:
    """The page's glass-to-glass stamp changes every frame: its pixels are the sender's, not the camera's."""
    frame = _frame(np.random.default_rng(5))
    check = EntryCheck()
    check.remember(frame, [])
    later = frame.clone()
    later[0:64, 0:112] = 255 - later[0:64, 0:112]  # the stamp's block at 640 wide, every cell changed
    assert check.changed(later, []) is not None
    assert check.changed(later, [], drawn_over=(0, 0, 112, 64)) is None
    later[200:260, 300:360] = 0  # and a change elsewhere is still seen
    assert check.changed(later, [], drawn_over=(0, 0, 112, 64)) is not None


def test_a_measuring_stamp_costs_no_entry_detection(detector: MTCNN) -> None:
    """The page stamps every frame it sends while the user measures; decoded frames carry where (`from_av`): the
    stamp alone must not make every frame run a detection (it did: the server's share of the latency doubled)."""
    import av

    from realtime.live import stamp
    from realtime.live.av_frames import from_av
    from tests.web.y4m import moving_face_frames

    counts = {}
    for case in ("no stamp", "stamp", "stamp, marked"):
        pipe = FramePipeline(detector, FaceAnonymizer("blur"), PipelineConfig())
        for k, rgb in enumerate(moving_face_frames(W, H, 30)):
            if case != "no stamp":
                stamp.stamp(rgb, k)
            frame = from_av(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p"))
            assert (frame.drawn_over is not None) == (case != "no stamp")
            pipe.process(frame if case != "stamp" else Frame(frame.data, frame.format), k / 30)
        counts[case] = pipe.counters().get("entry_detections", 0)
    # unmarked, the stamp looks like something coming in on most frames between detections (24 of 30 here);
    # marked, it costs what the moving face alone costs
    assert counts["stamp"] >= 18, counts
    assert counts["stamp, marked"] <= counts["no stamp"] + 1, counts
