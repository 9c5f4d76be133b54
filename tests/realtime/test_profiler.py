"""The profiler: exact percentiles and fps under a fake clock, rolling windows, counters, JSON, threads, CUDA events.

The CUDA path is tested twice: with fake events on any machine (lazy resolution, bounded queue, event reuse, no
waiting), and with real events on a GPU (marked `gpu`, skipped with the reason where CUDA is absent).
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from typing import Any

import numpy as np
import pytest
import torch

from realtime.pipeline.profiler import MAX_PENDING, FrameRecord, Profiler
from tests.fakes import FakeClock


def _run_frame(prof: Profiler, clock: FakeClock, stages: dict[str, float], gap_ms: float = 0.0) -> None:
    """One frame whose stages take exactly the given times, then `gap_ms` more before it finishes."""
    record = prof.frame()
    for name, ms in stages.items():
        with record.stage(name):
            clock.advance_ms(ms)
    clock.advance_ms(gap_ms)
    record.finish()


# --- CPU path, fake clock ---------------------------------------------------------------------------------------


def test_exact_percentiles_and_mean() -> None:
    clock = FakeClock()
    prof = Profiler(window=1000, clock=clock)
    rng = np.random.default_rng(0)
    detect = [float(x) for x in rng.permutation(np.arange(1, 101))]  # 1..100 ms in a shuffled order
    for ms in detect:
        _run_frame(prof, clock, {"detect": ms, "swap": 2.0}, gap_ms=0.5)
    snap = prof.snapshot()
    assert snap["frames"] == 100
    d = snap["stages"]["detect"]
    # numpy's linear interpolation over 1..100: 1 + q/100 * 99
    assert d["p50"] == pytest.approx(50.5)
    assert d["p95"] == pytest.approx(95.05)
    assert d["p99"] == pytest.approx(99.01)
    assert d["mean"] == pytest.approx(50.5)
    assert d["count"] == 100
    assert snap["stages"]["swap"] == pytest.approx({"p50": 2.0, "p95": 2.0, "p99": 2.0, "mean": 2.0, "count": 100})
    e2e = snap["end_to_end"]  # detect + swap + gap
    assert e2e["p50"] == pytest.approx(53.0)
    assert e2e["p99"] == pytest.approx(101.51)
    assert e2e["count"] == 100
    assert snap["host_end_to_end"] == pytest.approx(e2e)  # on the CPU the host clock is the clock


def test_fps_from_finish_times() -> None:
    clock = FakeClock()
    prof = Profiler(window=10, clock=clock)
    assert prof.snapshot()["fps"] == 0.0
    _run_frame(prof, clock, {"a": 1.0})
    assert prof.snapshot()["fps"] == 0.0  # one frame: no interval yet
    for _ in range(4):
        clock.advance_ms(39.0)
        _run_frame(prof, clock, {"a": 1.0})  # a frame finishes every 40 ms
    assert prof.snapshot()["fps"] == pytest.approx(25.0)


def test_window_rolls_old_values_out() -> None:
    clock = FakeClock()
    prof = Profiler(window=3, clock=clock)
    for i, ms in enumerate([100.0, 200.0, 1.0, 2.0, 3.0]):
        clock.advance_ms(10.0 if i < 3 else 50.0)  # the first frames come fast, the last ones slowly
        _run_frame(prof, clock, {"a": ms})
    snap = prof.snapshot()
    assert snap["frames"] == 5  # all frames ever finished...
    a = snap["stages"]["a"]
    assert a["count"] == 3  # ...but only the last `window` in the statistics
    assert a["p50"] == pytest.approx(2.0)
    assert a["p99"] == pytest.approx(2.98)
    assert a["mean"] == pytest.approx(2.0)
    assert snap["end_to_end"]["count"] == 3
    # finish times of the last three frames are 50+2 and 50+3 ms apart: fps over the window only
    assert snap["fps"] == pytest.approx(2 / 0.105)


def test_same_stage_twice_adds_up_and_mark_adds_host_time() -> None:
    clock = FakeClock()
    prof = Profiler(clock=clock)
    record = prof.frame()
    with record.stage("track"):
        clock.advance_ms(1.0)
    with record.stage("track"):
        clock.advance_ms(2.0)
    record.mark("host_prep", 4.5)
    record.mark("host_prep", 0.5)
    record.finish()
    stages = prof.snapshot()["stages"]
    assert stages["track"]["p50"] == pytest.approx(3.0)
    assert stages["track"]["count"] == 1
    assert stages["host_prep"]["p50"] == pytest.approx(5.0)
    assert stages["host_prep"]["count"] == 1


def test_empty_stages_are_omitted_and_end_to_end_is_zero_until_a_frame() -> None:
    clock = FakeClock()
    prof = Profiler(clock=clock)
    snap = prof.snapshot()
    assert snap["stages"] == {}
    assert snap["end_to_end"] == {"p50": 0.0, "p95": 0.0, "p99": 0.0, "mean": 0.0, "count": 0}
    _run_frame(prof, clock, {"detect": 1.0})
    _run_frame(prof, clock, {"swap": 1.0})
    stages = prof.snapshot()["stages"]
    assert stages["detect"]["count"] == 1  # a stage counts only the frames that ran it
    assert stages["swap"]["count"] == 1


def test_stage_raising_still_counts() -> None:
    clock = FakeClock()
    prof = Profiler(clock=clock)
    record = prof.frame()

    def failing_stage() -> None:
        with record.stage("detect"):
            clock.advance_ms(7.0)
            raise KeyError("boom")

    with pytest.raises(KeyError):
        failing_stage()
    record.finish()
    assert prof.snapshot()["stages"]["detect"]["p50"] == pytest.approx(7.0)


def test_counters() -> None:
    prof = Profiler()
    assert prof.snapshot()["counters"] == {"fail_closed": 0}
    prof.count("dropped_frames")
    prof.count("dropped_frames")
    prof.count("fail_closed", 3)
    prof.count("detections", 0)
    prof.count("detections", 5)
    assert prof.snapshot()["counters"] == {"dropped_frames": 2, "fail_closed": 3, "detections": 5}
    with pytest.raises(ValueError, match="whole number"):
        prof.count("dropped_frames", -1)
    with pytest.raises(ValueError, match="whole number"):
        prof.count("dropped_frames", 1.5)  # type: ignore[arg-type]
    assert prof.snapshot()["counters"]["dropped_frames"] == 2


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_names_are_rejected(name: str) -> None:
    prof = Profiler()
    record = prof.frame()
    with pytest.raises(ValueError, match="non-empty"), record.stage(name):
        pass
    with pytest.raises(ValueError, match="non-empty"):
        record.mark(name, 1.0)
    with pytest.raises(ValueError, match="non-empty"):
        prof.count(name)
    record.finish()
    assert prof.snapshot()["stages"] == {}


@pytest.mark.parametrize("ms", [-1.0, math.nan, math.inf])
def test_mark_rejects_impossible_times(ms: float) -> None:
    record = Profiler().frame()
    with pytest.raises(ValueError, match="finite"):
        record.mark("host", ms)


def test_finished_record_cannot_be_used_again() -> None:
    prof = Profiler()
    record = prof.frame()
    record.finish()
    with pytest.raises(RuntimeError, match="finished"):
        record.finish()
    with pytest.raises(RuntimeError, match="finished"), record.stage("late"):
        pass
    assert prof.snapshot()["frames"] == 1


def test_window_must_hold_a_frame() -> None:
    with pytest.raises(ValueError, match="window"):
        Profiler(window=0)


def test_snapshot_is_json_and_to_json_round_trips() -> None:
    clock = FakeClock()
    prof = Profiler(window=50, clock=clock)
    for i in range(20):
        _run_frame(prof, clock, {"upload": 0.25, "detect": float(i), "swap": 3.0}, gap_ms=1.0)
    prof.count("fail_closed")
    snap = prof.snapshot()
    assert json.loads(json.dumps(snap)) == snap
    assert json.loads(prof.to_json()) == snap
    assert set(snap) >= {"device", "frames", "fps", "window", "stages", "end_to_end", "counters"}
    assert snap["device"] == "cpu"
    assert snap["window"] == 50
    assert isinstance(snap["frames"], int)
    assert isinstance(snap["fps"], float)
    assert set(snap["stages"]) == {"upload", "detect", "swap"}
    for stats in [*snap["stages"].values(), snap["end_to_end"]]:
        assert set(stats) == {"p50", "p95", "p99", "mean", "count"}
        assert all(type(stats[k]) is float for k in ("p50", "p95", "p99", "mean"))
        assert type(stats["count"]) is int


def test_reset_forgets_everything_including_frames_in_flight() -> None:
    clock = FakeClock()
    prof = Profiler(clock=clock)
    _run_frame(prof, clock, {"a": 1.0})
    prof.count("fail_closed", 2)
    in_flight = prof.frame()
    prof.reset()
    with in_flight.stage("a"):
        clock.advance_ms(5.0)
    in_flight.finish()  # started before the reset: not counted
    snap = prof.snapshot()
    assert snap["frames"] == 0
    assert snap["stages"] == {}
    assert snap["counters"] == {"fail_closed": 0}
    _run_frame(prof, clock, {"a": 1.0})
    assert prof.snapshot()["frames"] == 1


def test_real_clock_times_are_positive() -> None:
    prof = Profiler()
    record = prof.frame()
    with record.stage("sleep"):
        time.sleep(0.002)
    record.finish()
    snap = prof.snapshot()
    assert snap["stages"]["sleep"]["p50"] >= 2.0
    assert snap["end_to_end"]["p50"] >= snap["stages"]["sleep"]["p50"]


def test_one_thread_records_while_another_snapshots() -> None:
    window = 500
    prof = Profiler(window=window)
    errors: list[BaseException] = []
    stop = threading.Event()
    recorded = 0

    def worker() -> None:
        nonlocal recorded
        try:
            while not stop.is_set():
                record = prof.frame()
                with record.stage("a"):
                    pass
                record.mark("b", 0.1)
                record.finish()
                prof.count("dropped_frames")
                recorded += 1
        except BaseException as e:  # surfaced in the main thread
            errors.append(e)

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up
    thread = threading.Thread(target=worker)
    try:
        thread.start()
        busy_snapshots = 0
        last_frames = 0
        deadline = time.monotonic() + 30
        while busy_snapshots < 200 and time.monotonic() < deadline and not errors:
            snap = prof.snapshot()
            json.dumps(snap)
            n = snap["frames"]
            assert n >= last_frames
            last_frames = n
            expected = min(n, window)
            # a frame enters every window at once: a snapshot never sees half a frame
            assert snap["end_to_end"]["count"] == expected
            assert snap["host_end_to_end"]["count"] == expected
            if n:
                busy_snapshots += 1
                assert snap["stages"]["a"]["count"] == expected
                assert snap["stages"]["b"]["count"] == expected
            assert snap["counters"].get("dropped_frames", 0) in (n, n - 1)  # counted just after its frame finished
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(old_interval)
    assert not errors, errors
    assert busy_snapshots == 200
    snap = prof.snapshot()
    assert snap["frames"] == recorded
    assert snap["counters"]["dropped_frames"] == recorded
    assert snap["stages"]["a"]["count"] == min(recorded, window)


# --- CUDA path with fake events (any machine) -------------------------------------------------------------------


class FakeGpu:
    """A GPU timeline: events record the current device time and complete when `run()` passes them."""

    def __init__(self) -> None:
        self.now_ms = 0.0
        self.recorded = 0  # sequence number of the last recorded event
        self.completed = 0  # every event up to this number has completed
        self.events_made = 0
        self.stream = object()


class FakeEvent:
    def __init__(self, gpu: FakeGpu) -> None:
        self.gpu = gpu
        self.seq: int | None = None
        self.t: float | None = None

    def record(self, stream: Any) -> None:
        assert stream is self.gpu.stream, "events go on the caller's current stream"
        self.gpu.recorded += 1
        self.seq = self.gpu.recorded
        self.t = self.gpu.now_ms

    def query(self) -> bool:
        return self.seq is None or self.seq <= self.gpu.completed

    def elapsed_time(self, end: FakeEvent) -> float:
        if not (self.query() and end.query()):
            raise RuntimeError("Both events must be completed before calculating elapsed time.")
        assert self.t is not None
        assert end.t is not None
        return end.t - self.t

    def synchronize(self) -> None:
        raise AssertionError("the profiler must never wait for an event")


class FakeCudaProfiler(Profiler):
    def __init__(self, gpu: FakeGpu, **kwargs: Any) -> None:
        self.gpu = gpu
        super().__init__("cuda", **kwargs)

    def _make_event(self) -> FakeEvent:
        self.gpu.events_made += 1
        return FakeEvent(self.gpu)

    def _current_stream(self) -> Any:
        return self.gpu.stream


def _gpu_frame(prof: Profiler, gpu: FakeGpu, clock: FakeClock, stages: dict[str, float]) -> None:
    """One frame whose stages take the given device times; the host spends 1 ms per stage launching."""
    record = prof.frame()
    for name, ms in stages.items():
        with record.stage(name):
            gpu.now_ms += ms
            clock.advance_ms(1.0)
    record.finish()


def test_fake_cuda_frames_resolve_lazily_without_waiting() -> None:
    gpu, clock = FakeGpu(), FakeClock()
    prof = FakeCudaProfiler(gpu, clock=clock)
    _gpu_frame(prof, gpu, clock, {"detect": 4.0, "swap": 6.0})
    snap = prof.snapshot()  # the GPU has not got there yet: nothing to read, and nothing waits
    assert snap["device"] == "cuda"
    assert snap["frames"] == 1
    assert snap["pending"] == 1
    assert snap["stages"] == {}
    assert snap["end_to_end"]["count"] == 0
    assert snap["host_end_to_end"]["p50"] == pytest.approx(2.0)  # host time is known at once
    gpu.completed = gpu.recorded
    snap = prof.snapshot()
    assert snap["pending"] == 0
    assert snap["stages"]["detect"]["p50"] == pytest.approx(4.0)
    assert snap["stages"]["swap"]["p50"] == pytest.approx(6.0)
    assert snap["end_to_end"]["p50"] == pytest.approx(10.0)  # device time, not the host's 2 ms
    assert json.loads(prof.to_json()) == snap


def test_fake_cuda_later_finish_resolves_completed_frames_only() -> None:
    gpu, clock = FakeGpu(), FakeClock()
    prof = FakeCudaProfiler(gpu, clock=clock)
    _gpu_frame(prof, gpu, clock, {"swap": 1.0})
    gpu.completed = gpu.recorded  # frame 1 done on the GPU
    _gpu_frame(prof, gpu, clock, {"swap": 2.0})  # its finish() picks frame 1 up; frame 2 is in flight
    with prof._lock:
        assert len(prof._pending) == 1
        assert list(prof._stages["swap"]) == [1.0]
    gpu.completed = gpu.recorded - 1  # frame 2 done except its end event: not read yet
    assert prof.snapshot()["stages"]["swap"]["count"] == 1
    gpu.completed = gpu.recorded
    snap = prof.snapshot()
    assert snap["stages"]["swap"]["count"] == 2
    assert snap["stages"]["swap"]["mean"] == pytest.approx(1.5)


def test_fake_cuda_stage_events_on_another_stream_must_complete_too() -> None:
    gpu, clock = FakeGpu(), FakeClock()
    prof = FakeCudaProfiler(gpu, clock=clock)
    record = prof.frame()
    with record.stage("swap"):
        gpu.now_ms += 3.0
    record.finish()
    frame = prof._pending[0]
    frame.stages[0][2].seq = 10**9  # the stage's end event is still in flight on some other stream
    gpu.completed = gpu.recorded
    assert prof.snapshot()["pending"] == 1  # not read: elapsed_time would have raised
    frame.stages[0][2].seq = gpu.recorded
    assert prof.snapshot()["stages"]["swap"]["p50"] == pytest.approx(3.0)


def test_fake_cuda_marks_join_the_frame() -> None:
    gpu, clock = FakeGpu(), FakeClock()
    prof = FakeCudaProfiler(gpu, clock=clock)
    record = prof.frame()
    with record.stage("swap"):
        gpu.now_ms += 3.0
    record.mark("host_prep", 0.75)
    record.finish()
    assert "host_prep" not in prof.snapshot()["stages"]  # joins with its frame's GPU times
    gpu.completed = gpu.recorded
    stages = prof.snapshot()["stages"]
    assert stages["host_prep"]["p50"] == pytest.approx(0.75)
    assert stages["swap"]["p50"] == pytest.approx(3.0)


def test_fake_cuda_pending_queue_is_bounded() -> None:
    gpu, clock = FakeGpu(), FakeClock()
    prof = FakeCudaProfiler(gpu, clock=clock)
    extra = 5
    for i in range(MAX_PENDING + extra):
        _gpu_frame(prof, gpu, clock, {"swap": float(i)})  # the GPU never catches up
    snap = prof.snapshot()
    assert snap["pending"] == MAX_PENDING
    assert snap["frames"] == MAX_PENDING + extra
    assert snap["counters"]["profiler_overflow"] == extra
    gpu.completed = gpu.recorded
    snap = prof.snapshot()
    assert snap["pending"] == 0
    swap = snap["stages"]["swap"]
    assert swap["count"] == MAX_PENDING  # the oldest were given up
    assert swap["mean"] == pytest.approx(np.mean(np.arange(extra, MAX_PENDING + extra)))


def test_fake_cuda_events_are_reused_once_read() -> None:
    gpu, clock = FakeGpu(), FakeClock()
    prof = FakeCudaProfiler(gpu, clock=clock)
    for _ in range(200):
        _gpu_frame(prof, gpu, clock, {"detect": 1.0, "swap": 2.0})
        gpu.completed = gpu.recorded  # the GPU keeps up
    assert prof.snapshot()["stages"]["swap"]["count"] == 200
    per_frame = 2 + 2 * 2
    assert gpu.events_made <= 2 * per_frame  # not 200 frames' worth


def test_fake_cuda_reset_drops_pending_frames() -> None:
    gpu, clock = FakeGpu(), FakeClock()
    prof = FakeCudaProfiler(gpu, clock=clock)
    _gpu_frame(prof, gpu, clock, {"swap": 1.0})
    prof.reset()
    gpu.completed = gpu.recorded
    snap = prof.snapshot()
    assert snap["pending"] == 0
    assert snap["frames"] == 0
    assert snap["stages"] == {}


def test_frame_record_is_slotted() -> None:
    record = Profiler().frame()
    assert isinstance(record, FrameRecord)
    with pytest.raises(AttributeError):
        record.extra = 1  # type: ignore[attr-defined]


# --- CUDA path, real device -------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_events_resolve_without_synchronize(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the profiler synchronised")

    device = torch.device("cuda", torch.cuda.current_device())
    prof = Profiler(device, window=50)
    x = torch.randn(1024, 1024, device=device)
    stream = torch.cuda.Stream(device)
    torch.cuda.synchronize(device)
    monkeypatch.setattr(torch.cuda, "synchronize", forbidden)
    monkeypatch.setattr(torch.cuda.Event, "synchronize", forbidden)
    monkeypatch.setattr(torch.cuda.Event, "wait", forbidden)
    monkeypatch.setattr(torch.cuda.Stream, "synchronize", forbidden)
    with torch.cuda.stream(stream):  # events must follow the stream the caller made current
        record = prof.frame()
        with record.stage("sleep"):
            torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time at ~2 GHz, returns at once on the host
        with record.stage("matmul"):
            y = x @ x
        t0 = time.perf_counter()
        record.finish()
        finish_s = time.perf_counter() - t0
        snap = prof.snapshot()
    assert finish_s < 0.02  # finish() did not wait for the GPU
    assert snap["frames"] == 1
    assert snap["pending"] == 1  # the GPU is still sleeping: nothing read, nothing waited for
    assert snap["end_to_end"]["count"] == 0
    assert snap["host_end_to_end"]["count"] == 1
    deadline = time.monotonic() + 30
    while prof.snapshot()["pending"]:
        assert time.monotonic() < deadline, "CUDA events never completed"
        time.sleep(0.005)
    snap = prof.snapshot()
    stages = snap["stages"]
    assert stages["sleep"]["p50"] > 1.0
    assert stages["matmul"]["p50"] > 0.0
    assert snap["end_to_end"]["p50"] >= stages["sleep"]["p50"] + stages["matmul"]["p50"] - 1e-3
    assert snap["end_to_end"]["p50"] > snap["host_end_to_end"]["p50"]  # the host only launched the work
    json.loads(prof.to_json())

    # a steady stream of frames keeps the queue short with no synchronisation at all
    for _ in range(20):
        with torch.cuda.stream(stream):
            record = prof.frame()
            with record.stage("matmul"):
                torch.mm(x, x, out=y)
            record.finish()
    while prof.snapshot()["pending"]:
        assert time.monotonic() < deadline, "CUDA events never completed"
        time.sleep(0.005)
    snap = prof.snapshot()
    assert snap["frames"] == 21
    assert snap["stages"]["matmul"]["count"] == 21
    assert snap["stages"]["matmul"]["p50"] > 0.0
    assert "profiler_overflow" not in snap["counters"]
