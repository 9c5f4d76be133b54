"""CPU align + paste-back + blend: `realtime.pipeline.warp_cpu` against the whole-frame way (`benchmarks.naive_blend`).

    python -m benchmarks.warp_cpu_bench [--repeats 200] [--warmup 20] [--blocks 10] [--faces 1,4]
                                        [--resolutions 1280x720,...] [--threads N] [--out PATH]

Frames come from `realtime.bench.faces.compose_faces` (the astronaut's face pasted over a textured background; needs
scikit-image): 1 face is the large one (box 0.42 of the frame height), 4 faces add a small one, one near a corner and
one across the right border. Crops are 256x256 with the official FaceDancer mask. Each step runs in its own
loop, in blocks taken in turn (warm-up, then timed repeats; the sum pairs the i-th align with the i-th paste).
Prints median and p95 per step and their sum, with naive / ours, and saves JSON (and a Markdown table) under
benchmarks/results/. Issue target on a 2-core CPU: 1.0 ms for 1 face and 2.6 ms for 4 faces at 1280x720; the
whole-frame way takes about 24 and 92 ms.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from benchmarks.engines import RESULTS, cpu_name, timed
from benchmarks.naive_blend import naive_align, naive_paste
from benchmarks.saving import save
from engines.align import estimate_norm
from realtime.bench.faces import compose_faces
from realtime.pipeline.masks import build_mask
from realtime.pipeline.warp_cpu import align_faces, paste_faces

RESOLUTIONS = {"640x480": (640, 480), "1280x720": (1280, 720), "1920x1080": (1920, 1080)}
TARGET_720P_MS = {1: 1.0, 4: 2.6}
SIZE = 256


def stats(times: list[float]) -> dict[str, float]:
    s = sorted(times)
    return {"p50_ms": statistics.median(s), "p95_ms": s[min(len(s) - 1, int(0.95 * len(s)))], "min_ms": s[0]}


def case(width: int, height: int, n_faces: int, warmup: int, repeats: int, blocks: int) -> dict[str, object]:
    frame, placed = compose_faces(width, height)
    placed = placed[:n_faces]
    landmarks = torch.tensor(np.stack([p.landmarks for p in placed]), dtype=torch.float64)
    matrices = estimate_norm(landmarks, SIZE).numpy()
    mask = build_mask(SIZE)
    crops = align_faces(frame, matrices, SIZE)
    # a visible change, so the blend does real work (an unchanged crop would paste back the frame itself)
    swapped = np.clip(crops * 0.8 + 0.1, -1, 1).astype(np.float32)
    ours_frame, naive_frame = frame.copy(), frame.copy()

    steps: dict[str, Callable[[], object]] = {
        "ours_align": lambda: align_faces(frame, matrices, SIZE),
        "ours_paste": lambda: paste_faces(ours_frame, swapped, matrices, mask),
        "naive_align": lambda: naive_align(frame, matrices, SIZE),
        "naive_paste": lambda: naive_paste(naive_frame, swapped, matrices, mask),
    }
    # each step in its own loop, as a live pipeline runs it once per frame (interleaving single calls would let the
    # naive whole-frame passes evict our small working set from the cache), in blocks taken in turn so that every
    # step samples the machine's noise over the same stretch of time
    times: dict[str, list[float]] = {name: [] for name in steps}
    per_block = max(1, repeats // blocks)
    for block in range(blocks):
        for name, fn in steps.items():
            times[name] += timed(fn, warmup if block == 0 else 3, per_block)
    for who in ("ours", "naive"):
        times[f"{who}_total"] = [a + p for a, p in zip(times[f"{who}_align"], times[f"{who}_paste"], strict=True)]

    # the two ways agree: the same crops, and the same frame after pasting
    ours_out = paste_faces(frame.copy(), swapped, matrices, mask)
    naive_out = naive_paste(frame.copy(), swapped, matrices, mask)
    paste_diff = np.abs(ours_out.astype(np.int16) - naive_out.astype(np.int16))
    align_diff = np.abs(align_faces(frame, matrices, SIZE) - naive_align(frame, matrices, SIZE)) * 127.5
    result: dict[str, object] = {
        "resolution": f"{width}x{height}",
        "faces": n_faces,
        **{k: stats(v) for k, v in times.items()},
        "align_max_abs_diff_grey": float(align_diff.max()),
        "paste_max_abs_diff_grey": int(paste_diff.max()),
        "paste_mean_abs_diff_grey": float(paste_diff.mean()),
    }
    for step in ("align", "paste", "total"):
        result[f"speedup_{step}"] = result[f"naive_{step}"]["p50_ms"] / result[f"ours_{step}"]["p50_ms"]
    return result


def markdown(rows: list[dict], title: str) -> str:
    head = "| resolution | faces | ours align | ours paste | ours total (p95) | naive total (p95) | naive / ours |"
    lines = [f"# {title}", "", "Median ms (p95 in brackets).", "", head, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['resolution']} | {r['faces']} | {r['ours_align']['p50_ms']:.2f} | {r['ours_paste']['p50_ms']:.2f} "
            f"| {r['ours_total']['p50_ms']:.2f} ({r['ours_total']['p95_ms']:.2f}) "
            f"| {r['naive_total']['p50_ms']:.1f} ({r['naive_total']['p95_ms']:.1f}) | {r['speedup_total']:.0f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--blocks", type=int, default=10, help="repeats are taken in this many blocks, steps in turn")
    parser.add_argument("--faces", default="1,4", help="comma-separated face counts (1 to 4)")
    parser.add_argument(
        "--resolutions", default=",".join(RESOLUTIONS), help="comma-separated, from " + str(list(RESOLUTIONS))
    )
    parser.add_argument("--threads", type=int, default=None, help="cv2.setNumThreads (default: OpenCV's)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        cv2.setNumThreads(args.threads)

    rows = []
    for res in args.resolutions.split(","):
        for n in (int(v) for v in args.faces.split(",")):
            rows.append(case(*RESOLUTIONS[res], n, args.warmup, args.repeats, args.blocks))

    device = cpu_name()
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result = {
        "benchmark": "warp-cpu",
        "date": date,
        "command": " ".join(["python -m benchmarks.warp_cpu_bench", *(argv if argv is not None else sys.argv[1:])]),
        "device": device,
        "cpu_count": os.cpu_count(),
        "opencv_threads": cv2.getNumThreads(),
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "crop_size": SIZE,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "blocks": args.blocks,
        "target_720p_p50_ms": {str(k): v for k, v in TARGET_720P_MS.items()},
        "rows": rows,
    }
    title = f"align + paste-back + blend on {device} ({cv2.getNumThreads()} OpenCV threads, {SIZE}x{SIZE} crops)"
    table = Table(title=title)
    cols = ("resolution", "faces", "ours align", "ours paste", "ours total", "ours p95", "naive total", "naive p95")
    for col in (*cols, "naive/ours", "diff max"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["resolution"],
            str(r["faces"]),
            f"{r['ours_align']['p50_ms']:.2f}",
            f"{r['ours_paste']['p50_ms']:.2f}",
            f"{r['ours_total']['p50_ms']:.2f}",
            f"{r['ours_total']['p95_ms']:.2f}",
            f"{r['naive_total']['p50_ms']:.1f}",
            f"{r['naive_total']['p95_ms']:.1f}",
            f"{r['speedup_total']:.0f}x",
            str(r["paste_max_abs_diff_grey"]),
        )
    console = Console(width=160)
    console.print(table)
    console.print("times in ms (median and p95); diff max: grey levels between our pasted frame and the naive one")
    slug = "".join(ch if ch.isalnum() else "-" for ch in device.lower()).strip("-")[:40]
    out = args.out or RESULTS / f"warp-cpu-{slug}-{date[:10]}.json"
    save(out, result, markdown(rows, title))
    console.print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
