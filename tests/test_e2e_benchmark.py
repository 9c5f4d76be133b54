"""A short run of the glass-to-glass benchmark (benchmarks/e2e_webrtc.py): a real aiortc client against the real
server on 127.0.0.1, identity engine, a small frame; the saved JSON has both modes with sane numbers."""

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
    assert e2e_webrtc.main([*args, "--engine", "identity", "--grace", "1.0", "--out", str(out)]) == 0

    result = json.loads(out.read_text())
    assert "| swap |" in out.with_suffix(".md").read_text()
    assert result["engine"] == "identity"
    assert result["size"] == "320x240"
    assert set(result["modes"]) == {"off", "on"}
    expected = (seconds - warmup) * fps
    for name, mode in result["modes"].items():
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
    off = result["modes"]["off"]
    # passthrough: most frames come back (loose bounds: a sanity check, not a timing test)
    assert off["frames_returned"] >= 0.5 * off["frames_sent"]
    assert off["server"]["counters"]["pipeline_errors"] == 0
