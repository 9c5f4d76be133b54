"""One vocabulary: every choice set is a `Literal` in `engines.choices` or `realtime.pipeline.choices`, and every
front-end (argparse of swap, cam, serve and bench; the live settings; /api/info) offers exactly its values, with the
defaults defined beside them."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, get_args

import pytest

from engines import choices as ec
from engines.mtcnn import MTCNN
from realtime.cli.main import build_parser
from realtime.cli.options import swap_options
from realtime.files.swap import SwapOptions
from realtime.live.session import SETTING_LIMITS, LiveSettings, SettingsError
from realtime.pipeline import choices as pc
from realtime.pipeline.face_choice import FaceChoice
from realtime.pipeline.frame import PipelineConfig
from realtime.pipeline.masks import MaskSpec
from tests.realtime.live_fixtures import identity_services, live_server

# the fewest arguments each front-end parses with
BASE_ARGV = {
    "swap": ["swap", "-s", "face.png", "-i", "in.png", "-o", "out.png"],
    "cam": ["cam", "-s", "face.png", "--preview"],
    "serve": ["serve"],
    "bench": ["bench"],
}
# (command, option, the Literal its choices must be, its default or None for no default)
OPTIONS: list[tuple[str, str, Any, object]] = [
    *(
        (cmd, opt, literal, default)
        for cmd in ("swap", "cam")
        for opt, literal, default in (
            ("--engine", pc.EngineName, pc.DEFAULT_ENGINE),
            ("--style", pc.AnonymizeStyle, None),  # None: not given (refused for engines that do not hide faces)
            ("--faces", pc.FaceMode, pc.DEFAULT_FACE_MODE),
            ("--mask", pc.MaskKind, pc.DEFAULT_MASK),
            ("--detector", ec.DetectorName, ec.DEFAULT_DETECTOR),
            ("--backend", ec.BackendChoice, ec.DEFAULT_BACKEND),
            ("--badge-position", pc.BadgePosition, None),  # None: not given (the badge is off unless asked for)
        )
    ),
    ("serve", "--engine", pc.EngineName, pc.DEFAULT_ENGINE),
    ("serve", "--style", pc.AnonymizeStyle, None),
    ("serve", "--badge-position", pc.BadgePosition, None),
    ("serve", "--detector", ec.DetectorName, ec.DEFAULT_DETECTOR),
    ("serve", "--backend", ec.BackendChoice, ec.DEFAULT_BACKEND),
    ("bench", "--detector", ec.DetectorName, ec.DEFAULT_DETECTOR),
    ("bench", "--precision", ec.Precision, None),
]


def subparser(command: str) -> argparse.ArgumentParser:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[command]


def dest(command: str, option: str) -> str:
    return next(a.dest for a in subparser(command)._actions if option in a.option_strings)


@pytest.mark.parametrize(("command", "option", "literal", "default"), OPTIONS, ids=lambda v: str(v))
def test_every_choice_option_offers_exactly_its_literal(command: str, option: str, literal: Any, default: Any) -> None:
    parser = build_parser()
    values = get_args(literal)
    assert values, literal
    action = next(a for a in subparser(command)._actions if option in a.option_strings)
    assert tuple(action.choices) == values
    key = dest(command, option)
    assert getattr(parser.parse_args(BASE_ARGV[command]), key) == default
    for value in values:  # a real parse takes every value of the set ...
        assert getattr(parser.parse_args([*BASE_ARGV[command], option, value]), key) == value
    with pytest.raises(SystemExit) as e:  # ... and refuses any other
        parser.parse_args([*BASE_ARGV[command], option, "not-a-choice"])
    assert e.value.code == 2


def test_the_literals_are_the_sets_the_review_named() -> None:
    assert pc.ENGINES == ("facedancer", "identity", "anonymize")
    assert pc.STYLES == ("pixelate", "blur", "fill")
    assert pc.DEFAULT_STYLE in pc.STYLES
    assert pc.FACE_MODES == ("all", "largest", "reference")
    assert set(pc.LIVE_FACE_MODES) < set(pc.FACE_MODES)
    assert pc.MASKS == ("official", "ellipse")
    assert pc.BADGE_POSITIONS == ("top-right", "top-left", "bottom-right", "bottom-left")
    assert pc.DEFAULT_BADGE_POSITION in pc.BADGE_POSITIONS
    assert ec.DETECTORS == ("auto", "mtcnn", "scrfd")
    assert ec.BACKEND_CHOICES[1:] == ec.BACKEND_NAMES
    assert ec.BACKEND_CHOICES[0] == "auto"
    assert set(ec.BACKEND_NAMES) == {"eager", "onnxruntime", "cuda-graphs", "tensorrt"}
    assert ec.PRECISIONS == ("fp32", "fp16")


def test_the_backends_auto_tries_are_every_backend_fastest_first() -> None:
    from engines.runners.select import BACKENDS

    assert BACKENDS == ("tensorrt", "cuda-graphs", "onnxruntime", "eager")
    assert sorted(BACKENDS) == sorted(ec.BACKEND_NAMES)


@pytest.mark.parametrize("command", ["swap", "cam"])
def test_the_parser_defaults_are_the_option_defaults(command: str) -> None:
    """A file or camera swap with no option given is `SwapOptions()`: each default is defined once."""
    args = build_parser().parse_args(BASE_ARGV[command])
    assert swap_options(args) == SwapOptions()


def test_the_pipeline_and_live_defaults_come_from_the_vocabulary() -> None:
    live = LiveSettings()
    assert (live.face_mode, live.mask, live.max_faces, live.detect_every) == (
        FaceChoice().mode,
        MaskSpec().kind,
        FaceChoice().max_faces,
        PipelineConfig().detect_every,
    )
    assert (live.face_mode, live.mask, live.max_faces, live.detect_every) == (
        pc.DEFAULT_FACE_MODE,
        pc.DEFAULT_MASK,
        pc.DEFAULT_MAX_FACES,
        pc.DEFAULT_DETECT_EVERY,
    )
    serve = build_parser().parse_args(BASE_ARGV["serve"])
    bench = build_parser().parse_args(BASE_ARGV["bench"])
    assert serve.detect_every == bench.detect_every == live.detect_every
    assert serve.device == bench.device == SwapOptions().device == ec.DEFAULT_DEVICE


def test_the_live_settings_offer_the_literals() -> None:
    assert SETTING_LIMITS["face_mode"] == list(pc.LIVE_FACE_MODES)
    assert SETTING_LIMITS["mask"] == list(pc.MASKS)
    assert SETTING_LIMITS["max_faces"] == list(pc.MAX_FACES_RANGE)
    assert SETTING_LIMITS["detect_every"] == list(pc.DETECT_EVERY_RANGE)
    assert SETTING_LIMITS["style"] == list(pc.STYLES)
    assert LiveSettings().style == SwapOptions().style == pc.DEFAULT_STYLE
    types = {f.name: f.type for f in dataclasses.fields(LiveSettings)}
    assert types["face_mode"] == "LiveFaceMode"  # annotated with the Literal itself (postponed annotations)
    assert types["mask"] == "MaskKind"
    assert types["style"] == "AnonymizeStyle"
    for style in pc.STYLES:
        assert LiveSettings().updated({"style": style}).style == style
    with pytest.raises(SettingsError, match="style must be one of pixelate, blur, fill, got 'swirl'"):
        LiveSettings().updated({"style": "swirl"})
    for mode in pc.LIVE_FACE_MODES:
        assert LiveSettings().updated({"face_mode": mode}).face_mode == mode
    for mask in pc.MASKS:
        assert LiveSettings().updated({"mask": mask}).mask == mask
    with pytest.raises(SettingsError, match="face_mode must be one of all, largest"):
        LiveSettings().updated({"face_mode": "reference"})  # live sessions take no reference photo
    lo, hi = pc.MAX_FACES_RANGE
    assert LiveSettings().updated({"max_faces": hi}).max_faces == hi
    with pytest.raises(SettingsError):
        LiveSettings().updated({"max_faces": hi + 1})
    with pytest.raises(SettingsError):
        LiveSettings().updated({"max_faces": lo - 1})


async def test_api_info_lists_the_choices_the_server_takes() -> None:
    async with live_server(identity_services(MTCNN())) as live:
        status, info = await live.json("GET", "/api/info")
    assert status == 200
    assert info["limits"]["face_mode"] == list(pc.LIVE_FACE_MODES)
    assert info["limits"]["mask"] == list(pc.MASKS)
    assert info["limits"]["max_faces"] == list(pc.MAX_FACES_RANGE)
    assert info["settings"]["face_mode"] == pc.DEFAULT_FACE_MODE
    assert info["settings"]["mask"] == pc.DEFAULT_MASK
