"""`dancecam bench`: the latency benchmark's command line (the work is in `realtime.bench.run`, imported only when it
runs, so that `dancecam --help` does not load torch)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engines.choices import BACKEND_NAMES, DEFAULT_DETECTOR, DEFAULT_DEVICE, DETECTORS, PRECISIONS
from realtime.pipeline.choices import DEFAULT_DETECT_EVERY


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    sizes = []
    for part in text.split(","):
        try:
            w, h = (int(v) for v in part.strip().lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"size {part.strip()!r} is not WIDTHxHEIGHT, e.g. 1280x720") from None
        sizes.append((w, h))
    return tuple(sizes)


def parse_counts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of face counts, e.g. 1,4") from None


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "bench",
        help="measure the swap latency of this machine (per backend, resolution and face count)",
        description="Time the whole frame pipeline (detect, track, align, FaceDancer, paste-back) on frames of real "
        "faces: per-stage and end-to-end p50/p95/p99, frames and faces per second, and the compute floor (FaceDancer "
        "FLOPs over the measured peak of the device), with the device, driver and library versions. Writes JSON, a "
        "Markdown report and PNG plots that compare across machines.",
    )
    p.add_argument(
        "--backend",
        default="",
        metavar="NAMES",
        help=f"comma-separated backends ({', '.join(BACKEND_NAMES)}), or auto for the fastest one "
        "here (default: every backend this machine has)",
    )
    p.add_argument(
        "--sizes", type=parse_sizes, default="640x480,1280x720", metavar="WxH,...", help="default 640x480,1280x720"
    )
    p.add_argument(
        "--faces", type=parse_counts, default="1,4", metavar="N,...", help="faces per frame, 1..8 (default 1,4)"
    )
    p.add_argument("--frames", type=int, default=100, metavar="N", help="timed frames per case (default 100)")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=60.0,
        metavar="S",
        help="timed seconds per case at most, then fewer frames (default 60; 0: all --frames)",
    )
    p.add_argument("--warmup", type=int, default=10, metavar="N", help="untimed frames first (default 10)")
    p.add_argument(
        "--detect-every",
        type=int,
        default=DEFAULT_DETECT_EVERY,
        metavar="N",
        help=f"detect every N frames (default {DEFAULT_DETECT_EVERY})",
    )
    p.add_argument("--device", default=DEFAULT_DEVICE, metavar="DEV", help="auto (default), cpu or cuda[:N]")
    p.add_argument("--precision", choices=PRECISIONS, help="default: each backend's own")
    p.add_argument(
        "--detector",
        choices=DETECTORS,
        default=DEFAULT_DETECTOR,
        help="face detector: auto (default; what swap, cam and serve would run here), mtcnn or scrfd",
    )
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="randomly initialised FaceDancer (the same compute); default: your converted weights",
    )
    p.add_argument(
        "--model-dir", type=Path, metavar="DIR", help="model directory (default: $DANCECAM_HOME or ~/.cache/dancecam)"
    )
    p.add_argument("--out", type=Path, metavar="DIR", help="where to write (default: ./bench-<device>-<date>/)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, only the file names")
    p.set_defaults(handler=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from realtime.bench import run as bench

    options = bench.BenchOptions(
        backends=tuple(b.strip() for b in args.backend.split(",") if b.strip()),
        sizes=args.sizes,  # argparse applies `type` to string defaults too
        faces=args.faces,
        frames=args.frames,
        max_seconds=args.max_seconds,
        warmup=args.warmup,
        detect_every=args.detect_every,
        device=args.device,
        precision=args.precision,
        detector=args.detector,
        random_weights=args.random_weights,
        model_dir=args.model_dir,
        command=_command(args),
    )
    err = Console(stderr=True, highlight=False)
    result = bench.run(options, progress=None if args.quiet else lambda line: err.print(escape(line), soft_wrap=True))
    out = args.out or Path(bench.result_stem(result))
    paths = bench.save(result, out)
    console = Console(highlight=False, width=max(120, Console().width))
    if not args.quiet:
        _print(console, result)
    for path in paths:
        console.print(f"saved {escape(str(path))}", soft_wrap=True)
    return 0


def _command(args: argparse.Namespace) -> str:
    """The run as one explicit command line (every setting spelled out), for the record."""
    words = ["dancecam", "bench", "--sizes", ",".join(f"{w}x{h}" for w, h in args.sizes)]
    words += ["--faces", ",".join(map(str, args.faces)), "--frames", str(args.frames), "--warmup", str(args.warmup)]
    words += ["--max-seconds", f"{args.max_seconds:g}"]
    words += ["--detect-every", str(args.detect_every), "--detector", args.detector, "--device", args.device]
    words += ["--backend", args.backend] if args.backend else []
    words += ["--precision", args.precision] if args.precision else []
    words += ["--random-weights"] if args.random_weights else []
    return shlex.join(words)


def _print(console: Console, result: dict[str, Any]) -> None:
    from realtime.bench import run as bench

    env = result["environment"]
    versions = ", ".join(f"{k} {env[k]}" for k in ("driver", "cuda", "cudnn", "torch", "onnxruntime") if env.get(k))
    console.print(f"[bold]{escape(env['device'])}[/] ({env['device_type']}): {escape(versions)}", soft_wrap=True)
    peaks = ", ".join(f"{k} {p['tflops']:.2f} TFLOP/s" for k, p in result["peaks"].items())
    console.print(f"peak {peaks}; FaceDancer {result['model']['gflop_per_face']:.2f} GFLOP per face", soft_wrap=True)
    table = Table(title=f"end to end, {bench.timed_frames(result['settings'])} per case (ms; floor = compute floor)")
    for col in bench.SUMMARY_HEAD:
        table.add_column(col, justify="left" if col in ("backend", "precision", "size") else "right")
    for row in bench.summary_rows(result):
        table.add_row(*row)
    console.print(table)
    table = Table(title="stages (ms; ms per frame = mean share, detection runs every few frames)")
    for col in bench.STAGE_HEAD:
        table.add_column(col, justify="left" if col in ("case", "stage") else "right")
    for row in bench.stage_rows(result):
        table.add_row(*row)
    console.print(table)
    if below := bench.below_floor(result):
        console.print(f"[yellow]{escape(', '.join(below))}: swap times {bench.BELOW_FLOOR}", soft_wrap=True)
    for b in result["backends"]:
        if b["error"]:
            console.print(f"[yellow]{escape(b['name'])} not run: {escape(b['error'])}", soft_wrap=True)
