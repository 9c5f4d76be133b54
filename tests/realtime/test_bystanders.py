"""Bystanders: with a face mode that chooses (largest, or past max_faces), the faces not chosen are hidden as the
anonymize engine would, when asked; and the options that turn this and the entry check on reach every front-end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.errors import ConfigError
from engines.mtcnn import MTCNN
from realtime.bench.faces import Placement, compose_faces
from realtime.cli.main import build_parser
from realtime.cli.options import swap_options
from realtime.live.session import LiveSettings, SettingsError
from realtime.pipeline.colour import rgb_to_yuv420p
from realtime.pipeline.face_choice import FaceChoice
from realtime.pipeline.frame import FramePipeline, PipelineConfig
from realtime.pipeline.video import Frame
from tests.fakes import Painter

W, H = 640, 480
BIG, SMALL = Placement(0.3, 0.5, 0.4), Placement(0.72, 0.45, 0.25)


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN()


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, list]:
    return compose_faces(W, H, (BIG, SMALL))


def _core(box: np.ndarray) -> tuple[slice, slice]:
    x0, y0, x1, y1 = (int(v) for v in box)
    w, h = x1 - x0, y1 - y0
    return slice(y0 + h // 4, y1 - h // 4), slice(x0 + w // 4, x1 - w // 4)


def _run(detector: MTCNN, image: np.ndarray, hide: bool, yuv: bool, style: str = "fill") -> np.ndarray:
    """The output's luma (yuv420p) or grey level (rgb24): painted white where swapped."""
    config = PipelineConfig(
        detect_every=1, choice=FaceChoice("largest", 1), hide_bystanders=hide, bystander_style=style
    )
    pipe = FramePipeline(detector, Painter(), config)
    if yuv:
        planes = rgb_to_yuv420p(torch.from_numpy(image))
        packed = torch.cat([p.reshape(-1, W) for p in planes]).numpy()
        return pipe.process(Frame(packed, "yuv420p"), 0.0).frame.data[:H].astype(np.float32)
    return pipe.process(Frame(image, "rgb24"), 0.0).frame.data.astype(np.float32).mean(-1)


@pytest.mark.parametrize("yuv", [False, True], ids=["rgb24", "yuv420p"])
def test_the_face_not_chosen_is_hidden_when_asked(detector: MTCNN, scene: tuple[np.ndarray, list], yuv: bool) -> None:
    image, (big, small) = scene
    grey = image.astype(np.float32).mean(-1)
    shown = _run(detector, image, hide=False, yuv=yuv)
    hidden = _run(detector, image, hide=True, yuv=yuv)
    for out in (shown, hidden):  # the largest face is swapped (painted white) either way
        assert out[_core(big.box)].mean() > 200
    reference = shown if yuv else grey  # the bystander as it came in (yuv: through the pipeline untouched)
    assert np.abs(shown[_core(small.box)] - reference[_core(small.box)]).mean() < 3
    assert np.abs(hidden[_core(small.box)] - reference[_core(small.box)]).mean() > 40  # filled black
    assert hidden[_core(small.box)].mean() < 40
    away = np.ones((H, W), bool)  # nothing else changed: outside both faces' grown boxes
    for p in (big, small):
        x0, y0, x1, y1 = p.box
        w, h = x1 - x0, y1 - y0
        away[max(0, int(y0 - h)) : int(y1 + h), max(0, int(x0 - w)) : int(x1 + w)] = False
    assert np.array_equal(hidden[away], shown[away])


def test_the_bystanders_style_is_the_anonymizers(detector: MTCNN, scene: tuple[np.ndarray, list]) -> None:
    image, (_big, small) = scene
    core = _core(small.box)
    blurred = _run(detector, image, hide=True, yuv=False, style="blur")[core]
    filled = _run(detector, image, hide=True, yuv=False, style="fill")[core]
    assert filled.mean() < 40 < blurred.mean()
    assert blurred.std() < image.astype(np.float32).mean(-1)[core].std() / 2  # detail gone


def test_a_bad_bystander_style_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="bystander style must be one of pixelate, blur, fill"):
        PipelineConfig(bystander_style="swirl")  # type: ignore[arg-type]


def test_the_cli_options_reach_file_mode() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["swap", "-i", "in.mp4", "-o", "out.mp4", "-s", "a.jpg", "--faces", "largest", "--hide-bystanders"]
    )
    options = swap_options(args)
    assert options.hide_bystanders is True
    assert options.detect_on_change is True
    args = parser.parse_args(
        ["swap", "-i", "in.mp4", "-o", "out.mp4", "-s", "a.jpg", "--hide-bystanders", "--style", "pixelate"]
    )
    assert swap_options(args).style == "pixelate"  # --style is for the bystanders too
    args = parser.parse_args(["swap", "-i", "in.mp4", "-o", "out.mp4", "-s", "a.jpg", "--no-detect-on-change"])
    assert swap_options(args).detect_on_change is False
    args = parser.parse_args(["swap", "-i", "in.mp4", "-o", "out.mp4", "-s", "a.jpg", "--style", "pixelate"])
    with pytest.raises(ConfigError, match="--style is for --engine anonymize or --hide-bystanders"):
        swap_options(args)


def test_the_live_settings_reach_the_pipeline() -> None:
    settings = LiveSettings().updated({"hide_bystanders": True, "style": "pixelate", "detect_on_change": False})
    config = settings.pipeline_config()
    assert config.hide_bystanders is True
    assert config.bystander_style == "pixelate"
    assert config.detect_on_change is False
    assert LiveSettings().pipeline_config().detect_on_change is True
    for bad in ({"hide_bystanders": "yes"}, {"detect_on_change": 1}):
        with pytest.raises(SettingsError):
            LiveSettings().updated(bad)


def test_the_anonymize_engine_hides_every_face_past_max_faces(detector: MTCNN, scene: tuple[np.ndarray, list]) -> None:
    from realtime.pipeline.anonymize import FaceAnonymizer

    image, placed = scene
    config = PipelineConfig(detect_every=1, choice=FaceChoice("all", 1))  # one face through the engine
    out = FramePipeline(detector, FaceAnonymizer("fill"), config).process(Frame(image, "rgb24"), 0.0).frame.data
    for face in placed:  # both filled black: the one past max_faces is hidden too, never shown
        assert out[_core(face.box)].astype(np.float32).mean() < 40


def test_degrading_to_one_face_hides_the_others_instead_of_showing_them() -> None:
    from realtime.live.degrade import LEVELS

    (one,) = [level for level in LEVELS if level.max_faces == 1]
    applied = one.apply(PipelineConfig(choice=FaceChoice("all", 4)))
    assert applied.choice.max_faces == 1
    assert applied.hide_bystanders is True
    assert LEVELS[0].apply(PipelineConfig()).hide_bystanders is False
