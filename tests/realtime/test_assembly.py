"""The composition root: `ModelSpec` validates once, and every front-end (swap, cam, serve, bench) turns its options
into a spec and builds its models through the one `build_models`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import pytest

from engines.errors import ConfigError
from realtime.assembly import builder
from realtime.assembly.spec import ModelSpec
from realtime.cli.main import main
from realtime.local import sinks
from tests import faces
from tests.realtime.test_cam import FakeSink
from tests.realtime.test_filemode import make_clip, model_home  # noqa: F401 (model_home: autouse)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"engine": "inswapper"}, "engine must be one of facedancer, identity, anonymize, not 'inswapper'"),
        ({"engine": "anonymize", "style": "swirl"}, "--style must be one of pixelate, blur, fill, not 'swirl'"),
        ({"detector": "yunet"}, "unknown detector 'yunet'; choose one of: auto, mtcnn, scrfd"),
        ({"backend": "openvino"}, "unknown backend 'openvino'; choose one of: auto, tensorrt, cuda-graphs"),
        ({"precision": "int8"}, "--precision must be fp32 or fp16, got 'int8'"),
        ({"simulate_ms": -1.0}, "--simulate-ms must be 0..10000 milliseconds"),
        ({"simulate_ms": float("nan")}, "--simulate-ms must be 0..10000 milliseconds"),
        ({"device": ""}, "--device must be auto, cpu or cuda"),
    ],
)
def test_a_bad_spec_is_refused_at_construction(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelSpec(**changes)  # type: ignore[arg-type]


def test_a_spec_is_frozen_and_says_which_weights_it_loads() -> None:
    spec = ModelSpec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.engine = "identity"  # type: ignore[misc]
    assert spec.weight_names == ["facedancer_c_hq", "arcface_r50"]
    assert ModelSpec(engine="identity").weight_names == []
    assert ModelSpec(engine="anonymize").weight_names == []  # hides faces with no network but the detector
    assert ModelSpec(engine="identity", arcface=True).weight_names == ["arcface_r50"]  # reference-person choice
    assert ModelSpec(arcface=False).weight_names == ["facedancer_c_hq"]  # the benchmark's random identity
    assert ModelSpec(random_weights=True, arcface=False).weight_names == []


@pytest.fixture
def specs(monkeypatch: pytest.MonkeyPatch) -> list[ModelSpec]:
    """Every spec handed to the one builder; the real builder then runs on it."""
    seen: list[ModelSpec] = []
    real = builder.build_models

    def watching(spec: ModelSpec) -> builder.Models:
        seen.append(spec)
        return real(spec)

    monkeypatch.setattr(builder, "build_models", watching)
    return seen


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("assembly-media")
    cv2.imwrite(str(d / "source.jpg"), faces.astronaut()[:, :, ::-1])
    make_clip(d / "clip.mp4", acodec=None, n=4)
    return d


COMMON = ["--device", "cpu", "--detector", "mtcnn", "--simulate-ms", "1"]


def test_swap_builds_through_the_one_builder(media: Path, tmp_path: Path, specs: list[ModelSpec]) -> None:
    out = tmp_path / "out.png"
    args = ["-s", str(media / "source.jpg"), "-i", str(media / "source.jpg"), "-o", str(out), "-q"]
    assert main(["swap", *args, "--engine", "identity", *COMMON]) == 0
    assert out.is_file()
    assert specs == [ModelSpec(engine="identity", device="cpu", detector="mtcnn", arcface=False, simulate_ms=1.0)]


def test_cam_builds_through_the_one_builder(
    media: Path, monkeypatch: pytest.MonkeyPatch, specs: list[ModelSpec]
) -> None:
    monkeypatch.setattr(sinks, "VirtualCameraSink", FakeSink)
    monkeypatch.setattr(FakeSink, "instances", [])
    monkeypatch.setattr(FakeSink, "stop_with", "window")
    source = ["--source", str(media / "source.jpg"), "--camera", str(media / "clip.mp4"), "--virtual-cam", "-q"]
    assert main(["cam", *source, "--engine", "identity", *COMMON]) == 0
    assert specs == [ModelSpec(engine="identity", device="cpu", detector="mtcnn", arcface=False, simulate_ms=1.0)]


def test_serve_builds_through_the_one_builder(
    monkeypatch: pytest.MonkeyPatch, specs: list[ModelSpec], capsys: pytest.CaptureFixture[str]
) -> None:
    from realtime.cli import serve

    def no_listening(*args: object, **kwargs: object) -> int:  # the models are what this test is about
        raise ConfigError("stopped before listening")

    monkeypatch.setattr(serve, "_serve", no_listening)
    assert main(["serve", "--engine", "identity", "--max-sessions", "1", "-q", *COMMON]) == 2
    assert "stopped before listening" in capsys.readouterr().err
    assert specs == [
        ModelSpec(engine="identity", device="cpu", detector="mtcnn", weights_optional=True, simulate_ms=1.0)
    ]


def test_bench_builds_through_the_one_builder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, specs: list[ModelSpec], capsys: pytest.CaptureFixture[str]
) -> None:
    from engines import flops

    def stop(*args: object, **kwargs: object) -> None:  # after the models: the timing itself is test_bench's
        raise ConfigError("stopped before timing")

    monkeypatch.setattr(flops, "device_peaks", stop)
    bench = ["bench", "--random-weights", "--device", "cpu", "--detector", "mtcnn", "--backend", "eager"]
    assert main([*bench, "--sizes", "320x240", "--faces", "1", "--out", str(tmp_path)]) == 2
    assert "stopped before timing" in capsys.readouterr().err
    assert specs == [ModelSpec(device="cpu", detector="mtcnn", backend="eager", arcface=False, random_weights=True)]
