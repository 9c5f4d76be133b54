"""Choosing the face detector: MTCNN or SCRFD, by name or auto."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engines.detectors import decide, load_detector, scrfd_path
from engines.errors import ConfigError, ModelMissingError
from engines.mtcnn import MTCNN
from engines.scrfd import SCRFD
from realtime.cli import main
from tests import faces
from tests.engines.test_scrfd import build_fake_scrfd


def test_auto_takes_scrfd_only_on_a_gpu_with_its_file_and_onnxruntime_there() -> None:
    assert decide("auto", "cuda", scrfd_present=True, scrfd_on_gpu=True) == (
        "scrfd",
        "a GPU, det_10g.onnx and onnxruntime's CUDA provider present",
    )
    name, why = decide("auto", "cuda", scrfd_present=True, scrfd_on_gpu=False)
    assert name == "mtcnn"
    assert "onnxruntime has no CUDA provider" in why
    name, why = decide("scrfd", "cuda", scrfd_present=True, scrfd_on_gpu=False)
    assert name == "scrfd"  # asked for by name: the user gets it, and is told where it runs
    assert "runs on the CPU" in why
    name, why = decide("auto", "cuda", scrfd_present=False)
    assert name == "mtcnn"
    assert "dancecam models download scrfd_10g" in why
    assert decide("auto", "cpu", scrfd_present=True) == ("mtcnn", "the cheaper one on a CPU")
    assert decide("scrfd", "cpu", scrfd_present=True) == ("scrfd", "asked for")
    with pytest.raises(ConfigError, match="unknown detector 'yolo'; choose one of: auto, mtcnn, scrfd"):
        decide("yolo", "cpu", scrfd_present=True)


def test_load_by_name(tmp_path: Path) -> None:
    detector, message = load_detector("auto", torch.device("cpu"), tmp_path)
    assert isinstance(detector, MTCNN)
    assert message == "detector mtcnn (the cheaper one on a CPU)"
    with pytest.raises(ModelMissingError, match="dancecam models download scrfd_10g"):
        load_detector("scrfd", torch.device("cpu"), tmp_path)
    path = scrfd_path(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    build_fake_scrfd(path)
    detector, message = load_detector("scrfd", torch.device("cpu"), tmp_path)
    assert isinstance(detector, SCRFD)
    assert message == "detector scrfd (asked for)"
    found = detector(torch.from_numpy(np.zeros((240, 320, 3), np.uint8)))
    assert len(found) == 0  # the fake network sees no face in a black frame


def test_swap_with_scrfd_and_no_file_says_how_to_get_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import cv2

    photo = tmp_path / "me.png"
    cv2.imwrite(str(photo), faces.astronaut()[:, :, ::-1])
    args = ["swap", "-s", str(photo), "-i", str(photo), "-o", str(tmp_path / "out.png"), "--engine", "identity"]
    code = main([*args, "--detector", "scrfd", "--model-dir", str(tmp_path / "models")])
    assert code == 1
    assert "dancecam models download scrfd_10g" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()
