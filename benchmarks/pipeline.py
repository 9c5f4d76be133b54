"""Per-stage latency of the frame pipeline, and our align / paste-back against the naive whole-frame way.

    python -m benchmarks.pipeline                       # 640x480, 1280x720, 1920x1080 with 1 and 4 faces
    python -m benchmarks.pipeline --device cuda --frames 200

Part 1 runs the whole pipeline (MTCNN every `--detect-every` frames, tracking, align, random-initialised FaceDancer
config C, paste-back) on real-face frames and reports each stage's p50/p95/p99 from the pipeline's own profiler.
Part 2 times align and paste-back + blend alone, ours against a baseline written the way common tools do it
(`benchmarks.naive_blend`: per-face cv2.warpAffine, the mask and the face inverse-warped over the whole frame, a
float32 blend of the whole frame), on the same frames and matrices, and reports our time over theirs.
Results go to `benchmarks/results/pipeline-<device>-<date>.json` with a PNG chart of the stage times beside it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from benchmarks.engines import RESULTS
from benchmarks.naive_blend import naive_align, naive_paste
from benchmarks.saving import save
from engines.align import estimate_norm
from engines.facedancer import facedancer
from engines.flops import facedancer_floor
from engines.mtcnn import MTCNN
from engines.runners.base import facedancer_io
from engines.runners.eager import EagerRunner
from realtime.bench.faces import Placement, compose_faces
from realtime.bench.run import device_name
from realtime.pipeline import warp
from realtime.pipeline.context import DeviceContext
from realtime.pipeline.face_choice import FaceChoice
from realtime.pipeline.frame import FaceDancerSwap, FramePipeline, IdentitySwap, PipelineConfig
from realtime.pipeline.masks import MaskSpec, build_mask
from realtime.pipeline.video import Frame

ONE_FACE = (Placement(0.5, 0.5, 0.45),)
FOUR_FACES = (
    Placement(0.27, 0.3, 0.3),
    Placement(0.73, 0.3, 0.3),
    Placement(0.27, 0.75, 0.3),
    Placement(0.73, 0.75, 0.3),
)
STAGE_ORDER = ("upload", "detect", "track", "align", "swap", "colour", "paste", "download")


def _percentiles(times: list[float]) -> dict[str, float]:
    a = np.asarray(times)
    return {
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
    }


def _timed(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> list[float]:
    fn()
    sync()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def pipeline_case(
    frame: np.ndarray, faces: int, args: argparse.Namespace, detector: MTCNN, engine: object
) -> dict[str, object]:
    ctx = DeviceContext(args.device)
    config = PipelineConfig(detect_every=args.detect_every, choice=FaceChoice(max_faces=max(faces, 1)))
    pipe = FramePipeline(detector, engine, config, context=ctx)  # type: ignore[arg-type]
    for k in range(args.warmup):
        pipe.process(Frame(frame, "rgb24"), k / 30)
    pipe.profiler.reset()
    swapped = []
    for k in range(args.frames):
        swapped.append(pipe.process(Frame(frame, "rgb24"), (args.warmup + k) / 30).faces)
    snap = pipe.profiler.snapshot()
    pipe.close()
    return {
        "faces_swapped_min": min(swapped),
        "stages": snap["stages"],
        "end_to_end": snap["end_to_end"],
        "fps": snap["fps"],
    }


def warp_case(frame: np.ndarray, placed: list, device: torch.device, repeats: int) -> dict[str, object]:
    size = 256
    lm = torch.tensor(np.stack([p.landmarks for p in placed]), dtype=torch.float64)
    matrices = estimate_norm(lm, size).numpy()
    mask = build_mask(size)
    h, w = frame.shape[:2]
    boxes = warp.face_boxes(matrices, size, w, h)
    ctx = DeviceContext(device)
    sync = torch.cuda.synchronize if ctx.is_cuda else (lambda: None)
    with ctx.activate():
        frame_t = ctx.upload(frame)
        mask_t = ctx.mask(size, MaskSpec())
        crops_t = warp.align(frame_t, matrices, size)
        crops = crops_t.float().cpu().numpy()
        ours_align = _timed(lambda: warp.align(frame_t, matrices, size), repeats, sync)
        ours_paste = _timed(lambda: warp.paste(frame_t, crops_t, matrices, mask_t, boxes), repeats, sync)
    naive_a = _timed(lambda: naive_align(frame, matrices, size), repeats, lambda: None)
    scratch = frame.copy()
    naive_p = _timed(lambda: naive_paste(scratch, crops, matrices, mask), max(5, repeats // 4), lambda: None)
    ours = {"align": _percentiles(ours_align), "paste_blend": _percentiles(ours_paste)}
    naive = {"align": _percentiles(naive_a), "paste_blend": _percentiles(naive_p)}
    total_ours = statistics.median(a + b for a, b in zip(ours_align, ours_paste, strict=True))
    total_naive = statistics.median(naive_a[: len(naive_p)]) + statistics.median(naive_p)
    return {
        "ours": ours,
        "naive": naive,
        "align_paste_blend_p50_ms": total_ours,
        "naive_align_paste_blend_p50_ms": total_naive,
        "ratio_ours_over_naive": {
            "align": ours["align"]["p50"] / naive["align"]["p50"],
            "paste_blend": ours["paste_blend"]["p50"] / naive["paste_blend"]["p50"],
            "total": total_ours / total_naive,
        },
    }


def chart(results: list[dict], path: Path, title: str) -> None:
    """Stacked mean ms per frame per stage: everything, and everything but the network (the part we engineer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['resolution']}\n{r['faces']} face{'s' if r['faces'] > 1 else ''}" for r in results]
    fig, axes = plt.subplots(1, 2, figsize=(max(10, 2.6 * len(results)), 4.8))
    for ax, stages, sub in (
        (axes[0], STAGE_ORDER, "all stages"),
        (axes[1], tuple(k for k in STAGE_ORDER if k != "swap"), "all but the swap network"),
    ):
        bottom = np.zeros(len(results))
        for stage in stages:
            # a stage that does not run every frame (detection) counts as its mean share per frame
            vals = np.array(
                [
                    r["pipeline"]["stages"].get(stage, {}).get("mean", 0.0)
                    * r["pipeline"]["stages"].get(stage, {}).get("count", 0)
                    / max(1, r["frames"])
                    for r in results
                ]
            )
            if vals.any():
                colour = plt.get_cmap("tab10")(STAGE_ORDER.index(stage))  # one colour per stage in both panels
                ax.bar(labels, vals, bottom=bottom, label=stage, color=colour)
                bottom += vals
        ax.set_ylabel("ms per frame (mean)")
        ax.set_title(sub, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
        ax.legend(fontsize=8, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--resolutions", default="640x480,1280x720,1920x1080")
    parser.add_argument("--faces", default="1,4")
    parser.add_argument("--frames", type=int, default=20, help="timed frames per case")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--detect-every", type=int, default=5)
    parser.add_argument("--engine", choices=("facedancer", "identity"), default="facedancer")
    parser.add_argument("--warp-repeats", type=int, default=100, help="repeats of the align/paste comparison")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--replot", type=Path, default=None, help="only redraw the PNG of a saved JSON result")
    args = parser.parse_args(argv)
    if args.replot is not None:
        saved = json.loads(args.replot.read_text())
        chart(
            saved["results"], args.replot.with_suffix(".png"), f"pipeline stages, {saved['device']} ({saved['engine']})"
        )
        return 0

    torch.manual_seed(0)
    ctx = DeviceContext(args.device)
    device = ctx.device
    args.device = str(device)
    detector = MTCNN(device=device)
    model = facedancer().to(device).eval()
    precision = "fp16" if device.type == "cuda" else "fp32"

    def make_engine() -> object:  # one per case: closing a case's pipeline closes its engine's runner
        if args.engine == "identity":
            return IdentitySwap()
        runner = EagerRunner(model, facedancer_io(model.config.mapping_width), device, precision)
        return FaceDancerSwap(model, torch.randn(512, device=device), runner)

    console = Console(width=200)
    results = []
    for res in args.resolutions.split(","):
        w, h = (int(v) for v in res.lower().split("x"))
        for n in (int(v) for v in args.faces.split(",")):
            placements = ONE_FACE if n == 1 else FOUR_FACES[:n]
            frame, placed = compose_faces(w, h, placements)
            console.print(f"[bold]{res}, {n} face(s)[/]: pipeline ({args.frames} frames) ...")
            pipe = pipeline_case(frame, n, args, detector, make_engine())
            console.print("  align / paste-back against the naive way ...")
            wc = warp_case(frame, placed, device, args.warp_repeats)
            results.append({"resolution": res, "faces": n, "frames": args.frames, "pipeline": pipe, "warp": wc})

    if args.engine == "facedancer":  # the compute floor: the faces' FaceDancer FLOPs at the measured peak
        per_face = facedancer_floor(device, precision).ms
        for r in results:
            r["pipeline"]["floor_ms"] = per_face * r["pipeline"]["faces_swapped_min"]
    table = Table(title=f"pipeline on {device_name(device)} ({args.engine}, detect every {args.detect_every}), ms")
    present = [k for k in STAGE_ORDER if any(k in r["pipeline"]["stages"] for r in results)]
    cols = ("case", "faces found", "e2e p50", "e2e p95", "e2e p99", "floor", "fps", *(f"{k} p50" for k in present))
    for col in cols:
        table.add_column(col, justify="right")
    for r in results:
        p = r["pipeline"]
        e = p["end_to_end"]
        table.add_row(
            f"{r['resolution']} x{r['faces']}",
            str(p["faces_swapped_min"]),
            f"{e['p50']:.1f}",
            f"{e['p95']:.1f}",
            f"{e['p99']:.1f}",
            f"{p['floor_ms']:.2f}" if "floor_ms" in p else "-",
            f"{p['fps']:.1f}",
            *(f"{p['stages'][k]['p50']:.2f}" if k in p["stages"] else "-" for k in present),
        )
    console.print(table)
    table = Table(title="align + paste-back + blend, 256 crops: ours vs the naive whole-frame way (p50 ms)")
    for col in ("case", "ours align", "ours paste", "ours total", "naive align", "naive paste", "naive total", "ratio"):
        table.add_column(col)
    for r in results:
        wc = r["warp"]
        table.add_row(
            f"{r['resolution']} x{r['faces']}",
            f"{wc['ours']['align']['p50']:.2f}",
            f"{wc['ours']['paste_blend']['p50']:.2f}",
            f"{wc['align_paste_blend_p50_ms']:.2f}",
            f"{wc['naive']['align']['p50']:.2f}",
            f"{wc['naive']['paste_blend']['p50']:.2f}",
            f"{wc['naive_align_paste_blend_p50_ms']:.2f}",
            f"{wc['ratio_ours_over_naive']['total']:.3f}",
        )
    console.print(table)

    name = device_name(device)
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result = {
        "benchmark": "pipeline",
        "device": name,
        "device_type": device.type,
        "date": date,
        "command": "python -m benchmarks.pipeline " + " ".join(argv if argv is not None else sys.argv[1:]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "engine": args.engine,
        "detector": "mtcnn",
        "detect_every": args.detect_every,
        "results": results,
    }
    slug = device.type + "-" + "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")[:40]
    out = args.out or RESULTS / f"pipeline-{slug}-{date[:10]}.json"
    save(out, result)
    chart(results, out.with_suffix(".png"), f"pipeline stages, {name} ({args.engine})")
    console.print(f"saved {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
