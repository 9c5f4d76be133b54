"""`dancecam cam` without a webcam: the real error paths (no camera, no v4l2loopback, headless OpenCV) and the live
loop end to end from a looped video file of real face frames into a fake sink, stopped by Ctrl-C or by the sink."""

from __future__ import annotations

import glob
import sys
import threading
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytest

from engines.errors import ConfigError, MediaError
from realtime.cli.main import main
from realtime.local import sinks
from realtime.local.camera import Capture, VideoFileSource, open_source, parse_size
from realtime.pipeline.worker import ProcessedFrame
from tests import faces
from tests.realtime.test_filemode import make_clip, model_home, probe  # noqa: F401 (model_home: autouse)

LINUX = sys.platform.startswith("linux")
CLIP_FRAMES = 8


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cam-media")
    cv2.imwrite(str(d / "source.jpg"), faces.astronaut()[:, :, ::-1])
    make_clip(d / "clip.mp4", acodec=None, n=CLIP_FRAMES)
    return d


def cam(media: Path, *extra: str) -> int:
    return main(["cam", "--source", str(media / "source.jpg"), "--engine", "identity", *extra])


def our_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("dancecam-")]


# --- errors a user meets ----------------------------------------------------------------------------------------


def free_camera_index() -> int:
    return next(i for i in range(9, 64) if not Path(f"/dev/video{i}").exists())


def test_missing_camera_says_what_to_check(media: Path, capsys: pytest.CaptureFixture[str]) -> None:
    index = free_camera_index()
    assert cam(media, "--camera", str(index), "--virtual-cam") == 1
    err = capsys.readouterr().err
    assert f"camera {index}" in err
    assert "Traceback" not in err
    if LINUX:
        assert f"/dev/video{index}" in err
        assert "ls /dev/video*" in err
        assert "video group" in err
    with pytest.raises(MediaError, match=f"camera {index}"):
        open_source(str(index))


@pytest.mark.skipif(not LINUX, reason="v4l2loopback is Linux's virtual camera")
@pytest.mark.skipif(
    bool(glob.glob("/sys/devices/virtual/video4linux/video*")), reason="a v4l2loopback device exists here"
)
def test_virtual_cam_without_loopback_says_how_to_make_one(media: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cam(media, "--camera", str(media / "clip.mp4"), "--virtual-cam") == 1
    err = capsys.readouterr().err
    assert "sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label=DanceCam" in err
    assert "Traceback" not in err
    assert our_threads() == []  # failed before any thread started
    with pytest.raises(MediaError, match="modprobe v4l2loopback"):
        sinks.VirtualCameraSink(320, 240, 25)  # pyvirtualcam itself, failing for real


@pytest.mark.skipif(sinks._gui_available(), reason="this OpenCV has window support")
def test_preview_with_headless_opencv_says_what_to_install(media: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cam(media, "--camera", str(media / "clip.mp4"), "--preview") == 1
    err = capsys.readouterr().err
    assert "pip install opencv-python" in err
    assert "headless" in err
    assert "Traceback" not in err


def test_an_output_must_be_chosen(media: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cam(media, "--camera", str(media / "clip.mp4")) == 2
    err = capsys.readouterr().err
    assert "--virtual-cam" in err
    assert "--preview" in err


@pytest.mark.parametrize(
    ("extra", "code", "words"),
    [
        (("--camera", "no-such-clip.mp4"), 1, "no such video file"),
        (("--size", "big"), 2, "WIDTHxHEIGHT"),
        (("--fps", "0"), 2, "frame rate"),
    ],
)
def test_bad_camera_settings(
    media: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], code: int, words: str
) -> None:
    assert cam(media, "--virtual-cam", *extra) == code
    assert words in capsys.readouterr().err


def test_parse_size() -> None:
    assert parse_size("1280x720") == (1280, 720)
    with pytest.raises(ConfigError):
        parse_size("1280")


# --- capture --------------------------------------------------------------------------------------------------


def test_video_file_loops_at_its_pace_and_resizes(media: Path) -> None:
    source = VideoFileSource(media / "clip.mp4", size=(160, 120), fps=200)
    try:
        frames = [source.read() for _ in range(CLIP_FRAMES + 1)]
    finally:
        source.close()
    assert source.size == (160, 120)
    assert all(f is not None and f.shape == (120, 160, 3) for f in frames)
    np.testing.assert_array_equal(frames[0], frames[CLIP_FRAMES])  # back to the start


class Ending:
    description = "test camera"
    size, fps = (4, 4), 30.0

    def __init__(self, frames: int) -> None:
        self.left = frames

    def read(self) -> np.ndarray | None:
        self.left -= 1
        return np.zeros((4, 4, 3), np.uint8) if self.left >= 0 else None

    def close(self) -> None:
        pass


def test_capture_submits_every_frame_and_says_when_the_camera_stops() -> None:
    got: list[object] = []
    capture = Capture(Ending(3), lambda frame, t: got.append((frame.format, frame.pts))).start()
    assert capture.stopped.wait(5)
    capture.stop()
    assert got == [("rgb24", 0), ("rgb24", 1), ("rgb24", 2)]
    assert capture.error is not None
    assert "test camera stopped delivering frames" in str(capture.error)


# --- the live loop end to end ---------------------------------------------------------------------------------


class FakeSink:
    """Stands in for the virtual camera: records what it is sent, then stops like Ctrl-C or a closed window."""

    instances: ClassVar[list[FakeSink]] = []
    limit = 10
    stop_with = "ctrl-c"

    def __init__(self, width: int, height: int, fps: float, device: str | None = None) -> None:
        self.size, self.fps = (width, height), fps
        self.name = "fake"
        self.frames: list[ProcessedFrame] = []
        self.sent_after_close = 0
        self.closed = False
        FakeSink.instances.append(self)

    def send(self, frame: ProcessedFrame) -> bool:
        if self.closed:
            self.sent_after_close += 1
        self.frames.append(frame)
        if len(self.frames) >= self.limit:
            if self.stop_with == "ctrl-c":
                raise KeyboardInterrupt
            return False
        return True

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(("stop_with", "code"), [("ctrl-c", 130), ("window", 0)])
def test_live_loop_end_to_end(
    media: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stop_with: str, code: int
) -> None:
    monkeypatch.setattr(sinks, "VirtualCameraSink", FakeSink)
    monkeypatch.setattr(FakeSink, "instances", [])
    monkeypatch.setattr(FakeSink, "stop_with", stop_with)
    before = set(threading.enumerate())
    clip = media / "clip.mp4"

    assert cam(media, "--camera", str(clip), "--virtual-cam", "--detect-every", "3") == code

    (sink,) = FakeSink.instances
    assert sink.size == (320, 240)
    assert sink.fps == pytest.approx(25)
    assert len(sink.frames) == FakeSink.limit  # nothing after the stop
    assert sink.closed
    assert sink.sent_after_close == 0
    assert set(threading.enumerate()) <= before  # camera and pipeline threads ended
    assert our_threads() == []

    raw = probe(clip).frames
    sequences = [f.sequence for f in sink.frames]
    pts = [f.frame.pts for f in sink.frames]
    assert sequences == sorted(sequences)  # in order (a repeat keeps its place)
    assert pts == sorted(pts)
    assert len(set(sequences)) >= 2  # new frames, not one frame repeated
    for frame in sink.frames:
        assert frame.result.faces == 1  # every frame went through the pipeline, the face swapped
        original = raw[frame.frame.pts % CLIP_FRAMES]  # capture numbers frames from 0; the clip loops
        assert frame.frame.data.shape == original.shape
        changed = np.any(frame.frame.data != original, axis=2)
        assert changed.any()  # the face region was pasted back...
        assert not changed[:20].any()  # ...and nothing else was touched
        assert np.abs(frame.frame.data.astype(int) - original).mean() < 5  # identity engine: the same face back

    captured = capsys.readouterr()
    if stop_with == "ctrl-c":
        assert "stopped (Ctrl-C)" in captured.err
    else:
        assert "stopped:" in captured.out
    assert "swapped frames out" in captured.err + captured.out
    assert "Traceback" not in captured.err


def test_a_pipeline_failing_on_every_frame_stops_and_says_why(
    media: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broken device fails every frame: the command stops with the error instead of waiting for a frame."""
    from engines.mtcnn import MTCNN

    calls = []
    works = MTCNN.__call__

    def broken(self: MTCNN, image: object) -> object:
        calls.append(1)
        if len(calls) == 1:  # the source photo, while the models load
            return works(self, image)  # type: ignore[arg-type]
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(sinks, "VirtualCameraSink", FakeSink)
    monkeypatch.setattr(FakeSink, "instances", [])
    monkeypatch.setattr(MTCNN, "__call__", broken)
    before = set(threading.enumerate())
    assert cam(media, "--camera", str(media / "clip.mp4"), "--virtual-cam") == 1
    err = capsys.readouterr().err.replace("\n", " ")
    assert "frames in a row: RuntimeError: CUDA error: an illegal memory access" in err
    assert "Traceback" not in err
    (sink,) = FakeSink.instances
    assert sink.frames == []  # nothing unswapped was ever sent
    assert sink.closed
    assert set(threading.enumerate()) <= before
