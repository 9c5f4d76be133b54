"""A CPU frame's align + paste-back, warm and cold: the pipeline's way against Deep-Live-Cam's and the whole-frame way.

    python -m benchmarks.warp_cpu_bench [--repeats 200] [--warmup 20] [--blocks 10] [--faces 1,4]
                                        [--resolutions 1280x720,...] [--naive-repeats 20] [--threads N] [--out PATH]

Frames come from `realtime.bench.faces.compose_faces` (the astronaut's face pasted over a textured background; needs
scikit-image): 1 face is the large one (box 0.42 of the frame height), 4 faces add a small one, one near a corner and
one across the right border. A "frame" is what the CPU pipeline's align and paste stages do for those faces:
  ours      warp.face_matrices + warp.face_boxes + warp.align + warp.paste on tensors, 256 crops, the official mask
            as the CPU DeviceContext makes it (a tensor);
  before    the same stages as of b2fe98f: torch estimate_norm + zoom_out, and a paste handed `mask.numpy()`, a new
            writable array each frame (so its support was found every frame);
  dlc       Deep-Live-Cam's way at inswapper's 128 crops (`benchmarks.naive_blend.dlc_*`), matrices from the same
            host estimate;
  naive     the whole-frame way (`benchmarks.naive_blend.naive_*`; --naive-repeats frames a block, it is slow).
and the matrix step alone (numpy vs torch). Warm: frames back to back. Cold: before each frame a 64 MiB buffer (twice
the 32 MiB L3 here) is written, evicting the frame, crops, scratch buffers and code from every cache level, as the
swap network's weights and activations do between two frames of a live pipeline (a fresh process per sample would
also make Python's own state cold, which a running pipeline never sees). Every way and mode runs in blocks taken in
turn, so each samples the machine's noise over the same stretch of time. Prints medians and ratios, saves JSON and a
Markdown table under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from benchmarks.engines import RESULTS, cpu_name
from benchmarks.naive_blend import dlc_align, dlc_paste, naive_align, naive_paste
from benchmarks.saving import save
from engines.align import estimate_norm
from realtime.bench.faces import compose_faces
from realtime.pipeline import warp, warp_cpu
from realtime.pipeline.context import DeviceContext
from realtime.pipeline.crops import zoom_out
from realtime.pipeline.masks import MaskSpec, build_mask

RESOLUTIONS = {"640x480": (640, 480), "1280x720": (1280, 720), "1920x1080": (1920, 1080)}
SIZE = 256
DLC_SIZE = 128
FLUSH_BYTES = 64 << 20
WAYS = ("ours", "before", "dlc", "naive")
MODES = ("warm", "cold")


def stats(times: list[float]) -> dict[str, float]:
    s = sorted(times)
    return {"p50_ms": statistics.median(s), "p95_ms": s[min(len(s) - 1, int(0.95 * len(s)))], "min_ms": s[0]}


def _frames(width: int, height: int, n_faces: int) -> dict[str, Callable[[], object]]:
    """One frame's align + paste for each way (and the matrix steps alone), on its own copy of the frame."""
    frame, placed = compose_faces(width, height)
    landmarks = [p.landmarks for p in placed[:n_faces]]
    ctx = DeviceContext("cpu")
    mask_t = ctx.mask(SIZE, MaskSpec())
    frame_t = torch.from_numpy(frame.copy())
    before_frame = frame.copy()
    dlc_frame, naive_frame = frame.copy(), frame.copy()
    m = warp.face_matrices(landmarks, SIZE)
    # a visible change, so the blend does real work (an unchanged crop would paste back the frame itself)
    swapped = torch.from_numpy(np.clip(warp_cpu.align_faces(frame, m, SIZE) * 0.8 + 0.1, -1, 1).astype(np.float32))
    m_dlc = warp.face_matrices(landmarks, DLC_SIZE)
    dlc_swapped = np.clip(dlc_align(frame, m_dlc) * 0.8 + 0.1, 0, 1).astype(np.float32)
    alpha_u8 = np.round(build_mask(DLC_SIZE) * 255).astype(np.uint8)

    def matrix_numpy() -> tuple[np.ndarray, list]:
        mats = warp.face_matrices(landmarks, SIZE)
        return mats, warp.face_boxes(mats, SIZE, width, height)

    def matrix_torch() -> tuple[np.ndarray, list]:
        lm = torch.as_tensor(np.stack(landmarks), dtype=torch.float64)
        mats = zoom_out(estimate_norm(lm, SIZE).numpy(), SIZE, 1.0)
        return mats, warp.face_boxes(mats, SIZE, width, height)

    def ours() -> None:
        mats, boxes = matrix_numpy()
        warp.align(frame_t, mats, SIZE)
        warp.paste(frame_t, swapped, mats, mask_t, boxes)

    def before() -> None:
        mats, boxes = matrix_torch()
        warp.align(frame_t, mats, SIZE)
        keep = [i for i, b in enumerate(boxes) if b is not None]
        crops = swapped[keep] if len(keep) < len(boxes) else swapped  # as warp.paste selected (a torch index)
        warp_cpu.paste_faces(before_frame, crops.numpy(), mats[keep], mask_t.numpy())

    def dlc() -> None:
        mats = warp.face_matrices(landmarks, DLC_SIZE)
        dlc_align(frame, mats)
        dlc_paste(dlc_frame, dlc_swapped, mats, alpha_u8)

    def naive() -> None:
        mats = warp.face_matrices(landmarks, SIZE)
        naive_align(frame, mats, SIZE)
        naive_paste(naive_frame, swapped.numpy(), mats, build_mask(SIZE))

    return {
        "ours": ours,
        "before": before,
        "dlc": dlc,
        "naive": naive,
        "matrix_numpy": matrix_numpy,
        "matrix_torch": matrix_torch,
    }


def case(
    width: int, height: int, n_faces: int, warmup: int, repeats: int, blocks: int, naive_repeats: int
) -> dict[str, object]:
    steps = _frames(width, height, n_faces)
    flush = np.zeros(FLUSH_BYTES, np.uint8)
    times: dict[str, list[float]] = {f"{name}_{mode}": [] for name in steps for mode in MODES}
    per_block = max(1, repeats // blocks)
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    for _ in range(blocks):
        for mode in MODES:
            for name, fn in steps.items():
                for _ in range(max(1, naive_repeats // blocks) if name == "naive" else per_block):
                    if mode == "cold":
                        np.add(flush, 1, out=flush)
                    t0 = time.perf_counter()
                    fn()
                    times[f"{name}_{mode}"].append((time.perf_counter() - t0) * 1e3)
    result: dict[str, object] = {"resolution": f"{width}x{height}", "faces": n_faces}
    result.update({k: stats(v) for k, v in times.items()})
    for mode in MODES:
        ours = result[f"ours_{mode}"]["p50_ms"]
        for other in ("before", "dlc", "naive"):
            result[f"{other}_over_ours_{mode}"] = result[f"{other}_{mode}"]["p50_ms"] / ours
        result[f"matrix_torch_over_numpy_{mode}"] = (
            result[f"matrix_torch_{mode}"]["p50_ms"] / result[f"matrix_numpy_{mode}"]["p50_ms"]
        )
    return result


def markdown(rows: list[dict], title: str, notes: list[str]) -> str:
    head = (
        "| resolution | faces | mode | ours | before | dlc (128) | naive | dlc / ours | before / ours | naive / ours "
        "| matrix numpy | matrix torch |"
    )
    lines = [f"# {title}", "", *notes, "", "Median ms a frame.", "", head, "|---|---:|---|" + "---:|" * 9]
    for r in rows:
        for mode in MODES:
            lines.append(
                f"| {r['resolution']} | {r['faces']} | {mode} | "
                + " | ".join(f"{r[f'{w}_{mode}']['p50_ms']:.2f}" for w in WAYS)
                + f" | {r[f'dlc_over_ours_{mode}']:.2f} | {r[f'before_over_ours_{mode}']:.2f} "
                f"| {r[f'naive_over_ours_{mode}']:.0f} | {r[f'matrix_numpy_{mode}']['p50_ms']:.3f} "
                f"| {r[f'matrix_torch_{mode}']['p50_ms']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200, help="frames per way and mode")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--blocks", type=int, default=10, help="repeats are taken in this many blocks, ways in turn")
    parser.add_argument("--naive-repeats", type=int, default=20, help="frames per mode for the whole-frame way")
    parser.add_argument("--faces", default="1,4", help="comma-separated face counts (1 to 4)")
    parser.add_argument(
        "--resolutions", default="1280x720,1920x1080", help="comma-separated, from " + str(list(RESOLUTIONS))
    )
    parser.add_argument("--threads", type=int, default=None, help="cv2.setNumThreads (default: OpenCV's)")
    parser.add_argument("--note", action="append", default=[], help="a line for the saved table (e.g. machine load)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        cv2.setNumThreads(args.threads)

    rows = []
    for res in args.resolutions.split(","):
        for n in (int(v) for v in args.faces.split(",")):
            rows.append(case(*RESOLUTIONS[res], n, args.warmup, args.repeats, args.blocks, args.naive_repeats))

    device = cpu_name()
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    command = " ".join(["python -m benchmarks.warp_cpu_bench", *(argv if argv is not None else sys.argv[1:])])
    result = {
        "benchmark": "warp-cpu",
        "date": date,
        "command": command,
        "device": device,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "notes": args.note,
        "opencv_threads": cv2.getNumThreads(),
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "crop_size": SIZE,
        "dlc_crop_size": DLC_SIZE,
        "cold_flush_bytes": FLUSH_BYTES,
        "repeats": args.repeats,
        "naive_repeats": args.naive_repeats,
        "warmup": args.warmup,
        "blocks": args.blocks,
        "rows": rows,
    }
    title = f"CPU align + paste-back a frame on {device} ({cv2.getNumThreads()} OpenCV threads)"
    notes = [f"{date}, `{command}`, load average before {os.getloadavg()[0]:.1f}.", *args.note]
    table = Table(title=title)
    for col in ("resolution", "faces", "mode", *WAYS, "dlc/ours", "before/ours", "naive/ours", "mat np", "mat torch"):
        table.add_column(col, justify="right")
    for r in rows:
        for mode in MODES:
            table.add_row(
                r["resolution"],
                str(r["faces"]),
                mode,
                *(f"{r[f'{w}_{mode}']['p50_ms']:.2f}" for w in WAYS),
                f"{r[f'dlc_over_ours_{mode}']:.2f}",
                f"{r[f'before_over_ours_{mode}']:.2f}",
                f"{r[f'naive_over_ours_{mode}']:.0f}",
                f"{r[f'matrix_numpy_{mode}']['p50_ms']:.3f}",
                f"{r[f'matrix_torch_{mode}']['p50_ms']:.3f}",
            )
    console = Console(width=180)
    console.print(table)
    console.print("median ms a frame; ratios > 1: ours is faster")
    slug = "".join(ch if ch.isalnum() else "-" for ch in device.lower()).strip("-")[:40]
    out = args.out or RESULTS / f"warp-cpu-cold-{slug}-{date[:10]}.json"
    save(out, result, markdown(rows, title, notes))
    console.print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
