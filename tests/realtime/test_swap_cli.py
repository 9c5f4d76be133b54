"""`dancecam swap` as a user runs it: exit codes, messages, no traceback, no stray files, Ctrl-C."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from realtime.cli.main import main
from realtime.pipeline import frame as pipeline
from tests import faces
from tests.realtime.test_filemode import FRAMES, leftovers, make_clip, model_home, probe  # noqa: F401 (autouse)

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli-media")
    cv2.imwrite(str(d / "source.jpg"), faces.astronaut()[:, :, ::-1])
    make_clip(d / "clip.mp4")
    return d


def swap(media: Path, out: Path, *extra: str) -> int:
    args = ["swap", "--source", str(media / "source.jpg"), "--input", str(media / "clip.mp4"), "--output", str(out)]
    return main([*args, *extra])


def test_help_lists_swap(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "swap" in capsys.readouterr().out


def test_identity_swap_with_summary(media: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.mp4"
    assert swap(media, out, "--engine", "identity", "--detect-every", "4", "--mask", "ellipse", "--erode", "2") == 0
    captured = capsys.readouterr()
    assert f"{FRAMES} frames at 320x240" in captured.out
    assert "audio copied (aac)" in captured.out
    assert len(probe(out).frames) == FRAMES


def test_quiet_prints_nothing(media: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.webm"
    assert swap(media, out, "--engine", "identity", "--quiet", "--faces", "largest", "--colour-transfer") == 0
    assert capsys.readouterr() == ("", "")
    assert len(probe(out).frames) == FRAMES


def test_facedancer_without_weights(media: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.mp4"
    assert swap(media, out) == 1
    err = capsys.readouterr().err
    assert "dancecam models download facedancer_c_hq arcface_r50" in err
    assert "dancecam models convert" in err
    assert "Traceback" not in err
    assert not out.exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("extra", "code", "words"),
    [
        (("--faces", "reference"), 2, "--reference"),
        (("--detect-every", "0"), 2, "detection interval"),
        (("--max-faces", "99"), 2, "max faces"),
        (("--feather", "-1"), 2, "feather"),
        (("--device", "tpu"), 2, "device"),
    ],
)
def test_bad_settings(
    media: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], code: int, words: str
) -> None:
    out = tmp_path / "out.mp4"
    assert swap(media, out, "--engine", "identity", *extra) == code
    err = capsys.readouterr().err
    assert words in err
    assert not out.exists()


def test_backend_that_cannot_run_here_is_refused_before_any_model_loads(
    media: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import engines.facedancer

    def no_loading(*args: object, **kw: object) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(engines.facedancer, "load_facedancer", no_loading)
    out = tmp_path / "out.mp4"
    assert swap(media, out, "--device", "cpu", "--backend", "cuda-graphs") == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert "--backend cuda-graphs cannot run on cpu: CUDA graphs need a CUDA device" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_existing_output(media: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    assert swap(media, out, "--engine", "identity") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert swap(media, out, "--engine", "identity", "--overwrite", "-q") == 0
    assert len(probe(out).frames) == FRAMES


def interrupt_on_call(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Ctrl-C while the pipeline works on its n-th frame (counting from 1)."""
    real = pipeline.FramePipeline.process
    calls = {"n": 0}

    def process(self: pipeline.FramePipeline, frame: np.ndarray, t: float | None = None) -> pipeline.FrameResult:
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(self, frame, t)

    monkeypatch.setattr(pipeline.FramePipeline, "process", process)


def test_ctrl_c_keeps_partial_video_and_exits_130(
    media: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    interrupt_on_call(monkeypatch, 6)
    out = tmp_path / "out.mp4"
    assert swap(media, out, "--engine", "identity") == 130
    err = capsys.readouterr().err
    assert "interrupted after 5 of 12 frames" in err
    assert "out.mp4" in err
    p = probe(out)
    assert len(p.frames) == 5
    assert p.acodec == "aac"
    assert leftovers(tmp_path) == []


def test_ctrl_c_on_first_frame_writes_nothing(
    media: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    interrupt_on_call(monkeypatch, 1)
    out = tmp_path / "out.mov"
    assert swap(media, out, "--engine", "identity") == 130
    assert "no output was written" in capsys.readouterr().err
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_console_script_error_has_no_traceback(media: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    proc = subprocess.run(
        [str(BIN / "dancecam"), "swap", "-s", str(media / "source.jpg"), "-i", str(media / "clip.mp4"), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "is an image" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
