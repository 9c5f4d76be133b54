"""The worker thread and its one-slot mailbox: drops instead of queues, never emits an unprocessed frame."""

from __future__ import annotations

import threading
import time
from fractions import Fraction

import numpy as np
import pytest
import torch

from engines.mtcnn import MTCNN
from realtime.pipeline.frame import FramePipeline, PipelineConfig
from realtime.pipeline.video import Frame
from realtime.pipeline.worker import Mailbox, PipelineWorker
from tests import faces
from tests.fakes import Painter, swapped_regions


def test_mailbox_keeps_only_the_newest() -> None:
    box: Mailbox[int] = Mailbox()
    assert box.put(1) is False
    assert box.put(2) is True  # 1 was never read: dropped
    assert box.get(0.1) == 2
    assert box.get(0.01) is None  # empty: times out


def test_mailbox_close_wakes_a_waiting_reader() -> None:
    box: Mailbox[int] = Mailbox()
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(box.get()))
    reader.start()
    time.sleep(0.05)
    box.close()
    reader.join(2)
    assert got == [None]
    with pytest.raises(RuntimeError, match="closed"):
        box.put(3)


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN()


def test_late_and_failed_swaps_never_show_the_real_face(detector: MTCNN) -> None:
    """A consumer polling at camera rate while swaps are late or fail sees only swapped frames, and repeats."""
    frame, placed = faces.compose_faces(640, 480)
    regions = swapped_regions(placed, 640, 480)
    engine = Painter(delay_s=0.25, slow_on=frozenset({2, 3}), fail_on=frozenset({1}))
    worker = PipelineWorker(FramePipeline(detector, engine, PipelineConfig(detect_every=3))).start()
    seen = []
    try:
        for k in range(24):
            worker.submit(Frame(frame, "rgb24", k), t=k / 30)
            time.sleep(1 / 30)
            out = worker.latest()
            if out is not None:
                seen.append(out)
        last = worker.wait(after=seen[-1].sequence if seen else 0, timeout=10)
        if last is not None:
            seen.append(last)
    finally:
        worker.stop()
    assert seen, "no frame was processed"
    for out in seen:
        for region in regions:
            assert out.frame.data[region].min() > 200, f"frame pts={out.frame.pts} shows an unswapped face"
    counters = worker.counters()
    assert counters["repeated_frames"] > 0  # the late swaps made the consumer repeat
    assert counters["dropped_frames"] > 0  # and frames were dropped, not queued
    assert "dropped_frames" not in worker.pipeline.counters()  # the worker's own counts, not the pipeline's
    assert worker.pipeline.fail_closed_events >= 1  # the failed call was hidden or repeated, and counted
    assert [o.frame.pts for o in seen] == sorted(o.frame.pts for o in seen)  # pts stay with their frames


def test_overload_drops_frames_instead_of_queueing(detector: MTCNN) -> None:
    """Every submitted frame is either processed or counted as dropped (at most one still in the slot)."""
    frame, _ = faces.compose_faces(320, 240)
    engine = Painter(delay_s=0.05, slow_on=frozenset(range(1000)))
    worker = PipelineWorker(FramePipeline(detector, engine, PipelineConfig(detect_every=10))).start()
    processed: list[int] = []
    worker.on_frame = lambda f: processed.append(f.frame.pts)
    for k in range(40):
        worker.submit(Frame(frame, "rgb24", k), t=k / 100)
        time.sleep(0.005)
    worker.wait(after=0, timeout=10)
    time.sleep(0.3)
    worker.stop()
    dropped = worker.counters()["dropped_frames"]
    assert dropped > 10
    assert len(processed) + dropped in (40, 39)
    assert processed == sorted(processed)


def test_a_pipeline_error_is_counted_and_the_worker_goes_on(detector: MTCNN, astronaut: np.ndarray) -> None:
    class Flaky:
        device = detector.device
        calls = 0

        def __call__(self, image: torch.Tensor):  # type: ignore[no-untyped-def]
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise RuntimeError("detector crashed")
            return detector(image)

    worker = PipelineWorker(FramePipeline(Flaky(), Painter(), PipelineConfig(detect_every=1))).start()
    try:
        worker.submit(Frame(astronaut, "rgb24", 0))
        time.sleep(0.5)
        assert worker.latest() is None  # the failed frame is not emitted, raw or otherwise
        worker.submit(Frame(astronaut, "rgb24", 1))
        out = worker.wait(after=0, timeout=10)
    finally:
        worker.stop()
    assert out is not None
    assert out.frame.pts == 1
    assert worker.errors == 1
    assert worker.counters() == {"dropped_frames": 0, "repeated_frames": 0, "pipeline_errors": 1}


def test_the_worker_takes_typed_frames_and_carries_their_time_base(detector: MTCNN, astronaut: np.ndarray) -> None:
    worker = PipelineWorker(FramePipeline(detector, Painter(), PipelineConfig(swap=False)))
    with pytest.raises(TypeError, match="Frame"):
        worker.submit(astronaut)  # type: ignore[arg-type]
    worker.start()
    try:
        worker.submit(Frame(astronaut, "rgb24", 3003, Fraction(1, 90_000)))
        out = worker.wait(after=0, timeout=10)
    finally:
        worker.stop()
    assert out is not None
    assert (out.frame.format, out.frame.pts, out.frame.time_base) == ("rgb24", 3003, Fraction(1, 90_000))


def test_a_consumer_reports_its_repeats_to_the_worker(detector: MTCNN) -> None:
    worker = PipelineWorker(FramePipeline(detector, Painter()))
    worker.count_repeat()
    worker.count_repeat()
    assert worker.counters()["repeated_frames"] == 2
    assert worker.pipeline.counters().get("repeated_frames") is None
