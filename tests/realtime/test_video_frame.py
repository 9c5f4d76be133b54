"""The pipeline's typed frame: its format, pts and time base are explicit and its shape is checked where it is made."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from realtime.pipeline.video import Frame


@pytest.mark.parametrize("shape", [(722, 640), (721, 640), (720, 641), (720, 640, 3), (640,)])
def test_yuv420p_rejects_what_is_not_packed_planes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="yuv420p"):
        Frame(np.zeros(shape, np.uint8), "yuv420p")


@pytest.mark.parametrize("shape", [(480, 640), (480, 640, 4), (0, 640, 3), (480, 640, 1)])
def test_rgb24_rejects_what_is_not_h_w_3(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="rgb24"):
        Frame(np.zeros(shape, np.uint8), "rgb24")


def test_pixels_must_be_uint8_and_the_format_known() -> None:
    with pytest.raises(ValueError, match="uint8"):
        Frame(np.zeros((4, 4, 3), np.float32), "rgb24")
    with pytest.raises(ValueError, match="uint8"):
        Frame([[0]], "yuv420p")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pixel format"):
        Frame(np.zeros((4, 4, 3), np.uint8), "bgr24")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pts", "time_base"), [(1.5, None), (True, None), ("3", None), (1, 0.001), (1, Fraction(0)), (1, Fraction(-1, 9))]
)
def test_pts_is_an_int_and_the_time_base_a_positive_fraction(pts: object, time_base: object) -> None:
    with pytest.raises(ValueError, match=r"pts|time_base"):
        Frame(np.zeros((4, 4, 3), np.uint8), "rgb24", pts, time_base)  # type: ignore[arg-type]


def test_size_and_time_follow_the_format() -> None:
    yuv = Frame(np.zeros((720, 640), np.uint8), "yuv420p", 90_000, Fraction(1, 90_000))
    assert (yuv.width, yuv.height, yuv.time) == (640, 480, 1.0)
    rgb = Frame(np.zeros((480, 640, 3), np.uint8), "rgb24")
    assert (rgb.width, rgb.height, rgb.time) == (640, 480, None)


def test_with_data_keeps_format_pts_and_time_base_and_checks_the_pixels() -> None:
    frame = Frame(np.zeros((6, 4), np.uint8), "yuv420p", 7, Fraction(1, 30))
    other = frame.with_data(np.ones((6, 4), np.uint8))
    assert (other.format, other.pts, other.time_base, int(other.data[0, 0])) == ("yuv420p", 7, Fraction(1, 30), 1)
    with pytest.raises(ValueError, match="yuv420p"):
        frame.with_data(np.ones((6, 4, 3), np.uint8))
    copied = frame.copy()
    assert copied.data is not frame.data
    assert np.array_equal(copied.data, frame.data)


@pytest.mark.parametrize("box", [(0, 0, 0, 4), (0, 0, 9, 4), (-1, 0, 4, 4), (0, 0, 4.0, 4), [0, 0, 4, 4]])
def test_drawn_over_is_a_region_inside_the_frame(box: object) -> None:
    with pytest.raises(ValueError, match="drawn_over"):
        Frame(np.zeros((6, 8, 3), np.uint8), "rgb24", drawn_over=box)  # type: ignore[arg-type]
    assert Frame(np.zeros((6, 8, 3), np.uint8), "rgb24", drawn_over=(0, 0, 8, 6)).drawn_over == (0, 0, 8, 6)
