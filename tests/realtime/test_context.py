"""The device context: buffers reused per resolution, upload/download round trips, masks cached, devices checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.errors import ConfigError
from realtime.pipeline.context import DeviceContext, resolve_device
from realtime.pipeline.masks import MaskSpec, build_mask


def _devices() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


@pytest.mark.parametrize("device", _devices())
def test_round_trip_and_buffer_reuse(device: str) -> None:
    ctx = DeviceContext(device)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    with ctx.activate():
        ta = ctx.upload(a)
        assert ta.device.type == device
        out_a = ctx.download(ta)
        tb = ctx.upload(b)
        out_b = ctx.download(tb)
    assert np.array_equal(out_a, a)
    assert np.array_equal(out_b, b)
    assert tb.data_ptr() == ta.data_ptr()  # same buffer for the same resolution
    assert ctx.reallocations == 1
    out_a[:] = 0  # the caller owns what download returned: the next frame cannot change it
    assert np.array_equal(out_b, b)


def test_resolution_change_reallocates_once() -> None:
    ctx = DeviceContext("cpu")
    for shape in [(48, 64, 3), (48, 64, 3), (96, 128, 3), (96, 128, 3), (48, 64, 3)]:
        frame = np.zeros(shape, np.uint8)
        assert ctx.download(ctx.upload(frame)).shape == shape
    assert ctx.reallocations == 3


def test_upload_does_not_alias_the_input() -> None:
    ctx = DeviceContext("cpu")
    frame = np.full((8, 8, 3), 7, np.uint8)
    t = ctx.upload(frame)
    t += 1
    assert (frame == 7).all()


@pytest.mark.parametrize("bad", [np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3), np.float32), "frame"])
def test_upload_rejects_what_is_not_an_rgb_frame(bad: object) -> None:
    with pytest.raises(ValueError, match="uint8 RGB frame"):
        DeviceContext("cpu").upload(bad)  # type: ignore[arg-type]


def test_mask_is_built_once_per_size_and_spec() -> None:
    ctx = DeviceContext("cpu")
    m = ctx.mask(256, MaskSpec())
    assert m is ctx.mask(256, MaskSpec())
    assert m is not ctx.mask(256, MaskSpec(kind="ellipse"))
    assert np.array_equal(m.numpy(), build_mask(256))


def test_mask_cache_keeps_only_the_recent_specs() -> None:
    """Live settings change the feather and erosion freely: the cache stays bounded, the newest spec stays."""
    from realtime.pipeline.context import MASK_CACHE

    ctx = DeviceContext("cpu")
    specs = [MaskSpec(feather_px=float(f)) for f in range(1, 2 * MASK_CACHE)]
    for spec in specs:
        ctx.mask(64, spec)
    assert len(ctx._masks) == MASK_CACHE
    newest = ctx.mask(64, specs[-1])
    assert newest is ctx.mask(64, specs[-1])
    assert np.array_equal(newest.numpy(), build_mask(64, specs[-1]))


def test_device_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match=r"not supported|unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no usable CUDA"):
            resolve_device("cuda")
    else:
        with pytest.raises(ConfigError, match="only"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_close_frees_and_the_context_still_works() -> None:
    ctx = DeviceContext("cpu")
    ctx.upload(np.zeros((8, 8, 3), np.uint8))
    ctx.close()
    assert ctx.download(ctx.upload(np.ones((8, 8, 3), np.uint8))).sum() == 192
