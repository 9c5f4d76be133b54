"""The measured peak of a device and the FaceDancer compute floor it implies.

    python -m benchmarks.peak [--device auto|cpu|cuda:N] [--out PATH]

Dense-matmul throughput in fp32, TF32 and fp16 on CUDA (fp32 on the CPU, with a 1x1 convolution beside the matmul),
measured as the other benchmarks measure it (`engines.flops`, once per process), and FaceDancer config C's FLOPs
counted from the module. Prints a table and saves JSON under benchmarks/results/ (`peak-<device>-<date>.json`).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from benchmarks.engines import RESULTS
from benchmarks.saving import save
from engines import flops
from realtime.bench.run import device_name, device_slug, environment
from realtime.pipeline.context import resolve_device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peak", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    gflop = flops.facedancer_flops() / 1e9
    peaks = flops.device_peaks(device)
    table = Table(title=f"measured peak of {device_name(device)}; FaceDancer config C {gflop:.2f} GFLOP per face")
    for col in ("precision", "TFLOP/s", "kernel", "n", "best ms", "floor ms/face", "faces/s at floor"):
        table.add_column(col, justify="left" if col in ("precision", "kernel") else "right")
    for kind, p in peaks.items():
        floor = p.floor_ms(gflop * 1e9)
        table.add_row(
            kind, f"{p.tflops:.3f}", p.kernel, str(p.size), f"{p.ms:.3f}", f"{floor:.3f}", f"{1e3 / floor:.0f}"
        )
    console = Console()
    console.print(table)
    console.print("TF32: fp32 convolutions run in TF32 on CUDA while torch.backends.cudnn.allow_tf32 (default True).")
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result = {
        "benchmark": "peak",
        "date": date,
        "command": "python -m benchmarks.peak " + " ".join(argv if argv is not None else sys.argv[1:]),
        "environment": environment(device),
        "gflop_per_face": gflop,
        "flop_counting": "FlopCounterMode: FLOP = 2 x MAC",
        "peaks": {k: p.to_dict() for k, p in peaks.items()},
        "floor_ms_per_face": {k: p.floor_ms(gflop * 1e9) for k, p in peaks.items()},
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
    }
    out = args.out or RESULTS / f"peak-{device_slug(device)}-{date[:10]}.json"
    save(out, result)
    console.print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
