"""Blend masks: the official one exactly, the ellipse, feather and erosion."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from engines.errors import ConfigError
from realtime.pipeline.masks import MaskSpec, build_mask


def test_official_mask_matches_the_official_recipe() -> None:
    ref = np.zeros((256, 256))
    ref[77:240, 32:224] = 1
    ref = gaussian_filter(ref, sigma=7)  # what the official code does, with scipy
    mask = build_mask(256)
    assert mask.dtype == np.float32
    assert np.abs(mask - ref).max() < 1e-5


def test_mask_scales_with_the_crop() -> None:
    big, small = build_mask(512), build_mask(128)
    assert big.shape == (512, 512)
    # the same region, at the same relative place
    assert np.abs(big[::4, ::4][:, :] - build_mask(128)).mean() < 0.02
    assert small[100, 64] > 0.9  # inside the face region
    assert small[5, 64] < 1e-3  # the forehead and hair are not blended


def test_ellipse_feather_and_erosion() -> None:
    official = build_mask(256)
    ellipse = build_mask(256, MaskSpec("ellipse"))
    assert ellipse[158, 128] > 0.99
    assert ellipse[80, 35] < official[80, 35]  # the ellipse leaves the rectangle's corners out
    hard = build_mask(256, MaskSpec(feather_px=0))
    assert set(np.unique(hard)) == {0.0, 1.0}
    eroded = build_mask(256, MaskSpec(feather_px=0, erode_px=10))
    assert eroded.sum() < hard.sum()
    assert eroded[87:230, 42:214].min() == 1.0
    assert eroded[80, 128] == 0.0
    soft = build_mask(256, MaskSpec(feather_px=15))
    assert soft[77, 128] < official[77, 128] + 0.05
    assert soft[60, 128] > official[60, 128]  # a wider blur reaches further


def test_masks_are_cached_and_read_only() -> None:
    assert build_mask(256) is build_mask(256)
    with pytest.raises(ValueError, match="read-only"):
        build_mask(256)[0, 0] = 1.0


@pytest.mark.parametrize("spec", [{"kind": "circle"}, {"feather_px": -1}, {"erode_px": 100}])
def test_bad_settings(spec: dict) -> None:
    with pytest.raises(ConfigError):
        MaskSpec(**spec)
