"""The disclosure badge: drawn in its corner and nowhere else, in rgb24 and yuv420p, swapped or not, faces or not;
its text checked; its options reaching file mode, the camera, the server's defaults and live sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engines.errors import ConfigError
from engines.mtcnn import MTCNN
from realtime.cli.main import build_parser, main
from realtime.cli.options import swap_options
from realtime.cli.serve import live_defaults
from realtime.live.session import SETTING_LIMITS, LiveServices, LiveSettings, SessionManager, SettingsError
from realtime.pipeline import badge as badge_module
from realtime.pipeline import choices as pc
from realtime.pipeline.badge import Badge, render_badge
from realtime.pipeline.colour import rgb_to_yuv420p
from realtime.pipeline.frame import FramePipeline, IdentitySwap, PipelineConfig
from realtime.pipeline.video import Frame
from tests import faces
from tests.realtime.live_fixtures import identity_services, live_server
from tests.realtime.test_filemode import make_clip, model_home, probe  # noqa: F401 (autouse)

W, H = 640, 480


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN()


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return faces.compose_faces(W, H)[0]


def packed_yuv(rgb: np.ndarray) -> np.ndarray:
    y, u, v = rgb_to_yuv420p(torch.from_numpy(rgb))
    return torch.cat([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(-1, rgb.shape[1]).numpy()


def planes(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h, w = 2 * packed.shape[0] // 3, packed.shape[1]
    flat = packed.reshape(-1)
    q = h * w // 4
    return (
        flat[: h * w].reshape(h, w),
        flat[h * w : h * w + q].reshape(h // 2, w // 2),
        flat[h * w + q :].reshape(h // 2, w // 2),
    )


def frame_of(rgb: np.ndarray, fmt: str) -> Frame:
    return Frame(rgb, "rgb24") if fmt == "rgb24" else Frame(packed_yuv(rgb), "yuv420p")


def changed_masks(before: np.ndarray, after: np.ndarray, fmt: str) -> list[np.ndarray]:
    """Per plane (one for rgb24; Y, U, V for yuv420p), which pixels differ."""
    if fmt == "rgb24":
        return [(before != after).any(-1)]
    return [b != a for b, a in zip(planes(before), planes(after), strict=True)]


def assert_in_corner(changed: np.ndarray, position: str, min_share: float = 0.01) -> None:
    """Pixels changed, all of them inside `position`'s corner: within a fifth of the height and half the width."""
    h, w = changed.shape
    assert changed.mean() >= min_share, f"the badge changed only {changed.mean():.4f} of the plane"
    ys, xs = np.nonzero(changed)
    if position.startswith("top"):
        assert ys.max() < 0.2 * h, ys.max()
    else:
        assert ys.min() >= 0.8 * h, ys.min()
    if position.endswith("left"):
        assert xs.max() < 0.5 * w, xs.max()
    else:
        assert xs.min() >= 0.5 * w, xs.min()


# --- the pipeline ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["rgb24", "yuv420p"])
@pytest.mark.parametrize("position", pc.BADGE_POSITIONS)
def test_the_badge_is_drawn_in_its_corner_and_nowhere_else(
    detector: MTCNN, scene: np.ndarray, fmt: str, position: str
) -> None:
    """Faces swapped (identity engine) with and without the badge: the outputs differ in the corner only."""
    frame = frame_of(scene, fmt)
    plain = FramePipeline(detector, IdentitySwap(), PipelineConfig(detect_every=1)).process(frame, 0.0)
    marked = FramePipeline(
        detector, IdentitySwap(), PipelineConfig(detect_every=1, badge=Badge(position=position))
    ).process(frame, 0.0)
    assert marked.faces == plain.faces >= 3  # the faces were swapped as before
    for changed in changed_masks(plain.frame.data, marked.frame.data, fmt):
        assert_in_corner(changed, position)
    assert "badge" in marked.stages_ms
    if fmt == "yuv420p":  # whole chroma blocks: the luma box starts and ends on even pixels
        y_changed = changed_masks(plain.frame.data, marked.frame.data, fmt)[0]
        rows, cols = np.nonzero(y_changed.any(1))[0], np.nonzero(y_changed.any(0))[0]
        assert rows.min() % 2 == 0, rows.min()
        assert cols.min() % 2 == 0, cols.min()


@pytest.mark.parametrize("fmt", ["rgb24", "yuv420p"])
@pytest.mark.parametrize("swap", [True, False], ids=["swap-on", "swap-off"])
def test_the_badge_is_drawn_without_faces_and_with_swapping_off(
    detector: MTCNN, scene: np.ndarray, fmt: str, swap: bool
) -> None:
    """A frame with no face (swap on) or swapping off: the input comes back with the badge on it, nothing else."""
    picture = np.full((H, W, 3), (60, 120, 90), np.uint8) if swap else scene  # coloured: the chroma changes too
    frame = frame_of(picture, fmt)
    result = FramePipeline(detector, IdentitySwap(), PipelineConfig(swap=swap, badge=Badge())).process(frame, 0.0)
    assert result.faces == 0
    for changed in changed_masks(frame.data, result.frame.data, fmt):
        assert_in_corner(changed, pc.DEFAULT_BADGE_POSITION)
    assert result.frame.pts == frame.pts
    assert result.frame.format == fmt
    # the box is dark, its text light: both are there
    out = result.frame.data if fmt == "rgb24" else planes(result.frame.data)[0]
    image = render_badge(Badge(), W, H)
    h, w = image.rgba.shape[:2]
    region = out[image.y : image.y + h, image.x : image.x + w].astype(int)
    before = (frame.data if fmt == "rgb24" else planes(frame.data)[0])[image.y : image.y + h, image.x : image.x + w]
    assert (region < before.astype(int) - 30).mean() > 0.3  # most of the box darkens the picture
    assert (region > 200).mean() > 0.03  # the letters


@pytest.mark.parametrize("fmt", ["rgb24", "yuv420p"])
def test_no_badge_leaves_every_byte(detector: MTCNN, fmt: str) -> None:
    """Off (the default): a frame without faces, swapped or not, comes back byte for byte."""
    frame = frame_of(np.full((H, W, 3), 90, np.uint8), fmt)
    assert PipelineConfig().badge is None
    for swap in (True, False):
        out = FramePipeline(detector, IdentitySwap(), PipelineConfig(swap=swap)).process(frame, 0.0).frame
        assert np.array_equal(out.data, frame.data)


@pytest.mark.parametrize("fmt", ["rgb24", "yuv420p"])
def test_the_text_changes_the_pixels(detector: MTCNN, fmt: str) -> None:
    frame = frame_of(np.full((H, W, 3), (150, 100, 60), np.uint8), fmt)

    def drawn(text: str) -> np.ndarray:
        config = PipelineConfig(swap=False, badge=Badge(text, "bottom-left"))
        return FramePipeline(detector, IdentitySwap(), config).process(frame, 0.0).frame.data

    one, other = drawn("AI-altered video"), drawn("Parody: not real")
    for changed in changed_masks(one, other, fmt):
        assert_in_corner(changed, "bottom-left", min_share=0.001)


def test_the_badge_is_rendered_once_per_setting_and_size(detector: MTCNN, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rendered (and moved to the device) once, not per frame; again for a new text or a new frame size."""
    calls: list[tuple[str, int, int]] = []
    real = badge_module.render_badge

    def counting(badge: Badge, width: int, height: int) -> badge_module.BadgeImage:
        calls.append((badge.text, width, height))
        return real(badge, width, height)

    monkeypatch.setattr(badge_module, "render_badge", counting)
    pipeline = FramePipeline(detector, IdentitySwap(), PipelineConfig(swap=False, badge=Badge("one")))
    small = Frame(np.zeros((240, 320, 3), np.uint8), "rgb24")
    for _ in range(5):
        pipeline.process(Frame(np.zeros((H, W, 3), np.uint8), "rgb24"), 0.0)
    pipeline.config = PipelineConfig(swap=False, badge=Badge("two"))
    for _ in range(3):
        pipeline.process(small, 0.0)
    assert calls == [("one", W, H), ("two", 320, 240)]


@pytest.mark.parametrize(("width", "height"), [(640, 480), (1920, 1080), (480, 640), (320, 240)])
def test_the_badge_scales_with_the_frame_and_fits_it(width: int, height: int) -> None:
    for text in ("AI-altered video", "W" * pc.BADGE_TEXT_MAX):
        image = render_badge(Badge(text, "bottom-right"), width, height)
        h, w = image.rgba.shape[:2]
        assert image.x >= 0
        assert image.y >= 0
        assert image.x + w <= width
        assert image.y + h <= height
        assert image.x % 2 == image.y % 2 == w % 2 == h % 2 == 0
        if text == "AI-altered video":  # readable: about a tenth of the frame height, whatever the resolution
            assert 0.07 <= h / height <= 0.12, h / height


def test_badge_text_and_position_are_checked() -> None:
    assert Badge("  Parody  ").text == "Parody"
    assert Badge().text == pc.DEFAULT_BADGE_TEXT
    assert Badge().position == pc.DEFAULT_BADGE_POSITION
    assert len(pc.DEFAULT_BADGE_TEXT) <= pc.BADGE_TEXT_MAX
    with pytest.raises(ConfigError, match="must not be empty"):
        Badge("   ")
    with pytest.raises(ConfigError, match="at most 40 characters, got 41"):
        Badge("x" * 41)
    with pytest.raises(ConfigError, match=r"printable ASCII only .* got 'é' at character 4"):
        Badge("vidé")
    with pytest.raises(ConfigError, match="printable ASCII"):
        Badge("two\nlines")
    with pytest.raises(ConfigError, match="position must be one of top-right, top-left, bottom-right, bottom-left"):
        Badge(position="middle")  # type: ignore[arg-type]


# --- the front-ends --------------------------------------------------------------------------------------------


def parse(*argv: str) -> object:
    return build_parser().parse_args(list(argv))


def test_cam_and_serve_options_reach_their_configs() -> None:
    cam = ["cam", "-s", "face.png", "--preview"]
    assert swap_options(parse(*cam)).badge is None  # off by default
    assert swap_options(parse(*cam, "--badge")).badge == Badge()
    assert swap_options(parse(*cam, "--badge-position", "bottom-left")).badge == Badge(position="bottom-left")
    assert live_defaults(parse("serve")).pipeline_config().badge is None
    assert live_defaults(parse("serve", "--badge")).pipeline_config().badge == Badge()
    settings = live_defaults(parse("serve", "--badge-text", " Parody ", "--badge-position", "top-left"))
    assert (settings.badge, settings.badge_text, settings.badge_position) == (True, "Parody", "top-left")
    assert settings.pipeline_config().badge == Badge("Parody", "top-left")


@pytest.mark.parametrize("command", ["swap", "cam", "serve"])
def test_a_bad_badge_option_is_a_usage_error(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = {"swap": ["-i", "in.mp4", "-o", "out.mp4"], "cam": ["--preview"], "serve": []}[command]
    for bad, words in ((["--badge-text", "árvíztűrő"], "printable ASCII"), (["--badge-position", "middle"], "choice")):
        with pytest.raises(SystemExit) as e:
            main([command, *base, *bad])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert words in err, err
        assert "Traceback" not in err


def test_file_mode_draws_the_badge_the_command_line_asks_for(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mp4", acodec=None)
    plain, marked = tmp_path / "plain.mp4", tmp_path / "marked.mp4"
    base = ["swap", "-i", str(clip), "--engine", "anonymize", "-q"]
    assert main([*base, "-o", str(plain)]) == 0
    assert main([*base, "-o", str(marked), "--badge-text", "TEST CLIP", "--badge-position", "bottom-left"]) == 0
    a, b = probe(plain).frames, probe(marked).frames
    assert len(a) == len(b) > 0
    h, w = a[0].shape[:2]
    for x, y in zip(a, b, strict=True):
        grey_a, grey_b = x.astype(int).mean(-1), y.astype(int).mean(-1)
        corner = (slice(int(0.85 * h), h), slice(0, int(0.4 * w)))
        elsewhere = (slice(0, int(0.5 * h)), slice(int(0.5 * w), w))
        assert (grey_b[corner] < grey_a[corner] - 30).mean() > 0.2  # the dark box
        assert np.abs(grey_b[elsewhere] - grey_a[elsewhere]).mean() < 2.0  # the far corner: coding noise only


# --- live settings ---------------------------------------------------------------------------------------------


def test_live_settings_take_the_badge_and_refuse_bad_values() -> None:
    assert LiveSettings().badge is False
    assert LiveSettings().pipeline_config().badge is None
    on = LiveSettings().updated({"badge": True, "badge_text": " Satire ", "badge_position": "bottom-right"})
    assert on.to_json()["badge_text"] == "Satire"
    assert on.pipeline_config().badge == Badge("Satire", "bottom-right")
    assert SETTING_LIMITS["badge_position"] == list(pc.BADGE_POSITIONS)
    assert SETTING_LIMITS["badge_text"] == {"max_length": pc.BADGE_TEXT_MAX}
    for changes, words in (
        ({"badge": "yes"}, "badge must be true or false"),
        ({"badge_position": "centre"}, "badge_position must be one of top-right, top-left"),
        ({"badge_text": ""}, "badge_text: the badge text must not be empty"),
        ({"badge_text": 7}, "badge_text: the badge text must be a string"),
        ({"badge_text": "ü"}, "printable ASCII"),
    ):
        with pytest.raises(SettingsError, match=words):
            LiveSettings().updated(changes)


async def test_the_server_refuses_a_bad_badge_setting_with_its_reason(detector: MTCNN) -> None:
    async with live_server(identity_services(detector)) as live:
        status, info = await live.json("GET", "/api/info")
        assert status == 200
        assert info["limits"]["badge_position"] == list(pc.BADGE_POSITIONS)
        assert info["settings"]["badge"] is False
        for body, words in (
            ({"badge_position": "middle"}, "badge_position must be one of"),
            ({"badge_text": "x" * 41}, "at most 40 characters"),
            ({"badge_text": "→ fake"}, "printable ASCII"),
        ):
            reply = await live.call("PUT", "/api/settings", json=body)
            assert reply.status == 422, (body, reply.status)
            assert words in reply.error
        status, settings = await live.json("GET", "/api/settings")
        assert settings["badge_text"] == pc.DEFAULT_BADGE_TEXT  # nothing changed
        status, settings = await live.json("PUT", "/api/settings", json={"badge": True, "badge_text": "Parody"})
        assert status == 200
        assert (settings["badge"], settings["badge_text"]) == (True, "Parody")


def test_a_live_session_draws_the_badge_once_switched_on(detector: MTCNN, scene: np.ndarray) -> None:
    services: LiveServices = identity_services(detector)
    manager = SessionManager(services, 1)
    session = manager.create("offer", LiveSettings(detect_every=1))
    assert session.pipeline is not None
    frame = Frame(packed_yuv(scene), "yuv420p")  # what the transport hands a session
    try:
        before = session.pipeline.process(frame, 0.0).frame.data
        session.settings = session.settings.updated({"badge": True, "badge_position": "bottom-left"})
        after = session.pipeline.process(frame, 0.0).frame.data
        for changed in changed_masks(before, after, "yuv420p"):
            assert_in_corner(changed, "bottom-left")
        session.settings = session.settings.updated({"badge": False})
        assert np.array_equal(session.pipeline.process(frame, 0.0).frame.data, before)
    finally:
        session.pipeline.close()
