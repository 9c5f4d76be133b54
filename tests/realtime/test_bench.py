"""`dancecam bench` as a user runs it, with tiny settings on the CPU: the files it writes, the numbers in them, the
compute floor beside every time, and clear errors for bad arguments (before any model loads)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engines.detect import image_tensor
from engines.mtcnn import MTCNN
from realtime.bench import run as bench
from realtime.cli.main import main

TINY = ["--frames", "3", "--warmup", "1", "--sizes", "320x240", "--faces", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    stdout, stderr = io.StringIO(), io.StringIO()  # module scope: capsys is per test
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["bench", *TINY, "--random-weights", "--backend", "eager", "--out", str(out)])
    [json_path] = out.glob("bench-*.json")
    return {"rc": rc, "out": out, "result": json.loads(json_path.read_text()), "stdout": stdout.getvalue()}


def test_writes_json_markdown_and_plots(run: dict[str, Any]) -> None:
    assert run["rc"] == 0
    stem = bench.result_stem(run["result"])
    assert stem.startswith("bench-cpu-")
    names = {p.name for p in run["out"].iterdir()}
    assert names == {f"{stem}.json", f"{stem}.md", f"{stem}-stages.png", f"{stem}-latency.png"}
    for png in ("stages", "latency"):
        data = (run["out"] / f"{stem}-{png}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(data) > 10_000
    assert f"saved {run['out']}" in run["stdout"].replace("\n", "")


def test_numbers_are_sane(run: dict[str, Any]) -> None:
    result = run["result"]
    env = result["environment"]
    assert env["device_type"] == "cpu"
    assert env["torch"]
    assert env["onnxruntime"]
    assert {"driver", "cuda", "cudnn", "python", "cpu"} <= set(env)
    assert result["model"]["weights"] == "random"
    assert result["model"]["gflop_per_face"] == pytest.approx(54.79, abs=0.01)  # FlopCounterMode, 2 x MAC
    assert result["peaks"]["fp32"]["tflops"] > 0
    [case] = result["cases"]
    assert (case["backend"], case["precision"], case["size"], case["faces"]) == ("eager", "fp32", "320x240", 1)
    assert case["faces_found"] == {"min": 1, "mean": 1.0}
    lat = case["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p95"] <= lat["p99"]
    assert len(case["timeline_ms"]) == 3
    assert min(case["timeline_ms"]) == pytest.approx(lat["min"], abs=1e-3)
    assert case["fps"] > 0
    assert case["faces_per_s"] == pytest.approx(case["fps"])
    assert case["fail_closed"] == 0
    assert {"upload", "track", "align", "swap", "paste", "download"} <= set(case["stages"])
    assert case["stages"]["swap"]["p50"] <= lat["p99"]
    assert result["settings"]["detector"] == "detector mtcnn (the cheaper one on a CPU)"  # what swap would run here


def test_floor_beside_every_time(run: dict[str, Any]) -> None:
    result = run["result"]
    [case] = result["cases"]
    peak = result["peaks"]["fp32"]
    floor = result["model"]["gflop_per_face"] * 1e9 / (peak["tflops"] * 1e12) * 1e3
    assert case["floor_ms"] == pytest.approx(floor, rel=1e-6)
    assert np.isfinite(floor)
    md = (run["out"] / f"{bench.result_stem(result)}.md").read_text()
    assert "| floor ms |" in md
    assert f"{case['floor_ms']:.2f}" in md
    assert "54.79 GFLOP per 256x256 face" in md
    assert "floor ms" in run["stdout"]
    assert "54.79 GFLOP per face" in run["stdout"]
    assert f"{case['floor_ms']:.2f}" in run["stdout"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--faces", "9"], "face count 9: must be 1..8"),
        (["--faces", "0"], "face count 0"),
        (["--sizes", "321x240"], "must be even"),
        (["--frames", "0"], "--frames must be 1..100000"),
        (["--max-seconds", "-1"], "--max-seconds must be 0..86400"),
        (["--backend", "warp-drive"], "unknown backend 'warp-drive'"),
        (["--backend", "cuda-graphs"], "cannot run on cpu"),
    ],
)
def test_bad_settings_are_clear_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", *TINY, "--random-weights", *args]) == 2
    assert message in capsys.readouterr().err.replace("\n", "")


@pytest.mark.parametrize(
    ("args", "message"), [(["--sizes", "320by240"], "is not WIDTHxHEIGHT"), (["--faces", "one"], "face counts")]
)
def test_unparsable_arguments_are_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["bench", *args])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_weights_say_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DANCECAM_HOME", str(tmp_path / "home"))
    assert main(["bench", *TINY, "--backend", "eager", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.replace("\n", " ")
    assert "dancecam models download facedancer_c_hq" in err
    assert "--random-weights" in err
    assert not (tmp_path / "out").exists()


def test_time_limit_ends_a_slow_case_with_fewer_frames(tmp_path: Path) -> None:
    """A CPU at a fraction of a second per frame: the case stops after --max-seconds, having timed at least one
    detection cycle, and says how many frames it timed."""
    args = ["--frames", "200", "--warmup", "1", "--sizes", "320x240", "--faces", "1", "--device", "cpu"]
    args += ["--detect-every", "3", "--max-seconds", "0.5", "--random-weights", "--backend", "eager"]
    assert main(["bench", *args, "--out", str(tmp_path), "-q"]) == 0
    [json_path] = tmp_path.glob("bench-*.json")
    result = json.loads(json_path.read_text())
    [case] = result["cases"]
    assert 3 <= case["frames"] < 200
    assert len(case["timeline_ms"]) == case["frames"]
    assert result["settings"]["max_seconds"] == 0.5
    assert "--max-seconds 0.5" in result["command"]
    md = json_path.with_suffix(".md").read_text()
    assert "200 timed frames (at most 0.5 s; each case's count is in its row)" in md
    assert f"| {case['frames']} |" in md


def test_detector_is_chosen_like_the_products(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from engines.detectors import scrfd_path
    from tests.engines.test_scrfd import build_fake_scrfd

    home = tmp_path / "home"
    monkeypatch.setenv("DANCECAM_HOME", str(home))
    args = ["bench", *TINY, "--random-weights", "--backend", "eager", "--detector", "scrfd"]
    assert main([*args, "--out", str(tmp_path / "none")]) == 1
    assert "dancecam models download scrfd_10g" in capsys.readouterr().err.replace("\n", " ")
    path = scrfd_path(home)
    path.parent.mkdir(parents=True)
    build_fake_scrfd(path)
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    [json_path] = (tmp_path / "out").glob("bench-*.json")
    result = json.loads(json_path.read_text())
    assert result["settings"]["detector"] == "detector scrfd on onnxruntime (asked for)"
    assert "--detector scrfd" in result["command"]
    md = json_path.with_suffix(".md").read_text()
    assert "detector scrfd on onnxruntime (asked for), every 5 frames" in md
    with pytest.raises(SystemExit):
        main(["bench", *TINY, "--detector", "yolo"])


def test_help_lists_bench(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "bench" in capsys.readouterr().out


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_grid_placements_fit_the_frame(n: int) -> None:
    placed = bench.grid_placements(n)
    assert len(placed) == n
    for cx, cy, h in placed:
        assert 0 < cx < 1
        assert 0 < cy < 1
        assert 0 < h <= 0.45


def test_frames_without_a_checkout_still_have_real_faces() -> None:
    """An installed package (no tests/ beside it) makes the same frames: its sample faces are part of it."""
    frame, made_by = bench.face_frame(640, 480, 4)
    assert made_by.startswith("realtime.bench.faces")
    assert frame.shape == (480, 640, 3)
    assert frame.dtype == np.uint8
    assert len(MTCNN()(image_tensor(frame, "cpu"))) == 4
