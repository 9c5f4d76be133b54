"""CPU latency of the networks: FaceDancer (config C, fp32, 256x256) and ArcFace-Res50 (112x112).

    python -m benchmarks.engines [--repeats 20] [--threads N] [--out PATH]

Random weights: the compute is the same as with the released ones. Prints a table and saves JSON under
benchmarks/results/ (device, versions, date, command). The reference point: the official Keras FaceDancer takes
about 360 ms per face on a 2-core CPU of this machine class (tf.function).
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

import torch
from rich.console import Console
from rich.table import Table

from benchmarks.saving import save
from engines.arcface import ArcFace
from engines.facedancer import facedancer
from engines.flops import count_flops, peak
from realtime.bench.run import cpu_name

RESULTS = Path(__file__).parent / "results"


def timed(fn: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def summary(times: list[float]) -> dict[str, float]:
    s = sorted(times)
    return {
        "p50_ms": statistics.median(s),
        "p90_ms": s[min(len(s) - 1, int(0.9 * len(s)))],
        "min_ms": s[0],
        "mean_ms": statistics.fmean(s),
    }


def measure(name: str, fn: Callable[[], object], warmup: int, repeats: int, gflop: float | None = None) -> dict:
    gflop = count_flops(fn) / 1e9 if gflop is None else gflop
    stats = summary(timed(fn, warmup, repeats))
    floor = peak("cpu").floor_ms(gflop * 1e9)  # the compute floor: these FLOPs at the CPU's measured peak
    return {"case": name, "gflop": gflop, **stats, "floor_ms": floor, "gflop_per_s": gflop / (stats["p50_ms"] / 1e3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--compile", action="store_true", help="also time FaceDancer under torch.compile (inductor, frozen weights)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cases: list[tuple[str, Callable[[], object]]] = []
    fd = facedancer("config_c").eval()
    w = fd.map_identity(torch.randn(1, 512))
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    fd_cl = facedancer("config_c").eval().to(memory_format=torch.channels_last)
    fd_cl.load_state_dict(fd.state_dict())
    x_cl = x.contiguous(memory_format=torch.channels_last)
    arc = ArcFace().eval()
    a = torch.rand(1, 3, 112, 112)
    cases.append(("FaceDancer C fp32 b1 channels_last", lambda: fd_cl(x_cl, w)))
    cases.append(("FaceDancer C fp32 b1 contiguous", lambda: fd(x, w)))
    cases.append(("ArcFace-Res50 fp32 b1", lambda: arc(a)))
    rows = []
    with torch.no_grad():
        for name, fn in cases:
            rows.append(measure(name, fn, args.warmup, args.repeats))

    compile_s = None
    if args.compile:  # last: inductor's compile workers must not run beside the eager timings
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # weights become constants: oneDNN prepacking and fusions
        compiled = torch.compile(fd_cl)
        with torch.no_grad():
            t0 = time.perf_counter()
            compiled(x_cl, w)
            compile_s = time.perf_counter() - t0
            name = "FaceDancer C fp32 b1 channels_last, torch.compile"
            rows.append(measure(name, lambda: compiled(x_cl, w), args.warmup, args.repeats, rows[0]["gflop"]))

    device = cpu_name()
    result = {
        "benchmark": "engines",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.engines " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": device,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "repeats": args.repeats,
        "compile_seconds": compile_s,
        "peak": peak("cpu").to_dict(),
        "rows": rows,
        "reference": "official Keras FaceDancer: ~360 ms per face on a 2-core CPU of this class (tf.function)",
    }
    table = Table(title=f"engines on {device} ({torch.get_num_threads()} threads, torch {torch.__version__})")
    for col in ("case", "GFLOP", "p50 ms", "floor ms", "p90 ms", "min ms", "GFLOP/s"):
        table.add_column(col, justify="left" if col == "case" else "right")
    for r in rows:
        table.add_row(
            r["case"],
            f"{r['gflop']:.1f}",
            f"{r['p50_ms']:.1f}",
            f"{r['floor_ms']:.1f}",
            f"{r['p90_ms']:.1f}",
            f"{r['min_ms']:.1f}",
            f"{r['gflop_per_s']:.0f}",
        )
    Console().print(table)
    slug = "cpu-" + "".join(ch if ch.isalnum() else "-" for ch in device.lower()).strip("-")[:40]
    out = args.out or RESULTS / f"engines-{slug}-{result['date'][:10]}.json"
    save(out, result)
    Console().print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
