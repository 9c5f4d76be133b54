"""Identity mixing end to end: one identity from several weighted photos, built by one builder for the CLI and the
server. Two identical photos equal one, weight 0 drops a photo, order does not matter; bad weights are a clear
error that changes nothing; /api/info lists the photos of the current identity."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest
import torch

from engines.arcface import ArcFace
from engines.errors import ConfigError, ImageError, NoFaceError
from engines.facedancer import FaceDancer, FaceDancerConfig
from engines.mtcnn import MTCNN
from realtime.identity.cache import map_identity
from realtime.identity.source import MAX_PHOTOS, IdentityBuilder, PhotoInput, check_weights, parse_photo_arg
from realtime.live.session import LiveServices
from tests import faces
from tests.realtime.live_fixtures import identity_services, live_server


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN("cpu")


@pytest.fixture(scope="module")
def arcface() -> ArcFace:
    torch.manual_seed(0)
    return ArcFace().eval()


@pytest.fixture(scope="module")
def facedancer() -> FaceDancer:
    torch.manual_seed(1)
    return FaceDancer(FaceDancerConfig(widths=(4, 8, 8, 16, 16, 16, 16), mapping_width=16)).eval()


def png(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    assert ok
    return data.tobytes()


@pytest.fixture(scope="module")
def photos() -> tuple[bytes, bytes]:
    """Two different photos of a real face: the astronaut and her mirror image."""
    rgb = faces.astronaut()
    return png(rgb), png(np.ascontiguousarray(rgb[:, ::-1]))


@pytest.fixture(scope="module")
def builder(detector: MTCNN, arcface: ArcFace, facedancer: FaceDancer) -> IdentityBuilder:
    return IdentityBuilder(detector, arcface, facedancer)


def test_photo_arguments() -> None:
    assert parse_photo_arg("me.png") == (Path("me.png"), 1.0)
    assert parse_photo_arg("me.png:2.5") == (Path("me.png"), 2.5)
    assert parse_photo_arg("dir:with:colons/me.png:0") == (Path("dir:with:colons/me.png"), 0.0)
    assert parse_photo_arg("C:/photos/me.png") == (Path("C:/photos/me.png"), 1.0)  # no number after the colon
    for bad in ("me.png:-1", "me.png:nan", "me.png:inf"):
        with pytest.raises(ConfigError, match="weight"):
            parse_photo_arg(bad)


def test_weights_are_normalised_and_checked() -> None:
    assert check_weights([1, 3]) == [0.25, 0.75]
    assert check_weights([0, 2]) == [0.0, 1.0]
    for bad in ([0, 0], [], [-1, 2], [float("nan")], [True]):
        with pytest.raises(ConfigError):
            check_weights(bad)


def test_two_identical_photos_equal_one(builder: IdentityBuilder, photos: tuple[bytes, bytes]) -> None:
    one = builder.build([PhotoInput(photos[0])])
    twice = builder.build([PhotoInput(photos[0], 1.0), PhotoInput(photos[0], 2.0)])
    assert twice.key == one.key
    assert len(twice.photos) == 1
    assert twice.photos[0].weight == 1.0
    torch.testing.assert_close(twice.z_id, one.z_id)
    torch.testing.assert_close(twice.w, one.w)


def test_weight_zero_drops_a_photo(builder: IdentityBuilder, photos: tuple[bytes, bytes]) -> None:
    alone = builder.build([PhotoInput(photos[1])])
    dropped = builder.build([PhotoInput(photos[0], 0.0), PhotoInput(photos[1], 5.0)])
    assert dropped.key == alone.key
    assert [p.key for p in dropped.photos] == [alone.photos[0].key]
    torch.testing.assert_close(dropped.z_id, alone.z_id)


def test_order_does_not_matter_and_the_mix_is_weighted(
    builder: IdentityBuilder, facedancer: FaceDancer, photos: tuple[bytes, bytes]
) -> None:
    a, b = (builder.build([PhotoInput(p)]) for p in photos)
    ab = builder.build([PhotoInput(photos[0], 1.0), PhotoInput(photos[1], 3.0)])
    ba = builder.build([PhotoInput(photos[1], 3.0), PhotoInput(photos[0], 1.0)])
    assert ab.key == ba.key
    assert ab.key not in (a.key, b.key)
    assert torch.equal(ab.z_id, ba.z_id)
    assert torch.equal(ab.w, ba.w)
    torch.testing.assert_close(ab.z_id, 0.25 * a.z_id + 0.75 * b.z_id)
    torch.testing.assert_close(ab.w, map_identity(facedancer, ab.z_id))  # w from the mixed z_id, mapped once
    assert sorted(p.weight for p in ab.photos) == [0.25, 0.75]


def test_a_bad_photo_is_named(builder: IdentityBuilder, photos: tuple[bytes, bytes]) -> None:
    blank = png(np.full((200, 200, 3), 128, np.uint8))
    with pytest.raises(NoFaceError, match="source photo 2"):
        builder.build([PhotoInput(photos[0], 1.0, "source photo 1"), PhotoInput(blank, 1.0, "source photo 2")])
    with pytest.raises(ImageError, match="source photo 2: not a supported image"):
        builder.build([PhotoInput(photos[0], 1.0, "source photo 1"), PhotoInput(b"text", 0.0, "source photo 2")])
    with pytest.raises(ConfigError, match=f"at most {MAX_PHOTOS}"):
        builder.build([PhotoInput(photos[0])] * (MAX_PHOTOS + 1))


def form(*fields: tuple[str, bytes | str]) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for i, (name, value) in enumerate(fields):
        if name == "image":
            data.add_field("image", value, filename=f"photo{i}.png", content_type="image/png")
        else:
            data.add_field(name, value)
    return data


@pytest.mark.network
async def test_the_server_takes_several_weighted_photos(
    detector: MTCNN, arcface: ArcFace, facedancer: FaceDancer, photos: tuple[bytes, bytes]
) -> None:
    services = LiveServices(torch.device("cpu"), detector, "facedancer", facedancer, arcface)
    async with live_server(services) as live:
        reply = await live.call("POST", "/api/source", data=form(("image", photos[0]), ("image", photos[1])))
        assert reply.status == 200, reply.body
        status, info = await live.json("GET", "/api/info")
        listed = info["source"]["photos"]
        assert [p["weight"] for p in listed] == [0.5, 0.5]
        assert all(p["faces_found"] == 1 for p in listed)

        fields = (("image", photos[0]), ("weight", "1"), ("image", photos[1]), ("weight", "3"))
        reply = await live.call("POST", "/api/source", data=form(*fields))
        assert reply.status == 200, reply.body
        mixed = services.source
        status, info = await live.json("GET", "/api/info")
        assert status == 200
        assert info["source"]["key"] == mixed.key
        assert sorted(p["weight"] for p in info["source"]["photos"]) == [0.25, 0.75]
        assert {p["key"] for p in info["source"]["photos"]} == {p.key for p in mixed.photos}
        torch.testing.assert_close(mixed.w, map_identity(facedancer, mixed.z_id))

        bad = [
            (("image", photos[0]), ("weight", "-1")),
            (("image", photos[0]), ("weight", "heavy")),
            (("image", photos[0]), ("weight", "0"), ("image", photos[1]), ("weight", "0")),
            (("weight", "1"), ("image", photos[0])),
            (("image", photos[0]), ("weight", "1"), ("weight", "2")),
            tuple(("image", photos[0]) for _ in range(MAX_PHOTOS + 1)),
        ]
        for fields in bad:
            reply = await live.call("POST", "/api/source", data=form(*fields))
            assert reply.status == 422, (fields[:2], reply.status, reply.body)
            assert "weight" in reply.error or "photos" in reply.error, reply.error
            assert services.source is mixed  # nothing changed


@pytest.mark.network
async def test_a_one_photo_upload_answers_as_before(detector: MTCNN, photos: tuple[bytes, bytes]) -> None:
    async with live_server(identity_services(detector)) as live:
        reply = await live.call("POST", "/api/source", data=form(("image", photos[0])))
        assert reply.status == 200, reply.body
        body = json.loads(reply.body)
        assert body["width"] == 512
        assert len(body["face"]["box"]) == 4
        assert len(body["photos"]) == 1


def test_swap_mixes_weighted_sources_from_the_command_line(tmp_path: Path, photos: tuple[bytes, bytes]) -> None:
    from realtime.cli.main import main

    a, b, target = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "target.png"
    a.write_bytes(photos[0])
    b.write_bytes(photos[1])
    target.write_bytes(photos[0])
    out = tmp_path / "out.png"
    args = ["swap", "--engine", "identity", "-s", f"{a}:1", "-s", f"{b}:3", "-i", str(target), "-o", str(out)]
    assert main(args) == 0
    assert cv2.imread(str(out)) is not None
    with pytest.raises(SystemExit) as exit_:
        main(["swap", "--engine", "identity", "-s", f"{a}:-2", "-i", str(target), "-o", str(tmp_path / "x.png")])
    assert exit_.value.code == 2
