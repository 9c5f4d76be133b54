"""File mode on real clips made here with PyAV from real face frames: timing, audio, images, errors, Ctrl-C."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engines.arcface import ArcFace, ArcFaceConfig, HeadLayer
from engines.command import dancecam
from engines.convert.cache import FORMAT
from engines.errors import ConfigError, ImageError, ModelMissingError, NoFaceError
from engines.facedancer import FaceDancer, FaceDancerConfig
from engines.mtcnn import MTCNN
from realtime.files.swap import MediaError, SwapInterrupted, SwapOptions, swap_file
from realtime.pipeline.frame import FaceDancerSwap, FramePipeline, IdentitySwap, PipelineConfig
from tests import faces

W, H, FPS, FRAMES = 320, 240, 25, 12
IDENTITY = SwapOptions(engine="identity", detect_every=4)

# --- clips ----------------------------------------------------------------------------------------------------


def face_frames(n: int = FRAMES, width: int = W, height: int = H) -> list[np.ndarray]:
    """One real face (the astronaut) moving 2 px right per frame over a textured background."""
    frame, _ = faces.compose_faces(width, height, (faces.Placement(0.5, 0.5, 0.6),))
    return [np.roll(frame, 2 * i, axis=1) for i in range(n)]


def make_clip(
    path: Path,
    vcodec: str | None = "libx264",
    acodec: str | None = "aac",
    n: int = FRAMES,
    size: tuple[int, int] = (W, H),
    rate: int = 44100,
    layout: str = "stereo",
    rotation: int = 0,
) -> Path:
    """A short clip: `n` face frames at 25 fps and a 440 Hz sine as long as the video. With `rotation` the frames
    are stored turned the other way and the stream says to turn them by `rotation` degrees for display (phones)."""
    turns = rotation // 90
    fmt = {".mp4": "mp4", ".mov": "mov", ".webm": "webm", ".m4a": "mp4"}[path.suffix]
    with av.open(str(path), "w", format=fmt) as out:
        vs = out.add_stream(vcodec, rate=FPS) if vcodec else None
        if vs is not None:
            vs.width, vs.height = (size[1], size[0]) if turns % 2 else size
            vs.pix_fmt = "yuv420p"
            if rotation:
                vs.set_display_rotation(rotation)
        aus = out.add_stream(acodec, rate=rate, layout=layout) if acodec else None
        if vs is not None:
            for i, img in enumerate(face_frames(n, *size)):
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(img, -turns)), format="rgb24")
                vf.pts, vf.time_base = i, Fraction(1, FPS)
                out.mux(vs.encode(vf))
            out.mux(vs.encode(None))
        if aus is not None:
            t = np.arange(rate * n // FPS) / rate
            channels = 1 if layout == "mono" else 2
            data = np.tile((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), (channels, 1))
            af = av.AudioFrame.from_ndarray(data, format="fltp", layout=layout)
            af.sample_rate, af.pts, af.time_base = rate, 0, Fraction(1, rate)
            out.mux(aus.encode(af))
            out.mux(aus.encode(None))
    return path


@dataclass
class Probe:
    frames: list[np.ndarray]
    pts: list[float]  # seconds
    fps: Fraction
    size: tuple[int, int]
    vcodec: str
    acodec: str | None = None
    rate: int = 0
    channels: int = 0
    audio_s: float = 0.0  # decoded samples / rate

    @property
    def duration(self) -> float:
        return self.pts[-1] + 1 / float(self.fps)


def probe(path: Path) -> Probe:
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        frames, pts = [], []
        for f in c.decode(vs):
            frames.append(f.to_ndarray(format="rgb24"))
            pts.append(float(f.pts * f.time_base))
        p = Probe(frames, pts, vs.average_rate, (vs.width, vs.height), vs.codec_context.name)
    with av.open(str(path)) as c:
        if c.streams.audio:
            a = c.streams.audio[0]
            p.acodec, p.rate, p.channels = a.codec_context.name, a.codec_context.sample_rate, a.codec_context.channels
            p.audio_s = sum(f.samples for f in c.decode(a)) / p.rate
    return p


def leftovers(folder: Path) -> list[str]:
    """Temporary files a swap may have left behind."""
    return sorted(p.name for p in folder.iterdir() if ".part" in p.name)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("media")
    cv2.imwrite(str(d / "source.jpg"), faces.astronaut()[:, :, ::-1])
    cv2.imwrite(str(d / "photo.png"), face_frames(1, 480, 360)[0][:, :, ::-1])
    make_clip(d / "clip.mp4")
    make_clip(d / "clip.webm", "libvpx-vp9", "libopus", rate=48000, layout="mono")
    make_clip(d / "odd.webm", "libvpx-vp9", None, n=4, size=(321, 241))
    make_clip(d / "portrait.mp4", n=4, rotation=90)
    make_clip(d / "audio_only.mp4", None, "aac")
    (d / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    cv2.imwrite(str(d / "blank.png"), np.full((200, 200, 3), 127, np.uint8))
    return d


@pytest.fixture(autouse=True)
def model_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("DANCECAM_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN()


def identity_pipeline(detector: MTCNN) -> FramePipeline:
    return FramePipeline(detector, IdentitySwap(), PipelineConfig(detect_every=4))


# --- video ----------------------------------------------------------------------------------------------------


def test_identity_mp4_keeps_frames_timing_audio_and_faces(media: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    calls: list[tuple[int, int | None]] = []
    report = swap_file(media / "source.jpg", media / "clip.mp4", out, IDENTITY, lambda d, t: calls.append((d, t)))
    assert report.frames == FRAMES
    assert report.frames_with_faces == FRAMES  # every frame had its face detected or tracked
    assert report.audio == "copied (aac)"
    assert calls[0] == (0, FRAMES)
    assert calls[-1] == (FRAMES, FRAMES)
    src, dst = probe(media / "clip.mp4"), probe(out)
    assert len(dst.frames) == len(src.frames) == FRAMES
    assert dst.pts == pytest.approx(src.pts, abs=1e-6)
    assert dst.fps == src.fps
    assert abs(dst.duration - src.duration) <= 1 / FPS
    assert (dst.acodec, dst.rate, dst.channels) == (src.acodec, src.rate, src.channels) == ("aac", 44100, 2)
    assert dst.audio_s == pytest.approx(src.audio_s, abs=0.05)
    assert dst.audio_s == pytest.approx(FRAMES / FPS, abs=0.05)
    # the identity engine pastes each face back onto itself: only re-encoding noise remains, in the face too
    face = faces.compose_faces(W, H, (faces.Placement(0.5, 0.5, 0.6),))[1][0]
    x0, y0, x1, y1 = face.box.round().astype(int).tolist()
    for i, (a, b) in enumerate(zip(src.frames, dst.frames, strict=True)):
        diff = np.abs(a.astype(np.float32) - b.astype(np.float32))
        assert diff.mean() < 2.5, i
        region = diff[max(y0, 0) : y1, max(x0 + 2 * i, 0) : x1 + 2 * i]
        assert region.mean() < 3.0, i
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("src", "dst", "audio", "rate", "channels"),
    [
        ("clip.mp4", "out.webm", "transcoded aac → opus", 48000, 2),
        ("clip.webm", "out.webm", "copied (opus)", 48000, 1),
        ("clip.webm", "out.mov", "transcoded opus → aac", 48000, 1),
    ],
)
def test_webm_and_mov(
    media: Path, tmp_path: Path, detector: MTCNN, src: str, dst: str, audio: str, rate: int, channels: int
) -> None:
    out = tmp_path / dst
    report = swap_file(media / "source.jpg", media / src, out, IDENTITY, pipeline=identity_pipeline(detector))
    assert report.audio == audio
    a, b = probe(media / src), probe(out)
    assert b.vcodec == ("vp9" if dst.endswith(".webm") else "h264")
    assert len(b.frames) == FRAMES
    assert b.pts == pytest.approx(a.pts, abs=1e-3)  # webm keeps milliseconds
    assert abs(b.duration - a.duration) <= 1 / FPS
    assert (b.rate, b.channels) == (rate, channels)
    assert b.audio_s == pytest.approx(FRAMES / FPS, abs=0.05)
    assert np.abs(b.frames[-1].astype(np.float32) - a.frames[-1].astype(np.float32)).mean() < 3.0


def test_odd_frame_size_is_padded(media: Path, tmp_path: Path, detector: MTCNN) -> None:
    out = tmp_path / "odd.mp4"
    report = swap_file(media / "source.jpg", media / "odd.webm", out, IDENTITY, pipeline=identity_pipeline(detector))
    assert report.audio is None
    assert any("321x241 padded to 322x242" in n for n in report.notes)
    p = probe(out)
    assert p.size == (322, 242)
    assert len(p.frames) == 4
    assert p.acodec is None


def test_display_rotation_is_applied(media: Path, tmp_path: Path, detector: MTCNN) -> None:
    """A phone clip stored sideways with a display rotation comes out upright, its faces found in every frame."""
    with av.open(str(media / "portrait.mp4")) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (H, W)  # stored sideways
    out = tmp_path / "upright.mp4"
    pipe = identity_pipeline(detector)
    report = swap_file(media / "source.jpg", media / "portrait.mp4", out, IDENTITY, pipeline=pipe)
    assert report.frames_with_faces == 4
    assert any("turned 90°" in n for n in report.notes)
    p = probe(out)
    assert p.size == (W, H)
    for stored, got in zip(probe(media / "portrait.mp4").frames, p.frames, strict=True):
        upright = np.rot90(stored, 1)  # turned counter-clockwise, as the display rotation says
        assert np.abs(upright.astype(np.float32) - got.astype(np.float32)).mean() < 2.5
        assert np.abs(np.rot90(stored, -1).astype(np.float32) - got.astype(np.float32)).mean() > 20


# --- images ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_image_in_image_out(media: Path, tmp_path: Path, ext: str) -> None:
    out = tmp_path / f"out{ext}"
    calls: list[tuple[int, int | None]] = []
    report = swap_file(media / "source.jpg", media / "photo.png", out, IDENTITY, lambda d, t: calls.append((d, t)))
    assert (report.kind, report.frames, report.frames_with_faces, report.size) == ("image", 1, 1, (480, 360))
    assert calls == [(0, 1), (1, 1)]
    got = cv2.imread(str(out))[:, :, ::-1].astype(np.float32)
    want = cv2.imread(str(media / "photo.png"))[:, :, ::-1].astype(np.float32)
    assert got.shape == want.shape
    assert np.abs(got - want).mean() < (0.5 if ext == ".png" else 3.0)
    assert leftovers(tmp_path) == []


def tiny_weights(model_dir: Path) -> None:
    """Random-weight FaceDancer and ArcFace stored as converted caches, as `dancecam models convert` leaves them."""
    torch.manual_seed(0)
    fd = FaceDancer(FaceDancerConfig(widths=(4, 8, 8, 16, 16, 16, 16), mapping_width=16))
    head = (
        HeadLayer("batchnorm", 32, 1e-3),
        HeadLayer("flatten"),
        HeadLayer("dense", 512),
        HeadLayer("batchnorm", 512),
    )
    arc = ArcFace(ArcFaceConfig(blocks=(1, 1, 1, 1), widths=(4, 4, 8, 8), stem_width=8, head=head))
    model_dir.mkdir(parents=True, exist_ok=True)
    for model, name, kind in ((fd, "FaceDancer_config_c_HQ", "facedancer"), (arc, "ArcFace-Res50", "arcface")):
        meta = {
            "format": FORMAT,
            "kind": kind,
            "source": f"{name}.h5",
            "source_sha256": kind[0] * 64,
            "config": json.dumps(model.config.to_dict()),
        }
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(model_dir / f"{name}.safetensors"), metadata=meta)


def test_facedancer_engine_with_converted_weights(media: Path, tmp_path: Path, model_home: Path) -> None:
    tiny_weights(model_home)
    opts = SwapOptions(engine="facedancer")
    out = tmp_path / "fd.png"
    report = swap_file(media / "source.jpg", media / "photo.png", out, opts)
    assert report.frames_with_faces == 1
    got = cv2.imread(str(out)).astype(np.float32)
    want = cv2.imread(str(media / "photo.png")).astype(np.float32)
    diff = np.abs(got - want).max(axis=2)
    assert diff.mean() > 1.0  # random weights replace the face ...
    assert np.median(diff) == 0  # ... and leave the rest of the photo alone
    entries = list((model_home / "identities").glob("*.safetensors"))
    assert len(entries) == 1  # the source's embedding is cached (with w for these FaceDancer weights)
    swap_file(media / "source.jpg", media / "photo.png", tmp_path / "again.png", opts)
    assert list((model_home / "identities").glob("*.safetensors")) == entries


def test_facedancer_swap_through_video(media: Path, tmp_path: Path, detector: MTCNN) -> None:
    torch.manual_seed(0)
    model = FaceDancer(FaceDancerConfig(widths=(4, 8, 8, 16, 16, 16, 16), mapping_width=16))
    pipe = FramePipeline(detector, FaceDancerSwap(model, torch.randn(512)), PipelineConfig(detect_every=6))
    out = tmp_path / "fd.mp4"
    report = swap_file(media / "source.jpg", media / "clip.mp4", out, IDENTITY, pipeline=pipe)
    assert (report.frames, report.frames_with_faces, report.fail_closed) == (FRAMES, FRAMES, 0)
    a, b = probe(media / "clip.mp4"), probe(out)
    assert len(b.frames) == FRAMES
    assert np.abs(a.frames[0].astype(np.float32) - b.frames[0].astype(np.float32)).mean() > 2.0


# --- model files ----------------------------------------------------------------------------------------------


def test_facedancer_without_weights_names_the_commands(media: Path, tmp_path: Path, model_home: Path) -> None:
    out = tmp_path / "out.mp4"
    with pytest.raises(ModelMissingError) as e:
        swap_file(media / "source.jpg", media / "clip.mp4", out, SwapOptions(engine="facedancer"))
    msg = str(e.value)
    assert f"`{dancecam('models', 'download', 'facedancer_c_hq', 'arcface_r50')}`" in msg
    assert f"`{dancecam('models', 'convert', 'facedancer_c_hq', 'arcface_r50')}`" in msg
    assert "HF_TOKEN" in msg
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_downloaded_but_not_converted(media: Path, tmp_path: Path, model_home: Path) -> None:
    model_home.mkdir(parents=True)
    (model_home / "FaceDancer_config_c_HQ.h5").write_bytes(b"not converted yet")
    (model_home / "ArcFace-Res50.h5").write_bytes(b"not converted yet")
    with pytest.raises(ModelMissingError) as e:
        swap_file(media / "source.jpg", media / "photo.png", tmp_path / "o.png", SwapOptions(model_dir=model_home))
    msg = str(e.value)
    assert "models download" not in msg
    convert = dancecam("models", "convert", "facedancer_c_hq", "arcface_r50", "--model-dir", str(model_home))
    assert f"`{convert}`" in msg


def test_reference_mode_needs_arcface_even_with_identity(media: Path, tmp_path: Path) -> None:
    opts = SwapOptions(engine="identity", faces="reference", reference=media / "source.jpg")
    with pytest.raises(ModelMissingError, match="models download arcface_r50"):
        swap_file(media / "source.jpg", media / "photo.png", tmp_path / "o.png", opts)
    with pytest.raises(ConfigError, match="--reference"):
        swap_file(media / "source.jpg", media / "photo.png", tmp_path / "o.png", SwapOptions(faces="reference"))


# --- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "input", "output", "error", "words"),
    [
        ("source.jpg", "missing.mp4", "o.mp4", MediaError, "does not exist"),
        ("source.jpg", "clip.mp4", "o.avi", ConfigError, "unsupported type '.avi'"),
        ("source.jpg", "garbage.mp4", "o.mp4", MediaError, "not a readable video"),
        ("source.jpg", "audio_only.mp4", "o.mp4", MediaError, "no video stream"),
        ("source.jpg", "photo.png", "o.mp4", ConfigError, "is a video"),
        ("source.jpg", "clip.mp4", "o.png", ConfigError, "is an image"),
        ("source.jpg", "clip.mp4", "clip.mp4", ConfigError, "must not be the input"),
        ("blank.png", "clip.mp4", "o.mp4", NoFaceError, "no face"),
        ("garbage.mp4", "clip.mp4", "o.mp4", ConfigError, "must be an image"),
        ("missing.jpg", "clip.mp4", "o.mp4", MediaError, "does not exist"),
    ],
)
def test_bad_inputs(
    media: Path, tmp_path: Path, source: str, input: str, output: str, error: type[Exception], words: str
) -> None:
    out = media / output if output == input else tmp_path / output
    before = sorted(p.name for p in media.iterdir())
    with pytest.raises(error, match=words):
        swap_file(media / source, media / input, out, IDENTITY)
    assert sorted(p.name for p in media.iterdir()) == before
    assert list(tmp_path.iterdir()) == []


def test_corrupt_image_input(media: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 100)
    with pytest.raises(ImageError, match=r"bad\.jpg"):
        swap_file(media / "source.jpg", bad, tmp_path / "o.png", IDENTITY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jpg"]


def test_existing_output_is_refused_unless_overwrite(media: Path, tmp_path: Path, detector: MTCNN) -> None:
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    with pytest.raises(ConfigError, match="--overwrite"):
        swap_file(media / "source.jpg", media / "clip.mp4", out, IDENTITY, pipeline=identity_pipeline(detector))
    assert out.read_bytes() == b"precious"
    opts = SwapOptions(engine="identity", detect_every=4, overwrite=True)
    swap_file(media / "source.jpg", media / "clip.mp4", out, opts, pipeline=identity_pipeline(detector))
    assert len(probe(out).frames) == FRAMES
    assert leftovers(tmp_path) == []


def test_failure_mid_video_leaves_nothing(media: Path, tmp_path: Path, detector: MTCNN) -> None:
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")

    def boom(done: int, total: int | None) -> None:
        if done == 3:
            raise RuntimeError("disk on fire")

    opts = SwapOptions(engine="identity", overwrite=True)
    with pytest.raises(RuntimeError):
        swap_file(media / "source.jpg", media / "clip.mp4", out, opts, boom, pipeline=identity_pipeline(detector))
    assert out.read_bytes() == b"precious"
    assert leftovers(tmp_path) == []


# --- Ctrl-C ---------------------------------------------------------------------------------------------------


def interrupt_at(frames: int) -> Callable[[int, int | None], None]:
    def progress(done: int, total: int | None) -> None:
        if done == frames:
            raise KeyboardInterrupt

    return progress


@pytest.mark.parametrize("ext", [".mp4", ".webm"])
def test_ctrl_c_keeps_a_playable_partial_video(media: Path, tmp_path: Path, detector: MTCNN, ext: str) -> None:
    out = tmp_path / f"out{ext}"
    with pytest.raises(SwapInterrupted) as e:
        swap_file(media / "source.jpg", media / "clip.mp4", out, IDENTITY, interrupt_at(5), identity_pipeline(detector))
    assert e.value.saved == out
    assert e.value.frames == 5
    assert "5 of 12 frames" in str(e.value)
    p = probe(out)
    assert len(p.frames) == 5
    assert p.pts == pytest.approx([i / FPS for i in range(5)], abs=1e-3)
    assert p.acodec is not None
    assert leftovers(tmp_path) == []


def test_ctrl_c_before_any_frame_leaves_nothing(media: Path, tmp_path: Path, detector: MTCNN) -> None:
    out = tmp_path / "out.mp4"
    with pytest.raises(SwapInterrupted) as e:
        swap_file(media / "source.jpg", media / "clip.mp4", out, IDENTITY, interrupt_at(0), identity_pipeline(detector))
    assert e.value.saved is None
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_never_replaces_an_existing_output(media: Path, tmp_path: Path, detector: MTCNN) -> None:
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    opts = SwapOptions(engine="identity", detect_every=4, overwrite=True)
    with pytest.raises(SwapInterrupted) as e:
        swap_file(media / "source.jpg", media / "clip.mp4", out, opts, interrupt_at(3), identity_pipeline(detector))
    assert out.read_bytes() == b"precious"
    assert e.value.saved == tmp_path / "out.partial.mp4"
    assert len(probe(e.value.saved).frames) == 3
