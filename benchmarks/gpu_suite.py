"""The GPU suite: one command that checks and times everything GPU-side on a CUDA machine with no network.

    python -m benchmarks.gpu_suite                  # on the GPU machine; about 8 minutes at most
    python -m benchmarks.gpu_suite --list-wheels    # what to carry there beyond its image, and the pip line
    python -m benchmarks.gpu_suite --prepare-carry  # .carry/: those wheels within 60 MiB, the photo, the command

Parts, each within its share of `--budget` seconds (the elapsed time is printed as it goes):
1. the device's measured peak (dense matmul fp32 / TF32 / fp16: `engines.flops`), the floor of every time below;
2. the gpu-marked tests (`pytest -m gpu`, junit XML and a log beside the report); a test file whose imports are
   missing here is left out and named, with what it lacks;
3. per backend present (eager fp32 and fp16, CUDA graphs fp16, TensorRT fp16, ONNX Runtime with a CUDA provider):
   FaceDancer accuracy on real-face crops against eager fp32 with TF32 off (mean and max abs error, PSNR), its time
   at batch 1, 4 and 8 (CUDA events per call, p50/p95/p99, faces per second, floor), and the whole pipeline at
   1280x720 with 1 and 4 faces (`realtime.bench.run`);
4. SCRFD at 640 when its weights are in the model directory (else skipped, saying so).
Results: `benchmarks/results/gpu-<device>-<date>.json` and `.md`. Without CUDA it stops (exit 2) unless
`--allow-cpu`, which runs the same plumbing on the CPU (with tiny settings, for tests).

Real faces come from scikit-image's astronaut photo, or, where scikit-image is not installed, from the PNG that
$DANCECAM_ASTRONAUT names (`--prepare-carry` writes it; see tests/faces.py).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import gpu_wheels
from benchmarks.engines import RESULTS
from benchmarks.saving import save
from engines.runners.base import private_stream
from realtime.bench.run import md_table

BUDGET_S = 480.0  # 8 minutes, everything included
TEST_SHARE_S = 240.0  # the most the tests may take
RESERVE_S = 120.0  # kept for the timings when the tests start
# the fast backends first: the budget runs out at the end of this list (the fp32 reference is timed apart)
CUDA_SPECS = (
    ("cuda-graphs", "fp16"),
    ("tensorrt", "fp16"),
    ("eager", "fp16"),
    ("eager", "fp32"),
    ("onnxruntime", "fp32"),
)
BACKEND_MIN_S = 60.0  # a backend is started only with this much left (activation, batches, pipeline)
CPU_SPECS = (("eager", "fp32"), ("onnxruntime", "fp32"))


class Clock:
    """Elapsed time against the budget; every line printed carries it."""

    def __init__(self, budget: float) -> None:
        self.start = time.perf_counter()
        self.budget = budget

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def left(self) -> float:
        return self.budget - self.elapsed

    def say(self, line: str) -> None:
        print(f"[{self.elapsed:6.1f} s] {line}", flush=True)


# --- part 2: the gpu-marked tests -------------------------------------------------------------------------------


def run_tests(stem: Path, timeout: float) -> dict[str, Any]:
    """`pytest -m gpu` on the gpu test files this machine can import, in a subprocess bounded by `timeout`."""
    files, left_out = [], {}
    for path in gpu_wheels.gpu_test_files():
        missing = gpu_wheels.missing_for(path)
        rel = str(path.relative_to(gpu_wheels.ROOT))
        if missing:
            left_out[rel] = f"needs {', '.join(missing)} (carry the wheels: --prepare-carry)"
        else:
            files.append(rel)
    result: dict[str, Any] = {"files": files, "left_out": left_out, "astronaut": astronaut_source()}
    if "pytest" in gpu_wheels.missing_for(gpu_wheels.ROOT / "tests" / "conftest.py"):
        return {**result, "status": "skipped: pytest is not installed (carry the wheels: --prepare-carry)"}
    if not files:
        return {**result, "status": "skipped: no gpu test file can be imported here"}
    xml, log = stem.with_name(stem.name + "-pytest.xml"), stem.with_name(stem.name + "-pytest.log")
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-s", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    result["command"] = " ".join([*cmd[2:], *files])
    t0 = time.perf_counter()
    with log.open("w") as out:
        # its own process group: on timeout the tests and anything they started go together
        proc = subprocess.Popen(
            [*cmd, *files], cwd=gpu_wheels.ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            # SIGINT first: pytest then stops and still writes its junit report (the per-test results)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = None
    result.update(seconds=time.perf_counter() - t0, returncode=rc, log=log.name, junit=xml.name)
    result.update(_junit(xml))
    text = log.read_text(errors="replace")
    # helper tests print their fp16 accuracy (PSNR lines): kept verbatim beside our own numbers
    result["printed_accuracy"] = [ln.strip() for ln in text.splitlines() if "psnr" in ln.lower()][:40]
    if rc is None:
        result["status"] = f"timed out after {timeout:.0f} s"
    elif rc in (0, 5):  # 5: nothing collected
        result["status"] = "ok"
    else:
        result["status"] = "failed"
        result["tail"] = text.splitlines()[-30:]
    return result


def astronaut_source() -> str:
    """Where the real faces come from here (realtime.bench.faces), or why they cannot."""
    from realtime.bench import faces

    if gpu_wheels.importable("skimage"):
        return "scikit-image"
    try:
        faces.astronaut_png()
    except ImportError as e:
        return f"missing: {e}"
    return f"{faces.ASTRONAUT_ENV}={os.environ[faces.ASTRONAUT_ENV]}"


def _junit(path: Path) -> dict[str, Any]:
    counts = Counter(passed=0, failed=0, errors=0, skipped=0)
    failures, skip_reasons = [], Counter()
    if not path.is_file():
        return {"counts": dict(counts), "failures": [], "skip_reasons": {}}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {child.tag: child for child in case}
        if "failure" in kinds or "error" in kinds:
            tag = "failure" if "failure" in kinds else "error"
            counts["failed" if tag == "failure" else "errors"] += 1
            failures.append({"test": name, "message": (kinds[tag].get("message") or "")[:300]})
        elif "skipped" in kinds:
            counts["skipped"] += 1
            skip_reasons[(kinds["skipped"].get("message") or "")[:120]] += 1
        else:
            counts["passed"] += 1
    return {"counts": dict(counts), "failures": failures, "skip_reasons": dict(skip_reasons)}


# --- part 3: backends -------------------------------------------------------------------------------------------


def accuracy(reference: torch.Tensor, output: torch.Tensor) -> dict[str, float]:
    """Mean and max abs error and PSNR (dB, range [-1, 1]; None when identical) of clipped outputs, as shown."""
    diff = output.float().clamp(-1, 1) - reference.float().clamp(-1, 1)
    mse = float(diff.square().mean())
    psnr = None if mse == 0 else 10 * math.log10(4.0 / mse)
    return {"mean_abs": float(diff.abs().mean()), "max_abs": float(diff.abs().max()), "psnr_db": psnr}


def real_crops(device: torch.device, count: int = 4) -> torch.Tensor:
    """(count, 3, 256, 256) aligned real-face crops in [-1, 1]: up to four faces of `realtime.bench.faces`, one across a
    border."""
    from engines.align import estimate_norm
    from realtime.bench.faces import compose_faces
    from realtime.pipeline import warp
    from realtime.pipeline.context import DeviceContext

    frame, placed = compose_faces(1280, 720)
    placed = placed[:count]
    landmarks = torch.tensor(np.stack([p.landmarks for p in placed]), dtype=torch.float64)
    # cropped on the CPU (OpenCV): the crops are the same input for every backend and the reference, and the
    # timings need no CuPy kernel (a compile failure there is the pipeline's to report, not theirs)
    ctx = DeviceContext("cpu")
    try:
        crops = warp.align(ctx.upload(frame), estimate_norm(landmarks, 256).numpy(), 256).float().clone()
    finally:
        ctx.close()
    return crops.to(device)


def reference_output(model: torch.nn.Module, crops: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Eager fp32 with TF32 off in the convolutions (all but 0.005 % of the FLOPs): the reference of every backend."""
    from engines.runners.eager import ieee_fp32_convolutions

    with ieee_fp32_convolutions(), torch.inference_mode():
        return model(crops, w.expand(crops.shape[0], -1)).float()


def time_runner(runner: Any, feeds: dict[str, torch.Tensor], iters: int, max_s: float) -> dict[str, Any]:
    """Per-call time (CUDA events on a private stream, as a pipeline runs it: on the default stream TensorRT would
    synchronise the device on every call; or the host clock) and back-to-back throughput."""
    cuda = runner.device.type == "cuda"
    with private_stream(runner.device):
        for _ in range(3 if cuda else 1):  # a CPU call takes a second: one warm-up is enough there
            runner.infer(feeds)
        if cuda:
            torch.cuda.synchronize(runner.device)
        marks: list[Any] = []
        start = time.perf_counter()
        while len(marks) < iters and time.perf_counter() - start < max_s:
            if cuda:
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()  # on the current stream: the private one
                runner.infer(feeds)
                end.record()
                marks.append((begin, end))
            else:
                t0 = time.perf_counter()
                runner.infer(feeds)
                marks.append((time.perf_counter() - t0) * 1e3)
        if cuda:
            torch.cuda.synchronize(runner.device)
            marks = [b.elapsed_time(e) for b, e in marks]
        wall = time.perf_counter() - start
    a = np.asarray(marks)
    p50, p95, p99 = np.percentile(a, (50, 95, 99))
    batch = int(next(iter(feeds.values())).shape[0])
    return {
        "batch": batch,
        "iters": len(marks),
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "per_face_p50_ms": float(p50) / batch,
        "faces_per_s": batch * len(marks) / wall,
    }


def backend_specs(device: torch.device, wanted: list[str]) -> tuple[list[tuple[str, str]], dict[str, str]]:
    from engines.runners.select import available

    reasons = {k: v for k, v in available(device).items() if v}
    if device.type == "cuda" and "onnxruntime" not in reasons:
        from engines.runners.onnxruntime import cuda_provider_present

        if not cuda_provider_present():
            reasons["onnxruntime"] = "no CUDA provider (onnxruntime-gpu): its CPU fallback is no GPU timing"
    specs = CUDA_SPECS if device.type == "cuda" else CPU_SPECS
    chosen = [(b, p) for b, p in specs if b not in reasons and (not wanted or b in wanted)]
    return chosen, {b: r for b, r in reasons.items() if not wanted or b in wanted}


def face_frame(width: int, height: int, faces: int) -> np.ndarray:
    """`realtime.bench.run.face_frame`'s frame, built from `realtime.bench.faces` directly: that one asks for
    scikit-image, this one also takes the astronaut PNG of $DANCECAM_ASTRONAUT."""
    from realtime.bench.faces import Placement, compose_faces
    from realtime.bench.run import grid_placements

    frame, _ = compose_faces(width, height, tuple(Placement(*p) for p in grid_placements(faces)))
    return frame


def run_backends(clock: Clock, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from engines import flops
    from engines.errors import ModelMissingError
    from engines.runners.base import facedancer_io
    from engines.runners.select import create_runner
    from realtime.bench import run as bench
    from realtime.pipeline.frame import FaceDancerSwap

    try:
        model, key, label = bench.load_model(bench.BenchOptions(random_weights=args.random_weights), device)
    except (ModelMissingError, ImportError):  # the same compute; random weights' accuracy says less, the report says so
        model, key, label = bench.load_model(bench.BenchOptions(random_weights=True), device)
        label += " (no converted weights here)"
    specs, missing = backend_specs(device, args.backends)
    io = facedancer_io(model.config.mapping_width, model.config.image_size, bench.MAX_FACES)
    crops = real_crops(device, 4 if device.type == "cuda" else 1)  # on a CPU each crop costs a second
    z_id = bench.random_identity()
    with torch.inference_mode():
        w = model.map_identity(z_id.to(device)).float()
    reference = reference_output(model, crops, w)
    pipe_opts = bench.BenchOptions(
        sizes=(args.size,), faces=tuple(args.faces), frames=args.frames, warmup=args.warmup, random_weights=True
    )
    try:
        detector, detector_line = bench.load_bench_detector(pipe_opts, device, ["auto"])  # what the product runs
    except Exception as e:  # MTCNN's weights come with facenet-pytorch: without it, timings only, no pipeline
        detector, detector_line = None, f"no detector ({type(e).__name__}: {e}): pipeline cases skipped"
    clock.say(detector_line)
    out: dict[str, Any] = {"model": label, "weights": key, "missing": missing, "detector": detector_line, "runs": []}
    for backend, precision in specs:
        if clock.left < BACKEND_MIN_S:
            out["runs"].append({"backend": backend, "precision": precision, "status": "skipped: budget spent"})
            continue
        run: dict[str, Any] = {"backend": backend, "precision": precision}
        out["runs"].append(run)
        clock.say(f"{backend} {precision}: activating ...")
        runner = None
        try:
            t0 = time.perf_counter()
            runner = create_runner(backend, model, io, device, precision=precision, weights_key=key)  # type: ignore[arg-type]
            runner.activate()
            run["activate_s"] = time.perf_counter() - t0
            feeds = {"target": crops, "w": w.expand(crops.shape[0], -1).contiguous()}
            run["accuracy"] = accuracy(reference, runner.infer(feeds)["swapped"])
            floor = flops.facedancer_floor(device, precision, 1, model.config).ms
            run["facedancer"] = []
            for batch in args.batches:
                batch_crops = crops.repeat(math.ceil(batch / crops.shape[0]), 1, 1, 1)[:batch].contiguous()
                feeds = {"target": batch_crops, "w": w.expand(batch, -1).contiguous()}
                row = time_runner(runner, feeds, args.iters, max_s=min(3.0, max(0.5, clock.left - 60)))
                row["floor_ms"] = floor * batch
                run["facedancer"].append(row)
                clock.say(
                    f"{backend} {precision} batch {batch}: p50 {row['p50_ms']:.2f} ms (floor {row['floor_ms']:.2f} "
                    f"ms), {row['faces_per_s']:.0f} faces/s"
                )
            run["pipeline"] = []
            engine = FaceDancerSwap(model, z_id, runner)
            for n in args.faces:
                if detector is None or clock.left < 15:
                    status = detector_line if detector is None else "skipped: budget spent"
                    run["pipeline"].append({"faces": n, "status": status})
                    continue
                frame = face_frame(*args.size, n)
                case = bench.run_case(engine, device, frame, n, pipe_opts, detector)
                case.update(backend=backend, precision=precision, size=f"{args.size[0]}x{args.size[1]}", faces=n)
                case["floor_ms"] = floor * case["faces_found"]["mean"]
                del case["timeline_ms"]  # the bench command plots it; here the summary is enough
                run["pipeline"].append(case)
                clock.say(
                    f"{backend} {precision} pipeline {case['size']} x{n}: p50 {case['latency_ms']['p50']:.2f} ms "
                    f"(floor {case['floor_ms']:.2f} ms)"
                )
            run["status"] = "ok"
        except Exception as e:  # one backend failing is a result, not the end of the suite
            run["status"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            clock.say(f"{backend} {precision}: {run['status']}")
        finally:
            if runner is not None:
                runner.close()
    return out


# --- part 4: SCRFD ----------------------------------------------------------------------------------------------


def run_scrfd(device: torch.device, iters: int) -> dict[str, Any]:
    """SCRFD at 640 on a 1280x720 frame of four faces, on every runtime the detector can use here."""
    from engines import scrfd
    from engines.detect import image_tensor
    from engines.detectors import scrfd_backend
    from engines.runners.onnxruntime import OnnxRuntimeRunner

    path = scrfd.default_model_path()
    if not path.is_file():
        return {"status": f"skipped: weights not present ({path}; dancecam models download scrfd_10g)"}
    image = image_tensor(face_frame(1280, 720, 4), device)
    io = scrfd.scrfd_io(640)
    runners: list[tuple[str, Any]] = [("onnxruntime", lambda: OnnxRuntimeRunner(path, io, device))]
    if scrfd_backend("tensorrt", device)[0] == "tensorrt":
        from engines.runners.tensorrt_onnx import TensorRTOnnxRunner

        cache = path.parent / "compiled"
        runners.append(("tensorrt", lambda: TensorRTOnnxRunner(path, io, device, cache_dir=cache)))
    out: list[dict[str, Any]] = []
    for name, make in runners:
        try:
            with scrfd.SCRFD(device=device, runner=make()) as det, private_stream(device):
                found = len(det(image))
                times = []
                for _ in range(iters):
                    t0 = time.perf_counter()
                    det(image)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    times.append((time.perf_counter() - t0) * 1e3)
                providers = list(getattr(det.runner, "providers", []))
                precision = det.runner.precision
        except Exception as e:  # one runtime failing leaves the others' numbers
            out.append({"backend": name, "status": f"failed: {type(e).__name__}: {e}"})
            continue
        p50, p99 = np.percentile(times, (50, 99))
        out.append(
            {
                "backend": name,
                "status": "ok",
                "precision": precision,
                "providers": providers,
                "faces": found,
                "p50_ms": float(p50),
                "p99_ms": float(p99),
            }
        )
    return {"status": "ok", "backends": out}


# --- report -----------------------------------------------------------------------------------------------------


def _f(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    versions = ", ".join(
        f"{k} {env[k]}" for k in ("driver", "cuda", "cudnn", "torch", "onnxruntime", "cupy") if env.get(k)
    )
    peaks = ", ".join(f"{k} {p['tflops']:.2f} TFLOP/s" for k, p in result["peaks"].items() if isinstance(p, dict))
    head = [
        f"# GPU suite: {env['device']}",
        "",
        f"{result['date']}, `{result['command']}`, {result['seconds']:.0f} s of a {result['budget_s']:.0f} s budget",
        "",
        f"- Versions: {versions}",
        f"- Measured peak: {peaks}; FaceDancer {result['gflop_per_face']:.2f} GFLOP per face (2 x MAC); floor = "
        "FLOPs / peak of the precision (fp32: IEEE, TF32 off)",
    ]
    back = result.get("backends", {})
    runs = back.get("runs", [])
    sections = [
        "\n".join(head),
        _md_tests(result.get("tests", {})),
        _md_facedancer(back, runs),
        _md_pipeline(runs, back.get("detector")),
        "## SCRFD 640 on a 1280x720 frame\n\n" + _scrfd_line(result.get("scrfd", {})),
        _md_targets(runs),
        "## Parts\n\n"
        + "\n".join(md_table(["part", "seconds"], [[k, f"{v:.1f}"] for k, v in result["parts_s"].items()])),
    ]
    return "\n\n".join(sections) + "\n"


def _md_tests(tests: dict[str, Any]) -> str:
    lines = ["## Tests (pytest -m gpu)", "", f"{tests.get('status', 'not run')}: {tests.get('counts', {})}"]
    lines += [f"- FAILED {f['test']}: {f['message']}" for f in tests.get("failures", [])]
    if "astronaut" in tests:
        lines.append(f"- real faces from: {tests['astronaut']}")
    lines += [f"- left out {k}: {v}" for k, v in tests.get("left_out", {}).items()]
    lines += [f"- skipped x{n}: {why}" for why, n in tests.get("skip_reasons", {}).items()]
    lines += [f"- printed: `{ln}`" for ln in tests.get("printed_accuracy", [])]
    return "\n".join(lines)


def _md_facedancer(back: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    rows, acc = [], []
    for run in runs:
        name = [run["backend"], run["precision"]]
        for r in run.get("facedancer", []):
            times = [_f(r[k]) for k in ("p50_ms", "p95_ms", "p99_ms", "floor_ms")]
            rows.append(
                [
                    *name,
                    str(r["batch"]),
                    *times,
                    _f(r["per_face_p50_ms"], ".3f"),
                    _f(r["faces_per_s"], ".0f" if r["faces_per_s"] >= 100 else ".2f"),
                ]
            )
        if "accuracy" in run:
            a = run["accuracy"]
            psnr = "identical" if a["psnr_db"] is None else _f(a["psnr_db"], ".1f")
            acc.append([*name, _f(a["mean_abs"], ".2e"), _f(a["max_abs"], ".2e"), psnr])
    head = ["backend", "precision", "batch", "p50 ms", "p95 ms", "p99 ms", "floor ms", "ms per face", "faces/s"]
    lines = [
        f"## FaceDancer ({back.get('model', '-')}), per call (CUDA events; host clock on a CPU)",
        "",
        *md_table(head, rows),
        "",
    ]
    lines += [f"- {r['backend']} {r['precision']}: {r['status']}" for r in runs if r.get("status", "ok") != "ok"]
    lines += [f"- not present: {k}: {v}" for k, v in back.get("missing", {}).items()]
    lines += ["", "### Accuracy against eager fp32 (TF32 off) on real-face crops, outputs clipped to [-1, 1]", ""]
    return "\n".join(lines + md_table(["backend", "precision", "mean abs", "max abs", "PSNR dB"], acc))


def _md_pipeline(runs: list[dict[str, Any]], detector: str | None = None) -> str:
    from realtime.bench.run import SUMMARY_HEAD, summary_rows

    rows = []
    for case in (c for run in runs for c in run.get("pipeline", []) if "latency_ms" in c):
        row = summary_rows({"cases": [case]})[0]
        dev = case.get("device_ms") or {}
        rows.append([*row[:7], _f(dev.get("p50")), _f(dev.get("p99")), *row[7:]])
    head = [*SUMMARY_HEAD[:7], "device p50", "device p99", *SUMMARY_HEAD[7:]]
    title = "## Pipeline (latency: host wall per frame; device: CUDA events, upload to download)"
    note = [f"{detector[0].upper()}{detector[1:]}.", ""] if detector else []
    return "\n".join([title, "", *note, *md_table(head, rows)])


def _scrfd_line(sc: dict[str, Any]) -> str:
    if sc.get("status") != "ok":
        return sc.get("status", "not run")
    lines = []
    for b in sc["backends"]:
        if b["status"] != "ok":
            lines.append(f"- {b['backend']}: {b['status']}")
            continue
        where = f" ({', '.join(b['providers'])})" if b["providers"] else ""
        lines.append(
            f"- {b['backend']} {b['precision']}{where}: p50 {b['p50_ms']:.2f} ms, p99 {b['p99_ms']:.2f} ms, "
            f"{b['faces']} faces found"
        )
    return "\n".join(lines)


def _md_targets(runs: list[dict[str, Any]]) -> str:
    """The issue's H100 targets against the best run here (on other GPUs, read them as ratios)."""

    def best(values: list[float], low: bool = True) -> float | None:
        return (min if low else max)(values) if values else None

    fd = [(run, r) for run in runs for r in run.get("facedancer", [])]
    pipe = [c for run in runs for c in run.get("pipeline", []) if c.get("faces") == 1 and c.get("device_ms")]
    b1 = best([r["per_face_p50_ms"] for run, r in fd if r["batch"] == 1 and run["precision"] == "fp16"])
    b8 = best([r["faces_per_s"] for _, r in fd if r["batch"] == 8], low=False)
    p50 = best([c["device_ms"]["p50"] for c in pipe if c["size"] == "1280x720"])
    p99 = best([c["device_ms"]["p99"] for c in pipe if c["size"] == "1280x720"])
    rows = [
        ["FaceDancer batch 1 fp16, ms per face", "<= 1.0", _f(b1), _met(b1, 1.0)],
        ["FaceDancer batch 8, faces/s", ">= 3000", _f(b8, ".0f"), _met(b8, 3000, low=False)],
        ["pipeline 1280x720 one face, device p50 ms", "<= 3", _f(p50), _met(p50, 3.0)],
        ["pipeline 1280x720 one face, device p99 ms", "<= 5", _f(p99), _met(p99, 5.0)],
    ]
    return "\n".join(["## Targets (issue 6, on an H100)", "", *md_table(["target", "wanted", "best here", ""], rows)])


def _met(value: float | None, bound: float, low: bool = True) -> str:
    if value is None:
        return "not measured"
    return "met" if (value <= bound if low else value >= bound) else "not met"


# --- main -------------------------------------------------------------------------------------------------------


def list_wheels() -> int:
    wheels = gpu_wheels.needed_wheels([Path(__file__)])
    print("Wheels the GPU suite needs beyond the device image (" + ", ".join(gpu_wheels.IMAGE_MODULES) + "):")
    for w in wheels:
        here = "" if w.importable else "  [missing on this machine]"
        print(f"  {w.requirement:32} {w.module:18} {w.why}{here}")
    absent = [m for m in gpu_wheels.IMAGE_MODULES if not gpu_wheels.importable(m)]
    if absent:  # expected on a CPU machine (cupy, triton); on the device these must come with its image
        print(f"  (not importable here, expected from the device image: {', '.join(absent)})")
    print("\nFetch them on a machine with network (then copy wheels/ to the device):")
    print(gpu_wheels.download_command(wheels))
    print("\nInstall them there:")
    print(gpu_wheels.install_command(wheels))
    print(
        f"\nAll of them are over the {gpu_wheels.TRAVEL_LIMIT_MIB:g} MiB the device tool carries: --prepare-carry "
        "fetches what fits its budget into .carry/, with the astronaut photo, and prints the command"
    )
    return 0


def _size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_suite", description=__doc__.split("\n")[0])
    p.add_argument("--list-wheels", action="store_true", help="print the wheels to carry and the pip line, then stop")
    p.add_argument(
        "--prepare-carry",
        nargs="?",
        const=gpu_wheels.CARRY_DIR,
        type=Path,
        metavar="DIR",
        help=f"fetch the wheels beyond the device image into DIR/wheels (default {gpu_wheels.CARRY_DIR}), dropping "
        "whole packages in a fixed order to fit --carry-budget, write DIR/astronaut.png and DIR/README.txt, print "
        "the device command; then stop",
    )
    p.add_argument(
        "--carry-budget",
        type=float,
        default=gpu_wheels.CARRY_BUDGET_MIB,
        metavar="MIB",
        help=f"the carry's size limit, MiB (default {gpu_wheels.CARRY_BUDGET_MIB:g})",
    )
    p.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no CUDA (plumbing check)")
    p.add_argument("--budget", type=float, default=BUDGET_S, help=f"seconds for everything (default {BUDGET_S:.0f})")
    p.add_argument("--no-tests", action="store_true", help="skip the pytest part")
    p.add_argument("--backends", default="", help="only these (comma-separated), e.g. eager,cuda-graphs")
    p.add_argument("--batches", default="1,4,8", help="FaceDancer batches (default 1,4,8)")
    p.add_argument("--iters", type=int, default=200, help="timed calls per batch, at most (default 200; 3 s cap)")
    p.add_argument("--size", type=_size, default=(1280, 720), help="pipeline frame size (default 1280x720)")
    p.add_argument("--faces", default="1,4", help="pipeline face counts (default 1,4)")
    p.add_argument("--frames", type=int, default=100, help="pipeline frames per case (default 100)")
    p.add_argument("--warmup", type=int, default=10, help="pipeline warm-up frames (default 10)")
    p.add_argument("--random-weights", action="store_true", help="even when converted weights are present")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory (default benchmarks/results)")
    args = p.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    from engines.runners.select import BACKENDS

    if unknown := [b for b in args.backends if b not in BACKENDS]:
        p.error(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    args.batches = [int(b) for b in args.batches.split(",")]
    args.faces = [int(n) for n in args.faces.split(",")]
    if not all(1 <= n <= 8 for n in (*args.batches, *args.faces)):
        p.error("batches and face counts must be 1..8 (the runners' largest batch)")
    args.argv = sys.argv[1:] if argv is None else argv
    return args


def _part(clock: Clock, parts: dict[str, float], name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one part, timed; a part that raises is reported as failed and the suite goes on to the next."""
    t0 = time.perf_counter()
    clock.say(f"{name} ...")
    try:
        return fn()
    except Exception as e:
        clock.say(f"{name} failed: {type(e).__name__}: {e}")
        return {"status": f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    finally:
        parts[name] = time.perf_counter() - t0
        clock.say(f"{name} done in {parts[name]:.1f} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_wheels:
        return list_wheels()
    if args.prepare_carry is not None:
        return gpu_wheels.prepare_carry(args.prepare_carry, args.carry_budget, [Path(__file__)])
    cuda = torch.cuda.is_available() and torch.cuda.device_count() > 0
    if not cuda and not args.allow_cpu:
        print(
            "no CUDA device here (torch.cuda.is_available() is False): the GPU suite needs one; --allow-cpu runs "
            "its plumbing on the CPU",
            file=sys.stderr,
        )
        return 2
    from engines import flops
    from realtime.bench import run as bench

    clock = Clock(args.budget)
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    stem = args.out / f"gpu-{bench.device_slug(device)}-{date[:10]}"
    args.out.mkdir(parents=True, exist_ok=True)
    clock.say(f"GPU suite on {bench.device_name(device)}, budget {args.budget:.0f} s")
    parts: dict[str, float] = {}
    result: dict[str, Any] = {
        "benchmark": "gpu_suite",
        "date": date,
        "command": "python -m benchmarks.gpu_suite " + " ".join(args.argv),
        "budget_s": args.budget,
        "environment": bench.environment(device),
        "parts_s": parts,
    }
    result["peaks"] = _part(
        clock, parts, "peak", lambda: {k: p.to_dict() for k, p in flops.device_peaks(device).items()}
    )
    if cuda:
        torch.cuda.empty_cache()  # the matmul operands' cache: the tests' process needs the memory more
    result["gflop_per_face"] = flops.facedancer_flops() / 1e9
    if args.no_tests:
        result["tests"] = {"status": "skipped: --no-tests"}
    elif (timeout := min(TEST_SHARE_S, clock.left - RESERVE_S)) < 10:
        result["tests"] = {"status": f"skipped: budget ({clock.left:.0f} s left)"}
    else:
        result["tests"] = _part(clock, parts, "tests", lambda: run_tests(stem, timeout))
        clock.say(f"tests: {result['tests']['status']} {result['tests'].get('counts', '')}")
        clock.say(f"real faces from: {result['tests'].get('astronaut', '-')}")
    result["backends"] = _part(clock, parts, "backends", lambda: run_backends(clock, args, device))
    result["scrfd"] = _part(clock, parts, "scrfd", lambda: run_scrfd(device, 30 if cuda else 2))
    clock.say(f"scrfd: {result['scrfd']['status']}")
    result["seconds"] = clock.elapsed
    save(stem.with_suffix(".json"), result, markdown(result))
    clock.say(f"saved {stem}.json and {stem}.md")
    statuses = [
        result["tests"].get("status", ""),
        result["scrfd"].get("status", ""),
        result["backends"].get("status", ""),
    ]
    statuses += [r.get("status", "") for r in result["backends"].get("runs", [])]
    failed = any(st.startswith(("failed", "timed out")) for st in statuses)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
