"""The privacy benchmark's command line: build the clips, run file mode and a live session per variant, score,
print, save. See the package docstring (benchmarks/privacy/__init__.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks.privacy import clips as clipping
from benchmarks.privacy import filemode, scenes
from benchmarks.privacy.leaks import UNCHANGED_CORRELATION

RESULTS = Path(__file__).resolve().parents[1] / "results"
MODES = ("file", "live")
FRAME_MS = 1000.0 / scenes.FPS
CALIBRATION_SCENE = "cross"  # two faces, one passing in front of the other: the busiest faces of the set
CHECK = "detect_on_change"


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"give whole numbers separated by commas, not {text!r}") from None
    if not values or any(not 1 <= v <= 120 for v in values):
        raise argparse.ArgumentTypeError(f"detection intervals must be 1..120 frames, not {text!r}")
    return values


def parse(argv: list[str] | None) -> argparse.Namespace:
    from benchmarks.privacy import __doc__ as doc

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.privacy", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenes", default="all", help="comma-separated scene names, or all (default)")
    parser.add_argument("--intervals", type=_ints, default=[1, 5, 10], help="detection intervals (default 1,5,10)")
    parser.add_argument("--modes", default="file,live", help="file, live or file,live (default both)")
    parser.add_argument("--seconds", type=float, default=1.5, help="length of each scene (default 1.5)")
    parser.add_argument("--style", default=None, help="the anonymize style (default: the product's)")
    parser.add_argument(
        "--reference-every",
        type=int,
        default=3,
        help="run facenet-pytorch's MTCNN on every Nth input frame as the second ground truth (0: not at all)",
    )
    parser.add_argument(
        "--hold", type=float, default=0.3, help="live: seconds each scene's first frame is held, unscored (0.3)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on 2 shared cores a second OpenMP thread stalls whenever the other core "
        "is busy, by up to 2 s a frame here)",
    )
    parser.add_argument(
        "--jobs", type=int, default=min(2, os.cpu_count() or 1), help="file-mode runs at a time (default 2)"
    )
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/privacy-<device>-<date>.json)")
    args = parser.parse_args(argv)
    known = scenes.all_scenes(args.seconds)
    args.scene_names = list(known) if args.scenes == "all" else [s.strip() for s in args.scenes.split(",") if s]
    unknown = [s for s in args.scene_names if s not in known]
    if unknown or not args.scene_names:
        parser.error(f"unknown scene {', '.join(unknown) or '(none)'}; scenes: {', '.join(known)}")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or any(m not in MODES for m in args.modes):
        parser.error("--modes takes file, live or file,live")
    if not 0.5 <= args.seconds <= 30:
        parser.error("--seconds must be 0.5..30")
    if args.reference_every < 0 or args.threads < 1 or args.hold < 0 or args.jobs < 1:
        parser.error("--reference-every and --hold must be >= 0, --threads and --jobs >= 1")
    return args


# --- numbers ------------------------------------------------------------------------------------------------------


def pcts(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "n": 0}
    p50, p95 = np.percentile(np.asarray(values, np.float64), [50, 95])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2), "n": len(values)}


def spread(values: list[float]) -> dict[str, float | None]:
    v = np.asarray([x for x in values if np.isfinite(x)], np.float64)
    if not len(v):
        return {"min": None, "p5": None, "p50": None, "p95": None, "max": None, "n": 0}
    lo, p5, p50, p95, hi = np.percentile(v, [0, 5, 50, 95, 100])
    return {
        "min": round(float(lo), 3),
        "p5": round(float(p5), 3),
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "max": round(float(hi), 3),
        "n": len(v),
    }


def delta(a: dict, b: dict) -> dict[str, float | None]:
    """a - b for p50 and p95, in ms and in frames at 30 fps."""
    out: dict[str, float | None] = {}
    for key in ("p50", "p95"):
        d = None if a.get(key) is None or b.get(key) is None else round(a[key] - b[key], 2)
        out[f"{key}_ms"] = d
        out[f"{key}_frames"] = None if d is None else round(d / FRAME_MS, 2)
    return out


def totals(scores: dict[str, dict]) -> dict[str, int]:
    keys = ("frames_scored", "face_frames", "leaked", "reference_face_frames", "reference_leaked")
    keys += ("reference_stray", "reference_stray_unchanged")
    return {k: sum(s[k] for s in scores.values()) for k in keys}


def label(run: dict) -> str:
    check = run["detect_on_change"]
    return f"{run['interval']} " + ("on" if check else "off" if check is False else "default")


# --- the runs -----------------------------------------------------------------------------------------------------


# --- work for the worker processes (file mode runs single-threaded, `--jobs` at a time) -----------------------

_DETECTOR: Any = None


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _render(name: str, seconds: float, path: Path) -> clipping.Clip:
    return clipping.write_clip(name, seconds, path)


def _reference(clip: clipping.Clip, every: int) -> tuple[dict, str]:
    global _DETECTOR
    from benchmarks.privacy.reference import ReferenceDetector

    if _DETECTOR is None:
        _DETECTOR = ReferenceDetector()
    return clipping.find_reference(clip, _DETECTOR, every), _DETECTOR.loaded_as


def _file_task(clip: clipping.Clip, engine: str, style: str, interval: int, check: bool | None, source: Any) -> dict:
    sources = [(source, 1.0)] if source is not None else None
    r = filemode.run_scene(clip, filemode.swap_options(engine, style, interval, check), sources)
    return {
        "score": r.score.to_dict(),
        "correlations": r.score.correlations,
        "ms": r.log.ms,
        "detections": int(sum(r.log.detected)),
        "entry_detections": r.log.entry_detections,
        "notes": r.notes,
    }


class Inline:
    """`ProcessPoolExecutor.map` in this process (--jobs 1: no worker start-up, as the tests run it)."""

    def map(self, fn: Any, *columns: Any) -> Any:
        return map(fn, *columns)

    def __enter__(self) -> Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def executor(jobs: int, threads: int) -> Any:
    if jobs <= 1:
        return Inline()
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's thread pools
    return ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=(threads,))


def run_file(
    pool: Any, clips: list[clipping.Clip], variants: list[tuple[int, bool | None]], style: str, console: Console
) -> list:
    tasks = [(clip, "anonymize", style, i, c, None) for i, c in variants for clip in clips]
    start = time.perf_counter()
    done = list(pool.map(_file_task, *zip(*tasks, strict=True)))
    console.print(f"file mode: {len(tasks)} scene runs in {time.perf_counter() - start:.0f} s")
    runs = []
    for v, (interval, check) in enumerate(variants):
        mine = done[v * len(clips) : (v + 1) * len(clips)]
        per_scene = {
            c.name: {**d["score"], "detections": d["detections"], "entry_detections": d["entry_detections"]}
            for c, d in zip(clips, mine, strict=True)
        }
        ms = [x for d in mine for x in d["ms"]]
        notes: list[str] = []
        for d in mine:
            notes += [n for n in d["notes"] if n not in notes]
        run = {
            "interval": interval,
            "detect_on_change": check,
            "scenes": per_scene,
            "totals": totals(per_scene),
            "pipeline_ms": pcts(ms),
            "detections_per_frame": round(sum(d["detections"] for d in mine) / max(1, len(ms)), 3),
            "entry_detections_per_frame": round(sum(d["entry_detections"] for d in mine) / max(1, len(ms)), 3),
            "notes": notes,
        }
        t = run["totals"]
        console.print(
            f"file {label(run)}: {t['leaked']} leaked of {t['face_frames']} face-frames, pipeline p50/p95 "
            f"{run['pipeline_ms']['p50']}/{run['pipeline_ms']['p95']} ms"
        )
        runs.append(run)
    return runs


def calibrate_file(pool: Any, clip: clipping.Clip, source: Path, console: Console) -> dict[str, Any]:
    """What the leak test gives on one scene with every frame detected: the identity engine (faces pasted back
    unchanged: all should count as leaked) and each anonymize style (none should)."""
    from realtime.pipeline.choices import STYLES

    cases: list[tuple[str, str, str]] = [("identity", "identity", "blur")]
    cases += [(f"anonymize {s}", "anonymize", s) for s in STYLES]
    tasks = [(clip, engine, style, 1, None, source if engine == "identity" else None) for _, engine, style in cases]
    out = {}
    for (name, _, _), d in zip(cases, pool.map(_file_task, *zip(*tasks, strict=True)), strict=True):
        out[name] = {
            "scene": clip.name,
            "face_frames": d["score"]["face_frames"],
            "judged_leaked": d["score"]["leaked"],
            "highest_cell_correlation": spread(d["correlations"]),
        }
        console.print(f"calibration, file, {name}: {d['score']['leaked']}/{d['score']['face_frames']} judged leaked")
    return out


def run_live(
    clips: list[clipping.Clip],
    calibration: list[clipping.Clip],
    variants: list[tuple[int, bool | None]],
    style: str,
    hold_s: float,
    console: Console,
) -> tuple[list, dict]:
    from benchmarks.e2e_webrtc import ServerThread
    from benchmarks.privacy import live
    from realtime.live.session import LiveServices

    services = LiveServices.load("anonymize", "cpu")
    server = ServerThread(services, max_sessions=1)
    url = server.start()
    frames = [c.rgb_frames() for c in clips]
    hold = round(hold_s * scenes.FPS)
    runs = []
    try:
        for interval, check in variants:
            settings: dict[str, Any] = {"detect_every": interval, "style": style}
            if check is not None:
                settings[CHECK] = check
            r = asyncio.run(live.run_session(url, clips, frames, settings, scenes.FPS, hold))
            per_scene = {name: s.to_dict() for name, s in r.scores.items()}
            server_share = r.server.get("server_latency_ms", {})
            run = {
                "interval": interval,
                "detect_on_change": check,
                "scenes": per_scene,
                "totals": totals(per_scene),
                "sent": r.sent,
                "returned": r.returned,
                "repeats": r.repeats,
                "unreadable": r.unreadable,
                "round_trip_ms": pcts(r.round_trip_ms),
                "server_latency_ms": server_share,
                "degradation_levels_seen": sorted(set(r.levels)),
                "server": r.server,
            }
            t = run["totals"]
            console.print(
                f"live {label(run)}: {t['leaked']} leaked of {t['face_frames']} face-frames "
                f"({r.returned}/{r.sent} frames back), round trip p50/p95 {run['round_trip_ms']['p50']}/"
                f"{run['round_trip_ms']['p95']} ms, degradation levels {run['degradation_levels_seen']}"
            )
            runs.append(run)
        # the same path with swapping off: every face comes back unchanged, through VP8 twice
        cal_frames = [c.rgb_frames() for c in calibration]
        r = asyncio.run(live.run_session(url, calibration, cal_frames, {"swap": False}, scenes.FPS, hold))
        scored = list(r.scores.values())
        cal = {
            "scenes": [c.name for c in calibration],
            "face_frames": sum(s.face_frames for s in scored),
            "judged_leaked": sum(s.leaked for s in scored),
            "highest_cell_correlation": spread([c for s in scored for c in s.correlations]),
            "returned": r.returned,
            "sent": r.sent,
        }
        console.print(f"calibration, live, swap off: {cal['judged_leaked']}/{cal['face_frames']} judged leaked")
    finally:
        server.stop()
    return runs, {"swap off": cal}


def added(runs: list[dict], key: str) -> None:
    """Each run's latency against the same interval with the check off, and against interval 1."""
    by = {(r["interval"], r["detect_on_change"]): r for r in runs}
    base1 = by.get((1, False)) or by.get((1, None))
    for r in runs:
        off = by.get((r["interval"], False))
        r["added_vs_check_off"] = delta(r[key], off[key]) if off is not None and r is not off else None
        r["added_vs_interval_1"] = delta(r[key], base1[key]) if base1 is not None and r is not base1 else None


# --- output -------------------------------------------------------------------------------------------------------


def _cell(score: dict) -> str:
    return f"{score['leaked']}/{score['face_frames']}"


def detections(mode: str, r: dict) -> str:
    """Periodic + change-check detections: per frame in file mode, counted by the server in a live session."""
    if mode == "file":
        return f"{r['detections_per_frame']:.2f} + {r.get('entry_detections_per_frame', 0):.2f}"
    counters = r.get("server", {}).get("counters", {})
    return f"{counters.get('detections', '-')} + {counters.get('entry_detections', '-')}"


def summary_rows(result: dict) -> list[list[str]]:
    rows = []
    for mode in MODES:
        for r in result.get(mode, []):
            t = r["totals"]
            lat = r["pipeline_ms"] if mode == "file" else r["round_trip_ms"]
            add = r.get("added_vs_check_off") or {}
            rows.append(
                [
                    mode,
                    label(r),
                    str(t["face_frames"]),
                    str(t["leaked"]),
                    f"{100 * t['leaked'] / max(1, t['face_frames']):.1f}",
                    f"{t['reference_leaked']}/{t['reference_face_frames']} (+{t['reference_stray_unchanged']} stray)",
                    f"{lat['p50']} / {lat['p95']}",
                    "-" if add.get("p95_ms") is None else f"{add['p50_ms']:+.1f} / {add['p95_ms']:+.1f}",
                    "-" if add.get("p95_frames") is None else f"{add['p95_frames']:+.2f}",
                    detections(mode, r),
                    f"{r['returned']}/{r['sent']}; levels {r['degradation_levels_seen']}" if mode == "live" else "-",
                ]
            )
    return rows


SUMMARY = (
    "mode", "interval, check", "face-frames", "leaked", "leaked %", "reference: leaked/face-frames",
    "ms p50 / p95", "added vs off p50 / p95 ms", "added p95 frames",
    "detections + entry detections (per frame; live: count)",
    "live: frames back; degradation levels seen",
)  # fmt: skip


def scene_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    head = ["scene"]
    columns = []
    for mode in MODES:
        for r in result.get(mode, []):
            head.append(f"{mode} {label(r)}")
            columns.append(r["scenes"])
    rows = [[name] + [_cell(col[name]) for col in columns] for name in result["scene_names"]]
    return head, rows


def table(result: dict) -> tuple[Table, Table]:
    t = Table(title=f"privacy: anonymize ({result['style']}) on {result['device']}: leaked face-frames")
    for col in SUMMARY:
        t.add_column(col, justify="right")
    for row in summary_rows(result):
        t.add_row(*row)
    head, rows = scene_rows(result)
    s = Table(title="leaked / face-frames per scene")
    for col in head:
        s.add_column(col, justify="right")
    for row in rows:
        s.add_row(*row)
    return t, s


def markdown(result: dict) -> str:
    lines = [
        f"# Privacy benchmark: anonymize ({result['style']}) on {result['device']}",
        "",
        f"`{result['command']}` — {result['date']}; torch threads {result['torch_threads']} per process, "
        f"{result['file_jobs']} file-mode runs at a time, {result['cpu_count']} cores; {result['machine']}",
        "",
        f"{len(result['scene_names'])} scenes of {result['seconds']:g} s at 640x480, 30 fps ({result['faces']}). "
        f"A face counts in a frame when >= {100 * scenes.INSIDE_MIN:.0f} % of its box is inside the picture and at "
        f"least half of its core shows its own pixels; it is leaked when a cell of its core keeps the input's "
        f"detail (band-pass correlation >= {UNCHANGED_CORRELATION}). Change check (`{CHECK}`): "
        f"{result['check_note']}",
        "",
        "| " + " | ".join(SUMMARY) + " |",
        "|---|" + "---:|" * (len(SUMMARY) - 1),
        *("| " + " | ".join(row) + " |" for row in summary_rows(result)),
        "",
        "File mode: ms = the pipeline's wall time per frame (`FramePipeline.process`). Live: ms = round trip "
        "(stamped frame handed to the client's encoder until it is decoded back); the server's share is in the JSON. "
        "Degradation levels (realtime/live/degrade.py): 1-2 detect 2x/4x less often, 3 detect at half resolution, "
        "4 one face only.",
        "",
    ]
    head, rows = scene_rows(result)
    lines += ["## Leaked / face-frames per scene", ""]
    lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "## What the leak test gives (calibration)", ""]
    lines += ["| run | face-frames | judged leaked | highest cell correlation min / p5 / p50 / p95 / max |"]
    lines += ["|---|---:|---:|---|"]
    for mode, cases in result["calibration"].items():
        for name, c in cases.items():
            h = c["highest_cell_correlation"]
            lines.append(
                f"| {mode}: {name} | {c['face_frames']} | {c['judged_leaked']} | "
                f"{h['min']} / {h['p5']} / {h['p50']} / {h['p95']} / {h['max']} |"
            )
    ref = result.get("reference")
    if ref:
        lines += ["", "## facenet-pytorch MTCNN against the compositing", ""]
        lines += [
            f'Loaded as {ref["loaded_as"]}, on one input frame in {ref["every"]}. "found, no face": its '
            "detections that overlap no composited face (IoU < 0.3); they are left out of its leak count.",
            "",
        ]
        lines += ["| scene | frames | face-frames | missed by it | found, not counted | found, no face |"]
        lines += ["|---|---:|---:|---:|---:|---:|"]
        for name, d in ref["disagreements"].items():
            lines.append(
                f"| {name} | {d['frames_checked']} | {d['face_frames_checked']} | {len(d['missed_by_reference'])} | "
                f"{len(d['found_but_not_counted'])} | {len(d['found_no_composited_face'])} |"
            )
    target = result["target"]
    lines += ["", "## Target (default settings: 0 leaks, added latency <= 1 frame at 30 fps)", "", target["text"]]
    return "\n".join(lines) + "\n"


def judge_target(result: dict) -> dict[str, Any]:
    from realtime.pipeline.choices import DEFAULT_DETECT_EVERY

    found = {}
    for mode in MODES:
        default = True if result["check_available"].get(mode) else None  # the check is on by default
        for r in result.get(mode, []):
            if r["interval"] == DEFAULT_DETECT_EVERY and r["detect_on_change"] == default:
                found[mode] = r
    check_default = True if result["check_available"]["file"] else None
    if not found:
        return {"met": None, "text": f"the default interval ({DEFAULT_DETECT_EVERY}) was not run"}
    leaks = {m: r["totals"]["leaked"] for m, r in found.items()}
    add = (found.get("file") or {}).get("added_vs_check_off") or {}
    extra = [add.get("p50_frames"), add.get("p95_frames")]
    fast = None not in extra and max(extra) <= 1.0  # type: ignore[type-var]
    met = all(v == 0 for v in leaks.values()) and (check_default is None or fast)
    parts = [f"{m}: {v} leaked face-frames" for m, v in leaks.items()]
    if check_default is None:
        parts.append(f"the change check is not on this branch, so interval {DEFAULT_DETECT_EVERY} ran without it")
    elif None not in extra:
        parts.append(
            f"file mode's added latency (check on vs off): p50 {add['p50_ms']:+.1f} ms = {extra[0]:+.2f} frames, "
            f"p95 {add['p95_ms']:+.1f} ms = {extra[1]:+.2f} frames"
        )
    return {"met": met, "leaks": leaks, "added": add, "text": "; ".join(parts) + (" — met" if met else " — NOT met")}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import torch

    torch.set_num_threads(args.threads)
    from realtime.bench.run import cpu_name
    from realtime.pipeline.choices import DEFAULT_STYLE

    style = args.style or DEFAULT_STYLE
    console = Console(width=200)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    known = scenes.all_scenes(args.seconds)
    chosen = [known[n] for n in args.scene_names]
    available = {"file": filemode.has_option(CHECK)}
    if "live" in args.modes:
        from benchmarks.privacy.live import has_setting

        available["live"] = has_setting(CHECK)
    checks: list[bool | None] = [True, False] if available["file"] else [None]
    variants = [(i, c) for i in args.intervals for c in checks]
    if available["file"]:
        check_note = "present: each interval ran with it on (the default) and off"
    else:
        check_note = "not on this branch (no `SwapOptions.detect_on_change`): each interval ran once, without it"
    console.print(f"change check: {check_note}")

    result: dict[str, Any] = {}
    reference = None
    calibration: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="privacy-") as tmp:
        folder = Path(tmp)
        source = folder / "astronaut.png"
        cv2.imwrite(str(source), cv2.cvtColor(scenes.photos()[0]["astronaut"].image, cv2.COLOR_RGB2BGR))
        with executor(args.jobs, args.threads) as pool:
            console.print(f"rendering {len(chosen)} scenes ({args.seconds:g} s each), {args.jobs} at a time ...")
            names = [s.name for s in chosen]
            paths = [folder / f"{n}.mkv" for n in names]
            clips = list(pool.map(_render, names, [args.seconds] * len(names), paths))
            if args.reference_every:
                found = list(pool.map(_reference, clips, [args.reference_every] * len(clips)))
                for clip, (ref, _) in zip(clips, found, strict=True):
                    clip.reference = ref
                reference = {
                    "loaded_as": found[0][1],
                    "every": args.reference_every,
                    "disagreements": {c.name: clipping.disagreements(c) for c in clips},
                }
            cal_clip = next((c for c in clips if c.name == CALIBRATION_SCENE), clips[0])
            if "file" in args.modes:
                result["file"] = run_file(pool, clips, variants, style, console)
                added(result["file"], "pipeline_ms")
                calibration["file"] = calibrate_file(pool, cal_clip, source, console)
        if "live" in args.modes:
            live_checks: list[bool | None] = [True, False] if available["live"] else [None]
            live_variants = [(i, c) for i in args.intervals for c in live_checks]
            result["live"], calibration["live"] = run_live(clips, [cal_clip], live_variants, style, args.hold, console)
            added(result["live"], "round_trip_ms")

    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    device = cpu_name()
    result = {
        "benchmark": "privacy",
        "date": date,
        "command": "python -m benchmarks.privacy " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": device,
        "cpu_count": os.cpu_count(),
        "torch_threads": args.threads,
        "file_jobs": args.jobs,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"load average {load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end "
        "(other work shares these cores: timings are noisy, compare them side by side)",
        "engine": "anonymize",
        "style": style,
        "seconds": args.seconds,
        "fps": scenes.FPS,
        "faces": scenes.photos()[1],
        "scene_names": args.scene_names,
        "scenes": [{"name": s.name, "description": s.description, "frames": s.frames} for s in chosen],
        "check_available": available,
        "check_note": check_note,
        "leak_test": {
            "inside_min": scenes.INSIDE_MIN,
            "core_visible_min": scenes.CORE_VISIBLE_MIN,
            "unchanged_correlation": UNCHANGED_CORRELATION,
        },
        "reference": reference,
        "calibration": calibration,
        **result,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    result["target"] = judge_target(result)
    for t in table(result):
        console.print(t)
    console.print(result["target"]["text"])
    slug = "cpu-" + "".join(ch if ch.isalnum() else "-" for ch in device.lower()).strip("-")[:40]
    out = args.out or RESULTS / f"privacy-{slug}-{date[:10]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    console.print(f"saved {out} and {out.with_suffix('.md')} in {result['wall_seconds']:.0f} s")
    return 0
