from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engines.arcface import ArcFace
from engines.detect import Detections
from engines.errors import ImageError, NoFaceError
from engines.facedancer import FaceDancer, FaceDancerConfig
from engines.mtcnn import MTCNN
from realtime.identity import cache as identity_cache
from realtime.identity.cache import IdentityCache, decode_image, image_size
from realtime.identity.source import IdentityBuilder, PhotoInput
from tests import faces

ARC_SHA = "a" * 64
MAP_KEY = "f" * 64


class CountingDetector:
    """The real MTCNN, counting how often it runs (a cache hit must not run it)."""

    def __init__(self, inner: MTCNN) -> None:
        self.inner = inner
        self.device = inner.device
        self.calls = 0

    def __call__(self, image: torch.Tensor) -> Detections:
        self.calls += 1
        return self.inner(image)


@pytest.fixture(scope="module")
def mtcnn() -> MTCNN:
    return MTCNN()


@pytest.fixture
def detector(mtcnn: MTCNN) -> CountingDetector:
    return CountingDetector(mtcnn)


@pytest.fixture(scope="module")
def arcface() -> ArcFace:
    torch.manual_seed(0)
    return ArcFace().eval()


@pytest.fixture(scope="module")
def facedancer() -> FaceDancer:
    torch.manual_seed(1)
    return FaceDancer(FaceDancerConfig(widths=(4, 8, 8, 16, 16, 16, 16), mapping_width=16)).eval()


def encode(rgb: np.ndarray, ext: str = ".png", params: list[int] | None = None) -> bytes:
    image = rgb[:, :, ::-1] if rgb.ndim == 3 and rgb.shape[2] == 3 else rgb
    if rgb.ndim == 3 and rgb.shape[2] == 4:
        image = cv2.cvtColor(rgb, cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(image), params or [])
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def astronaut_png() -> bytes:
    return encode(faces.astronaut())


def entries(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.safetensors")) if directory.exists() else []


def all_files(directory: Path) -> list[Path]:
    return sorted(directory.iterdir()) if directory.exists() else []


# --- decoding -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ext", "params"),
    [(".png", []), (".jpg", []), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 90]), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101])],
    ids=["png", "jpeg", "webp-lossy", "webp-lossless"],
)
def test_header_size_and_decode(ext: str, params: list[int]) -> None:
    rgb = faces.astronaut()[:300, :400]
    data = encode(rgb, ext, params)
    assert image_size(data) == (400, 300)
    out = decode_image(data)
    assert out.shape == (300, 400, 3)
    assert out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).mean() < 8  # RGB order kept (a BGR mix-up would be far off)


def test_bmp_header() -> None:
    data = encode(faces.astronaut()[:50, :70], ".bmp")
    assert image_size(data) == (70, 50)


def test_grayscale_rgba_and_16_bit_become_8_bit_rgb() -> None:
    rgb = faces.astronaut()
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    out = decode_image(encode(gray))
    assert out.shape == (512, 512, 3)
    assert np.array_equal(out[..., 0], gray)
    assert np.array_equal(out[..., 2], gray)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    assert np.array_equal(decode_image(encode(rgba)), rgb)
    deep = rgb.astype(np.uint16) * 257
    out16 = decode_image(encode(deep))
    assert out16.dtype == np.uint8
    assert np.array_equal(out16, rgb)


def test_non_image_and_corrupt_data() -> None:
    with pytest.raises(ImageError, match="not a supported image"):
        decode_image(b"hello, this is a text file, not a photo")
    png = encode(faces.astronaut())
    with pytest.raises(ImageError, match="could not be decoded"):
        decode_image(png[:200])  # valid header, truncated data
    with pytest.raises(ImageError, match="corrupt JPEG"):
        decode_image(b"\xff\xd8\xff\xda\x00\x02")


def _refuse_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: object, **__: object) -> None:
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(identity_cache.cv2, "imdecode", boom)


def test_over_20_mb_refused_before_decoding(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _refuse_decoding(monkeypatch)
    data = encode(faces.astronaut()) + b"\0" * (20 * 1000 * 1000)
    with pytest.raises(ImageError, match="limit is 20 MB"):
        decode_image(data)
    cache = IdentityCache(tmp_path, ARC_SHA, MAP_KEY)
    with pytest.raises(ImageError, match="limit is 20 MB"):
        cache.get_or_compute(data, None, None)  # type: ignore[arg-type]  # never reaches the models
    assert all_files(tmp_path) == []


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def huge_png(width: int = 10_000, height: int = 10_000) -> bytes:
    """A real, valid all-black grayscale PNG: 100 megapixels in ~100 kB, compressed row by row (low memory)."""
    z = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + pixels
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def test_decompression_bomb_refused_from_header(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bomb = huge_png()
    assert len(bomb) < 1_000_000
    _refuse_decoding(monkeypatch)
    with pytest.raises(ImageError, match=r"10000x10000 \(100 megapixels\); the limit is 40 megapixels"):
        decode_image(bomb)
    cache = IdentityCache(tmp_path, ARC_SHA, MAP_KEY)
    with pytest.raises(ImageError, match="megapixels"):
        cache.get_or_compute(bomb, None, None)  # type: ignore[arg-type]
    assert all_files(tmp_path) == []


@pytest.mark.parametrize(
    "header",
    [
        b"\xff\xd8\xff\xe0\x00\x04ab\xff\xc2\x00\x11\x08" + struct.pack(">HH", 9000, 9000) + b"\x03" + b"\0" * 9,
        b"RIFF\0\0\0\0WEBPVP8X\x0a\0\0\0\0\0\0\0" + (9000 - 1).to_bytes(3, "little") * 2,
        b"BM" + b"\0" * 12 + struct.pack("<Iii", 40, 9000, -9000) + b"\0" * 16,
    ],
    ids=["jpeg", "webp", "bmp"],
)
def test_huge_dimensions_in_other_headers(header: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    _refuse_decoding(monkeypatch)
    with pytest.raises(ImageError, match=r"9000x9000 .* the limit is 40 megapixels"):
        decode_image(header)


# --- cache ----------------------------------------------------------------------------------------------------


def test_miss_then_hit_then_new_instance(
    tmp_path: Path, detector: CountingDetector, arcface: ArcFace, facedancer: FaceDancer, astronaut_png: bytes
) -> None:
    cache = IdentityCache(tmp_path, ARC_SHA, MAP_KEY)
    first = cache.get_or_compute(astronaut_png, detector, arcface, facedancer)
    assert detector.calls == 1
    assert first.z_id.shape == (512,)
    assert first.w is not None
    assert first.w.shape == (16,)
    assert first.mapping_key == MAP_KEY
    assert first.faces_found == 1
    assert first.note is None
    np.testing.assert_allclose(first.box, faces.ASTRONAUT_BOX, atol=3)
    np.testing.assert_allclose(first.landmarks, faces.ASTRONAUT_LANDMARKS, atol=3)
    with torch.inference_mode():
        torch.testing.assert_close(first.w, facedancer.map_identity(first.z_id[None])[0])
    assert [p.name for p in entries(tmp_path)] == [f"{first.key}.safetensors"]

    again = cache.get_or_compute(astronaut_png, detector, arcface, facedancer)
    assert detector.calls == 1  # a hit runs neither the detector nor ArcFace
    assert torch.equal(again.z_id, first.z_id)
    assert torch.equal(again.w, first.w)
    assert np.array_equal(again.box, first.box)
    assert np.array_equal(again.landmarks, first.landmarks)
    assert again.created == first.created

    reopened = IdentityCache(tmp_path, ARC_SHA, MAP_KEY)
    loaded = reopened.get(reopened.key_for(astronaut_png))
    assert loaded is not None
    assert torch.equal(loaded.z_id, first.z_id)
    third = reopened.get_or_compute(astronaut_png, detector, arcface, facedancer)
    assert detector.calls == 1
    assert torch.equal(third.w, first.w)

    assert reopened.clear() == 1
    assert entries(tmp_path) == []
    assert reopened.get(first.key) is None


def test_other_arcface_never_reuses_an_entry(
    tmp_path: Path, detector: CountingDetector, arcface: ArcFace, astronaut_png: bytes
) -> None:
    a = IdentityCache(tmp_path, ARC_SHA, MAP_KEY).get_or_compute(astronaut_png, detector, arcface)
    other = IdentityCache(tmp_path, "b" * 64, MAP_KEY)
    assert other.get(a.key) is None  # the file is there but was made by another ArcFace
    b = other.get_or_compute(astronaut_png, detector, arcface)
    assert detector.calls == 2
    assert b.key != a.key
    assert len(entries(tmp_path)) == 2


def test_other_mapping_key_recomputes_w_only(
    tmp_path: Path, detector: CountingDetector, arcface: ArcFace, facedancer: FaceDancer, astronaut_png: bytes
) -> None:
    first = IdentityCache(tmp_path, ARC_SHA, "old").get_or_compute(astronaut_png, detector, arcface)
    assert first.w is None
    assert first.mapping_key is None
    cache = IdentityCache(tmp_path, ARC_SHA, MAP_KEY)
    entry = cache.get_or_compute(astronaut_png, detector, arcface, facedancer)
    assert detector.calls == 1
    assert entry.w is not None
    assert entry.mapping_key == MAP_KEY
    stored = cache.get(entry.key)
    assert stored is not None
    assert stored.mapping_key == MAP_KEY
    assert torch.equal(stored.w, entry.w)


def test_no_face_and_non_image_store_nothing(tmp_path: Path, detector: CountingDetector, arcface: ArcFace) -> None:
    cache = IdentityCache(tmp_path, ARC_SHA, MAP_KEY)
    with pytest.raises(NoFaceError, match="no face found"):
        cache.get_or_compute(encode(np.full((256, 256, 3), 128, np.uint8)), detector, arcface)
    assert detector.calls == 1
    with pytest.raises(ImageError):
        cache.get_or_compute(b"GIF89a not really", detector, arcface)
    with pytest.raises(ImageError):
        cache.get_or_compute(b"\x89PNG\r\n\x1a\n" + b"\0" * 100, detector, arcface)
    assert detector.calls == 1
    assert all_files(tmp_path) == []


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong-key"])
def test_corrupt_entry_is_recomputed(
    damage: str, tmp_path: Path, detector: CountingDetector, arcface: ArcFace, astronaut_png: bytes
) -> None:
    cache = IdentityCache(tmp_path, ARC_SHA, MAP_KEY)
    good = cache.get_or_compute(astronaut_png, detector, arcface)
    path = cache.path(good.key)
    raw = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"\x00\xff" * 50)
    elif damage == "truncated":
        path.write_bytes(raw[: len(raw) - 100])
    else:  # a valid file copied under another photo's name
        path.rename(cache.path("0" * 64))
        path.write_bytes(raw)
        assert cache.get("0" * 64) is None
    if damage != "wrong-key":
        assert cache.get(good.key) is None
    else:
        assert cache.get(good.key) is not None
        path.write_bytes(raw.replace(good.image_sha256.encode(), b"1" * 64))
        assert cache.get(good.key) is None
    redone = cache.get_or_compute(astronaut_png, detector, arcface)
    assert detector.calls == 2
    assert torch.equal(redone.z_id, good.z_id)
    assert cache.get(good.key) is not None  # rewritten whole
    assert not [p for p in all_files(tmp_path) if p.name.startswith(".tmp-")]


def test_several_faces_use_the_largest_with_a_note(
    tmp_path: Path, detector: CountingDetector, arcface: ArcFace
) -> None:
    frame, placed = faces.compose_faces(640, 480)
    entry = IdentityCache(tmp_path, ARC_SHA, MAP_KEY).get_or_compute(encode(frame, ".jpg"), detector, arcface)
    assert entry.faces_found >= 3
    assert entry.note == f"{entry.faces_found} faces found; using the largest"
    largest = max(placed, key=lambda f: f.height)
    np.testing.assert_allclose(entry.landmarks, largest.landmarks, atol=0.08 * largest.height)


@pytest.mark.parametrize("kind", ["gray", "rgba"])
def test_grayscale_and_rgba_sources(kind: str, tmp_path: Path, detector: CountingDetector, arcface: ArcFace) -> None:
    rgb = faces.astronaut()
    image = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if kind == "gray" else np.dstack([rgb, np.full((512, 512), 200)])
    entry = IdentityCache(tmp_path, ARC_SHA, MAP_KEY).get_or_compute(encode(image.astype(np.uint8)), detector, arcface)
    np.testing.assert_allclose(entry.landmarks, faces.ASTRONAUT_LANDMARKS, atol=4)
    assert torch.isfinite(entry.z_id).all()
    assert len(entries(tmp_path)) == 1


def test_mixing_caches_each_source(
    tmp_path: Path, detector: CountingDetector, arcface: ArcFace, facedancer: FaceDancer, astronaut_png: bytes
) -> None:
    mirrored = encode(np.ascontiguousarray(faces.astronaut()[:, ::-1]))
    cache = IdentityCache(tmp_path, ARC_SHA, MAP_KEY)
    builder = IdentityBuilder(detector, arcface, facedancer, cache)
    photos = [PhotoInput(astronaut_png, 1.0), PhotoInput(mirrored, 3.0)]
    mixed = builder.build(photos)
    assert detector.calls == 2
    assert len(entries(tmp_path)) == 2
    a, b = sorted(mixed.photos, key=lambda p: p.weight)  # weights normalised: 1/4 and 3/4
    assert (a.weight, b.weight) == (0.25, 0.75)
    assert not torch.equal(a.z_id, b.z_id)
    torch.testing.assert_close(mixed.z_id, (a.z_id + 3 * b.z_id) / 4)
    with torch.inference_mode():
        torch.testing.assert_close(mixed.w, facedancer.map_identity(mixed.z_id[None])[0])
    again = builder.build(photos)
    assert detector.calls == 2
    assert torch.equal(again.z_id, mixed.z_id)
