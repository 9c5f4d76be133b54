"""The degradation controller on simulated load with a fake clock: order, hysteresis, settling, recovery."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import pytest

from engines.errors import ConfigError
from realtime.live.degrade import LEVELS, DegradationController
from realtime.pipeline.face_choice import FaceChoice
from realtime.pipeline.frame import PipelineConfig

FPS = 30.0
BUDGET = 1000.0 / FPS


@dataclass
class Change:
    t: float
    level: int


class Sim:
    """A serial worker fed by a camera at `fps`: each frame takes `load(level, k)` ms, and the next frame starts
    when both it has finished and the camera has delivered one."""

    def __init__(self, ctrl: DegradationController, fps: float | None = FPS) -> None:
        self.ctrl, self.fps, self.t, self.k = ctrl, fps, 0.0, 0
        self.changes: list[Change] = []

    def run(self, seconds: float, load: Callable[[int, int], float]) -> list[Change]:
        end = self.t + seconds
        start = len(self.changes)
        while self.t < end:
            ms = load(self.ctrl.level, self.k)
            self.t += max(ms, 1000.0 / (self.fps or FPS)) / 1000.0
            self.k += 1
            if self.ctrl.observe(ms, self.fps, now=self.t):
                self.changes.append(Change(self.t, self.ctrl.level))
        return self.changes[start:]


def _gaps(changes: list[Change], since: float = 0.0) -> list[float]:
    times = [since] + [c.t for c in changes]
    return [b - a for a, b in pairwise(times)]


def test_steady_overload_steps_down_in_order_and_stops_at_the_last_level() -> None:
    ctrl = DegradationController()
    changes = Sim(ctrl).run(30.0, lambda level, k: 2.0 * BUDGET)
    assert [c.level for c in changes] == [1, 2, 3, 4]
    # one level at a time: each step waits out the settle period and a sustained second over budget
    assert all(g >= ctrl.settle_s + ctrl.degrade_after_s for g in _gaps(changes)[1:])
    assert _gaps(changes)[0] >= ctrl.degrade_after_s
    assert changes[-1].t < 10.0  # and it does not dawdle: five levels within seconds
    assert ctrl.level == len(LEVELS) - 1
    assert ctrl.name == "one face"


def test_a_load_that_fits_recovers_level_by_level() -> None:
    ctrl = DegradationController()
    sim = Sim(ctrl)
    sim.run(30.0, lambda level, k: 2.0 * BUDGET)
    assert ctrl.level == 4
    t0 = sim.t
    changes = sim.run(60.0, lambda level, k: 0.3 * BUDGET)
    assert [c.level for c in changes] == [3, 2, 1, 0]
    assert all(g >= ctrl.settle_s + ctrl.recover_after_s for g in _gaps(changes)[1:])
    assert _gaps(changes, t0)[0] >= ctrl.recover_after_s
    assert changes[-1].t - t0 < 20.0


def test_a_load_inside_the_hysteresis_band_holds_the_level() -> None:
    ctrl = DegradationController()
    sim = Sim(ctrl)
    sim.run(30.0, lambda level, k: 2.0 * BUDGET)
    assert sim.run(60.0, lambda level, k: 0.85 * BUDGET) == []  # under budget, but not comfortably: stay
    assert ctrl.level == 4


def test_a_single_slow_frame_does_not_degrade() -> None:
    ctrl = DegradationController()
    changes = Sim(ctrl).run(20.0, lambda level, k: 3000.0 if k == 100 else 0.6 * BUDGET)
    assert changes == []
    # nor does a short burst of them
    ctrl = DegradationController()
    changes = Sim(ctrl).run(20.0, lambda level, k: 200.0 if 100 <= k < 103 else 0.6 * BUDGET)
    assert changes == []


def test_a_load_flapping_across_the_budget_does_not_oscillate() -> None:
    """Frames alternately 40 % under and 30 % over the budget (mean just under it): the average sits in the band."""
    ctrl = DegradationController()
    changes = Sim(ctrl).run(60.0, lambda level, k: (0.6 if k % 2 else 1.3) * BUDGET)
    assert changes == []


def test_a_load_at_a_levels_edge_backs_off_instead_of_bouncing() -> None:
    """Too slow at level 0, easily fast enough at level 1: each recovery that fails makes the next wait longer."""
    ctrl = DegradationController()
    changes = Sim(ctrl).run(300.0, lambda level, k: (1.5 if level == 0 else 0.4) * BUDGET)
    levels = [c.level for c in changes]
    assert set(levels) <= {0, 1}
    assert all(a != b for a, b in pairwise(levels))  # each change is one real step
    times_at_1 = [b.t - a.t for a, b in pairwise(changes) if a.level == 1]
    assert all(b > a - 0.1 for a, b in pairwise(times_at_1))  # the stays grow ...
    assert times_at_1[-1] >= ctrl.recover_max_s  # ... up to the cap
    assert len(changes) < 30  # a fixed 3 s wait would bounce about 120 times in 5 minutes


def test_changes_wait_for_the_settle_period() -> None:
    """After a change, even a huge load is not judged until the settle period has passed."""
    ctrl = DegradationController(degrade_after_s=0.0, degrade_min_frames=1)
    sim = Sim(ctrl)
    changes = sim.run(3.0, lambda level, k: 4.0 * BUDGET)
    assert [c.level for c in changes] == [1, 2, 3, 4]
    assert all(g >= ctrl.settle_s for g in _gaps(changes)[1:])


def test_target_none_follows_the_input_rate() -> None:
    load = 40.0  # too slow for 30 fps, fine for 20 fps
    ctrl = DegradationController()
    assert Sim(ctrl, fps=20.0).run(20.0, lambda level, k: load) == []
    assert ctrl.state(PipelineConfig())["target_fps"] == 20.0
    ctrl = DegradationController()
    assert Sim(ctrl, fps=30.0).run(20.0, lambda level, k: load) != []
    # a set target above the input rate is capped by it: output cannot outrun input
    ctrl = DegradationController(target_fps=60.0)
    assert Sim(ctrl, fps=20.0).run(20.0, lambda level, k: load) == []
    assert ctrl.state(PipelineConfig())["target_fps"] == 20.0
    # and a set target below it is what counts
    ctrl = DegradationController(target_fps=20.0)
    assert Sim(ctrl, fps=30.0).run(20.0, lambda level, k: load) == []


def test_no_target_and_no_input_rate_stays_at_level_0() -> None:
    ctrl = DegradationController(clock=lambda: 0.0)
    t = 0.0
    for _ in range(600):
        t += 0.5
        assert not ctrl.observe(500.0, None, now=t)
        assert not ctrl.observe(500.0, math.nan, now=t)
    assert ctrl.level == 0
    assert ctrl.state(PipelineConfig())["target_fps"] is None
    # a set target needs no input rate
    ctrl.target_fps = 30.0
    assert any(ctrl.observe(500.0, None, now=t + 0.5 * i) for i in range(1, 20))


def test_apply_gives_the_documented_configs() -> None:
    user = PipelineConfig(detect_every=5, choice=FaceChoice(max_faces=4))
    ctrl = DegradationController()
    assert ctrl.apply(user) is user
    got = []
    for level in range(len(LEVELS)):
        ctrl._level = level  # set directly: the rule is tested above
        ctrl._publish(None, None)
        cfg = ctrl.apply(user)
        got.append((cfg.detect_every, cfg.detect_scale, cfg.choice.max_faces))
        state = ctrl.state(user)
        assert (state["level"], state["name"]) == (level, LEVELS[level].name)
        assert (state["detect_every"], state["detect_scale"], state["max_faces"]) == got[-1]
    assert got == [(5, 1.0, 4), (10, 1.0, 4), (20, 1.0, 4), (20, 0.5, 4), (20, 0.5, 1)]
    assert [lv.name for lv in LEVELS] == [
        "full",
        "detect less often",
        "detect much less often",
        "detect at half resolution",
        "one face",
    ]
    assert user == PipelineConfig(detect_every=5, choice=FaceChoice(max_faces=4))  # the user's config is untouched


def test_apply_only_ever_reduces() -> None:
    ctrl = DegradationController()
    ctrl._level = 4
    ctrl._publish(None, None)
    every_frame = ctrl.apply(PipelineConfig(detect_every=1, choice=FaceChoice(mode="largest")))
    assert every_frame.detect_every == 4
    assert every_frame.choice.mode == "largest"
    assert ctrl.apply(PipelineConfig(detect_every=60)).detect_every == 120  # capped at the valid maximum
    assert ctrl.apply(PipelineConfig(detect_scale=0.25)).detect_scale == 0.25  # never raised
    assert ctrl.state(PipelineConfig(choice=FaceChoice(mode="largest", max_faces=8)))["max_faces"] == 1


@pytest.mark.parametrize("bad", [0, -1.0, 240.5, 1000, math.nan, math.inf, "30", True])
def test_invalid_targets_are_config_errors(bad: object) -> None:
    with pytest.raises(ConfigError, match="target frame rate"):
        DegradationController(target_fps=bad)  # type: ignore[arg-type]
    ctrl = DegradationController(target_fps=25)
    with pytest.raises(ConfigError, match="target frame rate"):
        ctrl.target_fps = bad  # type: ignore[assignment]
    assert ctrl.target_fps == 25.0


def test_state_reports_the_achieved_rate() -> None:
    ctrl = DegradationController()
    assert ctrl.state(PipelineConfig())["achieved_fps"] is None
    Sim(ctrl, fps=25.0).run(5.0, lambda level, k: 10.0)
    state = ctrl.state(PipelineConfig())
    assert state == {
        "level": 0,
        "name": "full",
        "detect_every": 5,
        "detect_scale": 1.0,
        "max_faces": 4,
        "target_fps": 25.0,
        "achieved_fps": pytest.approx(25.0, abs=0.01),
    }
    # overloaded: the worker manages one frame per 80 ms
    ctrl = DegradationController()
    Sim(ctrl, fps=30.0).run(5.0, lambda level, k: 80.0)
    assert ctrl.state(PipelineConfig())["achieved_fps"] == pytest.approx(12.5, abs=0.01)


def test_reset_and_a_new_target_start_afresh() -> None:
    ctrl = DegradationController()
    sim = Sim(ctrl)
    sim.run(30.0, lambda level, k: 2.0 * BUDGET)
    assert ctrl.level == 4
    ctrl.reset()
    assert (ctrl.level, ctrl.name) == (0, "full")
    assert ctrl.state(PipelineConfig())["achieved_fps"] is None
    # almost a second over budget, then a new (lower) target: the old measurements do not count towards it
    sim.run(0.9, lambda level, k: 2.0 * BUDGET)
    ctrl.target_fps = 10.0
    assert sim.run(10.0, lambda level, k: 80.0) == []
    assert ctrl.level == 0
