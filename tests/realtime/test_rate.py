"""The one RateMeter: a steady rate, a window that forgets, a stalled stream whose rate falls, any thread."""

from __future__ import annotations

import threading

import pytest

from realtime.pipeline.rate import RateMeter
from tests.fakes import FakeClock


def test_a_steady_stream_reads_its_rate() -> None:
    clock = FakeClock()
    meter = RateMeter(window=2.0, clock=clock)
    assert meter.rate() == 0.0
    for _ in range(60):  # 30 per second for 2 s
        clock.advance(1 / 30)
        meter.tick()
    assert meter.rate() == pytest.approx(30.0, rel=0.02)


def test_the_window_forgets_an_earlier_burst() -> None:
    meter = RateMeter(window=2.0)
    for i in range(100):
        meter.tick(now=10.0 + i / 1000)  # 1000 per second, once
    for i in range(1, 21):
        meter.tick(now=20.0 + i / 10)  # then 10 per second
    assert meter.rate(now=22.0) == pytest.approx(10.0, rel=0.06)


def test_a_stalled_stream_falls_towards_zero() -> None:
    meter = RateMeter(window=2.0)
    for i in range(30):
        meter.tick(now=i / 30)
    at_once = meter.rate(now=29 / 30)
    assert at_once == pytest.approx(30.0, rel=0.02)
    assert meter.rate(now=1.0 + 1.5) < at_once / 2  # nothing for 1.5 s: the rate says so
    assert meter.rate(now=10.0) == 0.0  # nothing inside the window


def test_ticks_from_one_thread_read_from_another() -> None:
    meter = RateMeter(window=5.0)
    done = threading.Event()

    def ticker() -> None:
        for i in range(2000):
            meter.tick(now=i / 1000)
        done.set()

    thread = threading.Thread(target=ticker)
    thread.start()
    while not done.is_set():
        meter.rate(now=1.0)  # never raises while the deque changes
    thread.join(5)
    assert meter.rate(now=1.999) == pytest.approx(1000.0, rel=0.01)


def test_a_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window"):
        RateMeter(window=0)
