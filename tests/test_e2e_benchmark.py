"""A short run of the glass-to-glass benchmark (benchmarks/e2e_webrtc.py): a real aiortc client against the real
server on 127.0.0.1, identity engine, a small frame; the saved JSON has both modes with sane numbers, and the first
and last windows that say whether latency stayed flat; an overloaded case drops frames as it should."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import e2e_webrtc


@pytest.mark.network
def test_short_run_reports_both_modes(tmp_path: Path) -> None:
    out = tmp_path / "e2e.json"
    seconds, warmup, fps = 3.0, 0.5, 30.0
    args = ["--seconds", str(seconds), "--warmup", str(warmup), "--fps", str(fps), "--size", "320x240"]
    args += ["--window", "1"]
    assert e2e_webrtc.main([*args, "--engine", "identity", "--grace", "1.0", "--out", str(out)]) == 0

    result = json.loads(out.read_text())
    assert "| case | swap |" in out.with_suffix(".md").read_text()
    assert result["engine"] == "identity"
    assert result["size"] == "320x240"
    assert set(result["cases"]) == {"one"}
    modes = result["cases"]["one"]["modes"]
    assert set(modes) == {"off", "on"}
    expected = (seconds - warmup) * fps
    for name, mode in modes.items():
        assert 0.5 * expected <= mode["frames_sent"] <= expected + 1, name
        assert 0 < mode["frames_returned"] <= mode["frames_sent"], name
        assert mode["frames_dropped"] == mode["frames_sent"] - mode["frames_returned"]
        assert mode["unknown_stamps"] == 0, name  # no misread ever matched a wrong frame
        assert mode["returned_sizes"] == ["320x240"]
        rt = mode["round_trip_ms"]
        assert 0 < rt["p50"] <= rt["p95"] <= rt["p99"] <= rt["max"] < 5000, name
        assert mode["fps_in"] > 0.5 * fps, name
        assert 0 < mode["fps_out"] <= fps * 1.5, name
        assert len(mode["samples"]) == mode["frames_sent"]
        first, last = mode["first_window_ms"], mode["last_window_ms"]
        assert 0 < first["n"] <= 1.5 * fps, name  # one second each
        assert 0 < last["n"] <= 1.5 * fps, name
        assert mode["growth_ms"] == round(last["p50"] - first["p50"], 1)
    off = modes["off"]
    # passthrough: most frames come back (loose bounds: a sanity check, not a timing test)
    assert off["frames_returned"] >= 0.5 * off["frames_sent"]
    assert off["server"]["counters"]["pipeline_errors"] == 0


@pytest.mark.network
def test_overloaded_case_costs_two_frame_intervals(tmp_path: Path) -> None:
    out = tmp_path / "e2e.json"
    args = ["--seconds", "3", "--warmup", "0.5", "--window", "1", "--size", "320x240", "--modes", "on"]
    assert e2e_webrtc.main([*args, "--cases", "overloaded", "--grace", "1.0", "--out", str(out)]) == 0

    case = json.loads(out.read_text())["cases"]["overloaded"]
    assert case["simulate_ms"] == 2000 / 30
    assert case["hog_processes"] == 0
    on = case["modes"]["on"]
    assert on["frames_returned"] > 0
    assert on["fps_out"] < 0.75 * on["fps_in"]  # 66 ms a frame cannot keep up with 30 fps: frames are dropped
