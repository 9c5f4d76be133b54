"""Glass-to-glass latency of the page in Chromium over 60 s: does it stay flat, and where does it go when not?

    python -m benchmarks.e2e_chromium                                   # cases one, overloaded, overloaded+hog
    python -m benchmarks.e2e_chromium --cases one --seconds 20

`dancecam serve --engine identity` runs in a subprocess; Chromium (headless, fake camera playing a looping clip of a
real face, media on loopback) opens the page, ticks "measure glass-to-glass" and presses Start. The page stamps each
frame it sends and reads the number back from the returned video (web/latency.js); every second the benchmark reads
the new samples and the connection's WebRTC statistics (jitter buffer, send delay, bitrate, RTT, frame rates).
Reported: the p50 of the first and of the last `--window` seconds side by side, and the same split of each
statistic, so that growth can be placed (sender, network, server, receiver).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.e2e_webrtc import CASES, FLAT_MS, cpu_hog, device_label, parse_size
from benchmarks.engines import RESULTS
from benchmarks.saving import save

# The connection's statistics a window reports: (stats type, field), summed over the video streams of that type.
COUNTERS = {
    "sent_frames": ("outbound-rtp", "framesSent"),
    "sent_bytes": ("outbound-rtp", "bytesSent"),
    "sent_packets": ("outbound-rtp", "packetsSent"),
    "send_delay_s": ("outbound-rtp", "totalPacketSendDelay"),
    "encode_s": ("outbound-rtp", "totalEncodeTime"),
    "received_frames": ("inbound-rtp", "framesReceived"),
    "decoded_frames": ("inbound-rtp", "framesDecoded"),
    "dropped_frames": ("inbound-rtp", "framesDropped"),
    "jitter_delay_s": ("inbound-rtp", "jitterBufferDelay"),
    "jitter_emitted": ("inbound-rtp", "jitterBufferEmittedCount"),
    "jitter_target_s": ("inbound-rtp", "jitterBufferTargetDelay"),
    "freezes": ("inbound-rtp", "freezeCount"),
    "received_bytes": ("inbound-rtp", "bytesReceived"),
}
# Chromium's statistics as plain objects: an RTCStatsReport (a Map) does not cross into Python by itself.
PEER_STATS = """async () => {
  const report = await window.dancecam.peerStats();
  if (!report) return null;
  const out = [];
  report.forEach((s) => out.push(s));
  return out;
}"""


def snapshot(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """One reading of the counters, plus the instantaneous values worth showing (RTT, encoder's size and limit)."""
    video = [s for s in stats if s.get("kind", "video") == "video"]
    out: dict[str, Any] = {}
    for key, (kind, name) in COUNTERS.items():
        out[key] = sum(float(s.get(name, 0) or 0) for s in video if s["type"] == kind)
    for s in video:
        if s["type"] == "outbound-rtp":
            out["quality_limitation"] = s.get("qualityLimitationReason")
            out["sent_size"] = f"{s.get('frameWidth', 0)}x{s.get('frameHeight', 0)}"
            out["target_bitrate"] = s.get("targetBitrate")
        if s["type"] == "inbound-rtp":
            out["received_size"] = f"{s.get('frameWidth', 0)}x{s.get('frameHeight', 0)}"
    pairs = [s for s in stats if s["type"] == "candidate-pair" and s.get("nominated") and s.get("state") == "succeeded"]
    if pairs:
        out["rtt_ms"] = 1000 * float(pairs[0].get("currentRoundTripTime", 0) or 0)
        out["available_out_bitrate"] = pairs[0].get("availableOutgoingBitrate")
    return out


def window_figures(samples: list[list[float]], snaps: list[tuple[float, dict]], lo: float, hi: float) -> dict:
    """Glass-to-glass and the connection's rates between page times `lo` and `hi` (ms)."""
    g2g = [ms for t, ms in samples if lo <= t < hi]
    inside = [(t, s) for t, s in snaps if lo <= t <= hi]
    out: dict[str, Any] = {
        "samples": len(g2g),
        "p50_ms": statistics.median(g2g) if g2g else None,
        "p95_ms": sorted(g2g)[int(0.95 * (len(g2g) - 1))] if g2g else None,
    }
    if len(inside) >= 2:
        (t0, a), (t1, b) = inside[0], inside[-1]
        span = (t1 - t0) / 1000
        d = {k: b[k] - a[k] for k in COUNTERS}
        out["sent_fps"] = d["sent_frames"] / span
        out["decoded_fps"] = d["decoded_frames"] / span
        out["sent_kbps"] = 8 * d["sent_bytes"] / span / 1000
        out["received_kbps"] = 8 * d["received_bytes"] / span / 1000
        out["dropped_frames"] = d["dropped_frames"]
        out["freezes"] = d["freezes"]
        # per frame or packet in the window: the receiver's jitter buffer, the sender's pacer queue
        out["jitter_buffer_ms"] = 1000 * d["jitter_delay_s"] / d["jitter_emitted"] if d["jitter_emitted"] else None
        out["jitter_target_ms"] = 1000 * d["jitter_target_s"] / d["jitter_emitted"] if d["jitter_emitted"] else None
        out["send_delay_ms"] = 1000 * d["send_delay_s"] / d["sent_packets"] if d["sent_packets"] else None
        out["encode_ms"] = 1000 * d["encode_s"] / d["sent_frames"] if d["sent_frames"] else None
        rtts = [s["rtt_ms"] for _, s in inside if "rtt_ms" in s]
        out["rtt_ms"] = statistics.median(rtts) if rtts else None
        out["quality_limitation"] = b.get("quality_limitation")
        out["sent_size"] = b.get("sent_size")
        out["received_size"] = b.get("received_size")
        out["server_p50_ms"] = b.get("server_p50_ms")  # the server's own share over its last 300 frames
    return out


def run_case(browser: Any, clip: Path, case: str, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    from tests.web.harness import open_page, serve, start_live

    simulate_ms = 2000.0 / args.fps if case.startswith("overloaded") else 0.0
    hog = (os.cpu_count() or 1) if case.endswith("+hog") else 0
    console.print(f"[bold]case {case}[/]: {simulate_ms:g} ms simulated per frame, {hog} busy processes beside")
    with tempfile.TemporaryDirectory(prefix="dancecam-e2e-") as home:
        extra = ["--engine", "identity", "--simulate-ms", f"{simulate_ms:g}"]
        with serve(Path(home), Path(home) / "server.log", *extra) as server, cpu_hog(hog):
            page, console_errors = open_page(browser, server.page_url)
            try:
                page.check("#measure")
                session = start_live(page, timeout_ms=30_000)
                start = page.evaluate("performance.now()")
                samples: list[list[float]] = []
                snaps: list[tuple[float, dict]] = []
                since = 0
                deadline = time.monotonic() + args.seconds + 1
                while time.monotonic() < deadline:
                    time.sleep(1.0)
                    got = page.evaluate("(since) => window.dancecam.latencySamples(since)", since)
                    since = got["next"]
                    samples += got["samples"]
                    stats = page.evaluate(PEER_STATS)
                    if stats:
                        now = page.evaluate("performance.now()")
                        (mine,) = server.get(f"/api/stats?session={session}")["sessions"]
                        snaps.append((now, {**snapshot(stats), "server_p50_ms": mine["server_latency_ms"].get("p50")}))
            finally:
                page.context.close()
    first_lo = start + 1000 * args.warmup
    end = start + 1000 * args.seconds
    first = window_figures(samples, snaps, first_lo, first_lo + 1000 * args.window)
    last = window_figures(samples, snaps, end - 1000 * args.window, end)
    growth = None if first["p50_ms"] is None or last["p50_ms"] is None else last["p50_ms"] - first["p50_ms"]
    return {
        "simulate_ms": simulate_ms,
        "hog_processes": hog,
        "samples": len(samples),
        "first": first,
        "last": last,
        "growth_ms": growth,
        "flat": growth is not None and growth <= FLAT_MS,
        "console_errors": console_errors.errors[:10],
    }


ROWS = (
    ("glass-to-glass p50 (ms)", "p50_ms", "{:.0f}"),
    ("glass-to-glass p95 (ms)", "p95_ms", "{:.0f}"),
    ("server's share p50, last 300 frames (ms)", "server_p50_ms", "{:.0f}"),
    ("receiver jitter buffer per frame (ms)", "jitter_buffer_ms", "{:.0f}"),
    ("jitter buffer target (ms)", "jitter_target_ms", "{:.0f}"),
    ("sender pacer delay per packet (ms)", "send_delay_ms", "{:.1f}"),
    ("encode per frame (ms)", "encode_ms", "{:.1f}"),
    ("RTT (ms)", "rtt_ms", "{:.1f}"),
    ("sent fps", "sent_fps", "{:.1f}"),
    ("returned fps (decoded)", "decoded_fps", "{:.1f}"),
    ("sent kbit/s", "sent_kbps", "{:.0f}"),
    ("returned kbit/s", "received_kbps", "{:.0f}"),
    ("frames dropped by the receiver", "dropped_frames", "{:.0f}"),
    ("freezes", "freezes", "{:.0f}"),
    ("sent size", "sent_size", "{}"),
    ("encoder limited by", "quality_limitation", "{}"),
)


def _cell(window: dict, key: str, fmt: str) -> str:
    value = window.get(key)
    return "-" if value is None else fmt.format(value)


def markdown(result: dict) -> str:
    lines = [
        f"# Glass to glass in Chromium: identity engine on {result['device']}",
        "",
        f"{result['size']} fake camera at {result['fps']:g} fps, {result['seconds']:g} s per case (first "
        f"{result['warmup']:g} s left out), `dancecam serve` and headless Chromium "
        f"{result['chromium']} on one machine, media on loopback. First/last: the first and the last "
        f"{result['window']:g} s (flat: growth at most {FLAT_MS:g} ms). `{result['command']}`",
        "",
    ]
    for case, run in result["cases"].items():
        growth = run["growth_ms"]
        verdict = "-" if growth is None else f"{growth:+.0f} ms, " + ("flat" if run["flat"] else "GROWS")
        lines += [
            f"## {case}: {run['simulate_ms']:g} ms simulated per frame, {run['hog_processes']} busy processes beside",
            "",
            f"Growth of the p50: {verdict}.",
            "",
            "| | first | last |",
            "|---|---:|---:|",
        ]
        lines += [f"| {label} | {_cell(run['first'], k, f)} | {_cell(run['last'], k, f)} |" for label, k, f in ROWS]
        lines.append("")
    return "\n".join(lines)


def table(result: dict) -> Table:
    t = Table(title=f"glass to glass in Chromium, {result['device']}")
    t.add_column("case")
    t.add_column("first p50", justify="right")
    t.add_column("last p50", justify="right")
    t.add_column("growth", justify="right")
    t.add_column("jitter buffer first/last", justify="right")
    t.add_column("returned fps first/last", justify="right")
    for case, run in result["cases"].items():
        f, la = run["first"], run["last"]
        growth = run["growth_ms"]
        t.add_row(
            case,
            _cell(f, "p50_ms", "{:.0f} ms"),
            _cell(la, "p50_ms", "{:.0f} ms"),
            "-" if growth is None else f"{growth:+.0f} ms " + ("flat" if run["flat"] else "GROWS"),
            f"{_cell(f, 'jitter_buffer_ms', '{:.0f}')} / {_cell(la, 'jitter_buffer_ms', '{:.0f}')} ms",
            f"{_cell(f, 'decoded_fps', '{:.1f}')} / {_cell(la, 'decoded_fps', '{:.1f}')}",
        )
    return t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.e2e_chromium", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="streaming time per case (default 60)")
    parser.add_argument("--window", type=float, default=10.0, help="seconds at the start and end compared (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds after Start left out (default 2)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)} (all)")
    parser.add_argument("--fps", type=int, default=30, help="the fake camera's frame rate (default 30)")
    parser.add_argument("--size", type=parse_size, default=(640, 480), help="WIDTHxHEIGHT (default 640x480)")
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/e2e-chromium-...json)")
    args = parser.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not args.cases or any(c not in CASES for c in args.cases):
        parser.error(f"--cases takes one or more of {', '.join(CASES)}")
    if not 0 < args.window <= (args.seconds - args.warmup) / 2:
        parser.error("--window must be positive and at most half of the measured seconds")

    from playwright.sync_api import sync_playwright

    from tests.web.harness import CHROMIUM, chromium_args
    from tests.web.y4m import face_clip

    console = Console(width=160)
    cases: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dancecam-clip-") as tmp, sync_playwright() as pw:
        clip = face_clip(Path(tmp) / "face.y4m", *args.size, fps=args.fps, seconds=4.0)
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args(clip))
        version = browser.version
        try:
            for case in args.cases:
                cases[case] = run_case(browser, clip, case, args, console)
        finally:
            browser.close()

    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    device, slug = device_label({"device": "cpu"})
    result = {
        "benchmark": "e2e_chromium",
        "device": device,
        "date": date,
        "command": "python -m benchmarks.e2e_chromium " + " ".join(argv if argv is not None else sys.argv[1:]),
        "chromium": version,
        "cores": os.cpu_count(),
        "size": f"{args.size[0]}x{args.size[1]}",
        "fps": args.fps,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "window": args.window,
        "cases": cases,
    }
    console.print(table(result))
    out = args.out or RESULTS / f"e2e-chromium-{slug}-identity-{date[:10]}.json"
    console.print("saved " + " and ".join(map(str, save(out, result, markdown(result)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
