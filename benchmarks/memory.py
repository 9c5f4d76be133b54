"""The live server's memory over many sessions with media: is what a session took given back when it ends?

    python -m benchmarks.memory                                   # 100 sessions, 4 at a time, half of them vanish
    python -m benchmarks.memory --sessions 40 --frames 60 --size 640x480 --label before

The server runs in this process (identity engine on the CPU, MTCNN, media on 127.0.0.1); its clients (aiortc,
tests/live_client.py) run in a child process, so the RSS measured is the server's alone, as in production. Each
client sends a real face at 30 fps until `--frames` processed frames have come back, then ends its session by
DELETE or vanishes (its sockets go silent, as a killed process's do) and the server's silence detection ends it.
RSS (VmRSS) is taken after the first two sessions (one of each kind: codecs, pools and allocator warmed up) and
after all of them; the ratio is what tests/realtime/test_server_soak.py bounds. Threads, tasks, the server's
bookkeeping and live session objects are counted before and after. Results: benchmarks/results/memory-*.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import gc
import multiprocessing
import os
import platform
import re
import shlex
import sys
import threading
import time
import types
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.saving import save

FIRST = 2  # sessions run alone before the reference RSS is taken: one ends by DELETE, one vanishes
SETTINGS = {"detect_every": 5}  # the server's default: detection on every fifth frame, tracking between
# what a session is made of on the server (module.class): none of these may outlive the sessions, and each must be
# freed when its session ends, by reference counting, not only by a full garbage collection (which a server with a
# large heap runs rarely)
CENSUS = (
    "realtime.live.session.Session",
    "realtime.live.session.SessionPipeline",
    "realtime.pipeline.frame.FramePipeline",
    "realtime.live.transport.Publisher",
    "realtime.live.transport.Viewer",
    "realtime.live.transport.LiveSession",
    "realtime.live.transport.SwappedVideoTrack",
    "realtime.pipeline.worker.PipelineWorker",
    "aiortc.rtcpeerconnection.RTCPeerConnection",
    "aiortc.rtcrtpreceiver.RemoteStreamTrack",
    "av.video.frame.VideoFrame",
)
EXECUTOR_THREAD = re.compile(r"asyncio_\d+$")  # the event loop's default executor: a pool of at most min(32, cpus+4)


def rss_mib() -> float:
    """This process's resident set size (VmRSS) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def malloc_trim() -> bool:
    """glibc's malloc_trim(0), as an experiment: what it gives back was freed but kept by the allocator. False
    where the C library has none."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0) >= 0
    except (OSError, AttributeError):
        return False


def vanishes(index: int, fraction: float) -> bool:
    """Whether session `index` vanishes: spread evenly, `fraction` of them (0.5: every second one, from the 2nd)."""
    return int((index + 1) * fraction) > int(index * fraction)


@dataclass(frozen=True)
class Plan:
    sessions: int = 100
    concurrency: int = 4
    frames: int = 10  # processed frames back per session before it ends
    vanish_fraction: float = 0.5
    size: tuple[int, int] = (320, 240)

    def check(self) -> None:
        if self.sessions <= FIRST or self.concurrency < 1 or self.frames < 1 or not 0 <= self.vanish_fraction <= 1:
            raise ValueError(f"sessions > {FIRST}, concurrency >= 1, frames >= 1, 0 <= vanish fraction <= 1: {self}")


class SoakError(RuntimeError):
    """A session of the soak did not do what a session must (connect, return frames, end)."""


# --- the clients: a process of their own ----------------------------------------------------------------------


def drive(base: str, plan: Plan, conn: Any) -> None:
    """The child process: run `plan` against the server at `base`, talking to the parent over `conn`.

    Sends ("first", None) after the first two sessions have ended and waits for "go"; then ("done", frames back per
    session), or ("error", message)."""
    try:
        conn.send(("done", asyncio.run(_drive(base, plan, conn))))
    except BaseException as e:  # the parent reports it; a child's traceback would be lost
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


async def _drive(base: str, plan: Plan, conn: Any) -> list[int]:
    import aiohttp

    from realtime.bench.faces import astronaut
    from tests.live_client import face_frame

    frame = face_frame(astronaut()[40:440, 56:456], *plan.size)
    frames: list[int] = []
    async with aiohttp.ClientSession() as http:
        for index in range(FIRST):
            frames.append(await _session(http, base, frame, plan.frames, vanishes(index, plan.vanish_fraction)))
        conn.send(("first", None))
        if await asyncio.to_thread(conn.recv) != "go":
            return frames
        queue = iter(range(FIRST, plan.sessions))

        async def lane() -> None:
            for index in queue:  # one shared iterator: each lane takes the next session when its own has ended
                frames.append(await _session(http, base, frame, plan.frames, vanishes(index, plan.vanish_fraction)))

        await asyncio.gather(*(lane() for _ in range(plan.concurrency)))
    return frames


async def _session(http: Any, base: str, frame: Any, frames: int, vanish: bool) -> int:
    """One session: connect, stream until `frames` processed frames are back, end it; the frames that came back."""
    from tests.live_client import StampedFaceTrack, offer, wait_for

    client = await offer(http, base, StampedFaceTrack(frame), settings=SETTINGS)
    try:

        def back() -> int:
            return len({n for n in client.received.numbers if n is not None})

        if not await wait_for(lambda: back() >= frames, timeout=30 + frames / 10):
            raise SoakError(f"session {client.session}: {back()} of {frames} processed frames came back")
        if vanish:
            client.vanish()
        else:
            async with http.delete(f"{base}/api/sessions/{client.session}") as r:
                if r.status != 204:
                    raise SoakError(f"DELETE of session {client.session}: {r.status} {await r.text()}")
        if not await _ended(http, base, client.session, timeout=30):
            raise SoakError(f"session {client.session}: the server kept it after its client {'vanished' * vanish}")
    finally:
        await client.close()
    return back()


async def _ended(http: Any, base: str, session: str | None, timeout: float) -> bool:
    """Wait until the server answers 404 for the session's stats: it has ended it (for a vanished client: silence)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with http.get(f"{base}/api/stats", params={"session": session}) as r:
            if r.status == 404:
                return True
        await asyncio.sleep(0.1)
    return False


# --- the server side: this process ----------------------------------------------------------------------------


@dataclass
class Snapshot:
    """What the server process holds at one moment."""

    rss_mib: float
    threads: list[str]  # names, sorted; the default executor's pool counted apart
    executor_threads: int
    tasks: list[str]  # pending asyncio tasks but the one measuring
    uncollected: dict[str, int]  # instances of each CENSUS class, before a garbage collection
    objects: dict[str, int]  # ... and after one
    holders: list[str] = field(default_factory=list)  # what held the uncollected ones: chains of referrers

    @classmethod
    def take(cls, older: frozenset[int] = frozenset()) -> Snapshot:
        """`older`: ids of session objects alive before the soak (an earlier test's), left out of the census."""
        uncollected = census(older)
        holders = held_by([n for n, k in uncollected.items() if k], older) if any(uncollected.values()) else []
        gc.collect()
        names = sorted(t.name for t in threading.enumerate())
        current = asyncio.current_task()
        return cls(
            rss_mib=round(rss_mib(), 1),
            threads=[n for n in names if not EXECUTOR_THREAD.match(n)],
            executor_threads=sum(1 for n in names if EXECUTOR_THREAD.match(n)),
            tasks=sorted(t.get_name() for t in asyncio.all_tasks() if t is not current and not t.done()),
            uncollected=uncollected,
            objects=census(older),
            holders=holders,
        )


def census(older: frozenset[int] = frozenset()) -> dict[str, int]:
    """How many instances of each CENSUS class this process holds (garbage not yet collected included), but those
    whose ids are in `older`."""
    found = Counter(_name(o) for o in gc.get_objects() if id(o) not in older)
    return {name: found[name] for name in CENSUS}


def census_ids() -> frozenset[int]:
    """The ids of the CENSUS instances alive now."""
    wanted = set(CENSUS)
    return frozenset(id(o) for o in gc.get_objects() if _name(o) in wanted)


def _name(o: object) -> str:
    return f"{type(o).__module__}.{type(o).__qualname__}"


def held_by(names: list[str], older: frozenset[int] = frozenset(), depth: int = 6, limit: int = 12) -> list[str]:
    """Chains of referrers (object <- what refers to it <- ...) from each live instance of the classes `names`:
    what a failed census prints, so a rare leak says where it is."""
    before = {id(o) for o in gc.get_objects()}  # the walk's own lists, iterators and frames are left out
    wanted = set(names)
    targets = [o for o in gc.get_objects() if _name(o) in wanted and id(o) not in older]
    chains: list[str] = []

    def walk(obj: Any, path: list[str], seen: set[int], left: int) -> None:
        if len(chains) >= limit:
            return
        referrers = [r for r in gc.get_referrers(obj) if id(r) in before and id(r) not in seen]
        if left == 0 or not referrers:
            chains.append(" <- ".join(path + ([] if referrers else ["(nothing else)"])))
            return
        for r in referrers[:3]:
            walk(r, [*path, _describe(r)], seen | {id(r)}, left - 1)

    for target in targets:
        walk(target, [_describe(target)], {id(target)}, depth)
    return chains


def _describe(o: Any) -> str:
    if isinstance(o, types.FrameType):
        return f"frame {o.f_code.co_name} ({Path(o.f_code.co_filename).name}:{o.f_lineno})"
    if isinstance(o, BaseException):
        return f"{type(o).__name__}({str(o)[:60]!r})"
    if isinstance(o, types.MethodType):
        return f"method {o.__func__.__qualname__}"
    if isinstance(o, dict):
        return f"dict({', '.join(map(str, list(o)[:5]))})"
    if isinstance(o, (list, tuple, set)):
        return f"{type(o).__name__}[{len(o)}]"
    return f"{type(o).__module__}.{type(o).__qualname__}"


@dataclass
class SoakResult:
    plan: Plan
    start: Snapshot  # the server up, before any session
    after_first: Snapshot  # after the first two sessions have ended
    end: Snapshot  # after all of them
    trace: list[tuple[int, float]] = field(default_factory=list)  # (sessions ended, RSS MiB) along the way
    frames_back: list[int] = field(default_factory=list)  # per session, processed frames its client received
    ended: int = 0  # the server's count of ended sessions
    ended_by_cause: dict[str, int] = field(default_factory=dict)
    sessions_left: int = 0
    leftovers: list[str] = field(default_factory=list)  # dancecam-* threads and tasks, open peer connections
    elapsed_s: float = 0.0
    # RSS after an extra malloc_trim(0) at the end: what glibc still kept of what was freed, if anything
    rss_trimmed_mib: float | None = None

    @property
    def ratio(self) -> float:
        return self.end.rss_mib / self.after_first.rss_mib

    @property
    def trimmable_mib(self) -> float | None:
        """RSS an extra malloc_trim would give back at the end: memory freed but kept by the allocator."""
        return None if self.rss_trimmed_mib is None else round(self.end.rss_mib - self.rss_trimmed_mib, 1)

    @property
    def growth_per_session_kib(self) -> float:
        return (self.end.rss_mib - self.after_first.rss_mib) * 1024 / (self.plan.sessions - FIRST)

    def left_behind(self) -> list[str]:
        """Everything the sessions left: threads, tasks, session objects, peer connections, sessions."""
        found = list(self.leftovers)
        found += [f"thread {n}" for n in sorted(set(self.end.threads) - set(self.start.threads))]
        found += [f"task {n}" for n in sorted(set(self.end.tasks) - set(self.start.tasks))]
        found += [f"{n} {_short(name)}" for name, n in self.end.objects.items() if n]  # older ones left out
        if self.end.executor_threads > min(32, (os.cpu_count() or 1) + 4):
            found.append(f"{self.end.executor_threads} executor threads")
        if self.sessions_left:
            found.append(f"{self.sessions_left} sessions")
        return found

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(ratio=round(self.ratio, 3), growth_per_session_kib=round(self.growth_per_session_kib, 1))
        out["trimmable_mib"] = self.trimmable_mib
        out["left_behind"] = self.left_behind()
        return out


async def soak(
    live: Any, plan: Plan, progress: Callable[[int, float], None] | None = None, every: int = 10
) -> SoakResult:
    """Run `plan` against `live` (tests.realtime.live_fixtures.live_server with max_sessions >= plan.concurrency)
    from a child process; RSS and what the server holds before, after the first two sessions and at the end."""
    from tests.realtime.live_fixtures import leftovers

    plan.check()
    started = time.monotonic()
    start = Snapshot.take()
    older = census_ids()  # an earlier test's, still alive: not this soak's to give back
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing of this process's heap is shared
    conn, child_conn = context.Pipe()
    child = context.Process(target=drive, args=(live.base, plan, child_conn), name="dancecam-memory-clients")
    child.start()
    child_conn.close()
    try:
        trace: list[tuple[int, float]] = []

        async def receive(timeout: float) -> Any:
            """The child's next message, recording RSS every `every` ended sessions meanwhile."""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                ended = live.manager.ended
                if ended and ended % every == 0 and (not trace or trace[-1][0] != ended):
                    trace.append((ended, round(rss_mib(), 1)))
                    if progress is not None:
                        progress(ended, trace[-1][1])
                if conn.poll():
                    try:
                        kind, value = conn.recv()
                    except EOFError:
                        child.join(5)
                        raise SoakError(f"the clients' process ended without a word (exit {child.exitcode})") from None
                    if kind == "error":
                        raise SoakError(f"the clients failed: {value}")
                    return value
                await asyncio.sleep(0.05)
            raise SoakError(f"the clients sent nothing for {timeout:.0f} s")

        await receive(120)
        await _settle(live, leftovers, older)
        after_first = Snapshot.take(older)
        trace.append((live.manager.ended, after_first.rss_mib))
        conn.send("go")
        frames = await receive(120 + 10 * plan.sessions)
        left = await _settle(live, leftovers, older)
        end = Snapshot.take(older)
        trimmed = rss_mib() if malloc_trim() else None
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
        conn.close()
    trace.append((live.manager.ended, end.rss_mib))
    return SoakResult(
        plan,
        start,
        after_first,
        end,
        trace,
        frames,
        live.manager.ended,
        dict(live.manager.ended_by_cause),
        len(live.manager.sessions),
        left,
        round(time.monotonic() - started, 1),
        None if trimmed is None else round(trimmed, 1),
    )


async def _settle(
    live: Any, leftovers: Callable[[Any], list[str]], older: frozenset[int], timeout: float = 15.0
) -> list[str]:
    """Wait until no session and nothing of one is left running; what is left after `timeout`."""
    from tests.live_client import wait_for

    await wait_for(lambda: not live.manager.sessions and not leftovers(live), timeout)
    # a session's close may still be finishing (its last awaits hold the pipeline): wait for that, never collect
    await wait_for(lambda: not any(census(older).values()), min(timeout, 5.0), step=0.25)
    return leftovers(live)


# --- the command --------------------------------------------------------------------------------------------------


async def _run(plan: Plan, silence_timeout: float, console: Any) -> SoakResult:
    from engines.mtcnn import MTCNN
    from tests.realtime.live_fixtures import identity_services, live_server

    services = identity_services(MTCNN())
    async with live_server(services, max_sessions=plan.concurrency, silence_timeout=silence_timeout) as live:
        return await soak(live, plan, progress=lambda n, rss: console.print(f"{n:4d} ended, RSS {rss:.0f} MiB"))


def markdown(result: dict[str, Any]) -> str:
    r, plan = result["result"], result["result"]["plan"]
    first, end = r["after_first"], r["end"]
    label = f" ({result['label']})" if result["label"] else ""
    causes = ", ".join(f"{k} {v}" for k, v in sorted(r["ended_by_cause"].items()))
    lines = [
        f"# Server memory over {plan['sessions']} live sessions: {result['device']}{label}",
        "",
        f"{result['date']}, `{result['command']}`",
        "",
        f"{plan['sessions']} sessions with media ({plan['size'][0]}x{plan['size'][1]}, 30 fps, identity engine on the "
        f"CPU, MTCNN every 5th frame, at least {plan['frames']} processed frames back per session), "
        f"{plan['concurrency']} at a time after the first two; ended by the server as: {causes} (a vanished client "
        f"is 'silent' after {result['silence_timeout']:g} s). RSS of the server's process (the clients run in a "
        "child process). "
        f"{result['note']}",
        "",
        "| RSS at start | after 2 sessions | after all | ratio | growth per session | an extra malloc_trim "
        "gives back | left behind | time |",
        "|---:|---:|---:|---:|---:|---:|---|---:|",
        f"| {r['start']['rss_mib']:.0f} MiB | {first['rss_mib']:.0f} MiB | {end['rss_mib']:.0f} MiB "
        f"| {r['ratio']:.2f} | {r['growth_per_session_kib']:.0f} KiB | {_mib(r['trimmable_mib'])} "
        f"| {', '.join(r['left_behind']) or 'nothing'} | {r['elapsed_s']:.0f} s |",
        "",
        "RSS along the way (sessions ended: MiB): " + ", ".join(f"{n}: {v:.0f}" for n, v in r["trace"]),
        "",
        "| | start | after 2 sessions | after all |",
        "|---|---|---|---|",
        f"| threads | {_names(r['start']['threads'])} | {_names(first['threads'])} | {_names(end['threads'])} |",
        f"| executor pool threads | {r['start']['executor_threads']} | {first['executor_threads']} | "
        f"{end['executor_threads']} |",
        f"| pending tasks | {_names(r['start']['tasks'])} | {_names(first['tasks'])} | {_names(end['tasks'])} |",
        f"| session objects alive before a garbage collection | {_census(r['start']['uncollected'])} "
        f"| {_census(first['uncollected'])} | {_census(end['uncollected'])} |",
        f"| ... and after one | {_census(r['start']['objects'])} | {_census(first['objects'])} "
        f"| {_census(end['objects'])} |",
        f"| server: sessions, ended | | | {r['sessions_left']}, {r['ended']} |",
    ]
    if result["environment"]:
        lines += ["", "Environment: " + ", ".join(f"{k}={v}" for k, v in result["environment"].items())]
    return "\n".join(lines) + "\n"


def _names(names: list[str]) -> str:
    return ", ".join(f"{n} ×{c}" if c > 1 else n for n, c in sorted(Counter(names).items())) or "none"


def _mib(value: float | None) -> str:
    return "n/a (not glibc)" if value is None else f"{value:.0f} MiB"


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _census(objects: dict[str, int]) -> str:
    return ", ".join(f"{_short(k)} {v}" for k, v in objects.items() if v) or f"none of {len(objects)} kinds"


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, e.g. 320x240, not {text!r}") from None
    if not (160 <= w <= 1920 and 120 <= h <= 1080) or w % 2 or h % 2:
        raise argparse.ArgumentTypeError(f"size must be even, from 160x120 to 1920x1080, not {text!r}")
    return w, h


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from benchmarks.engines import RESULTS, cpu_name
    from realtime.live.transport import SILENCE_TIMEOUT_S

    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=100, help="sessions in all (default 100)")
    parser.add_argument("--concurrency", type=int, default=4, help="sessions at a time after the first two (4)")
    parser.add_argument("--frames", type=int, default=10, help="processed frames back per session (default 10)")
    parser.add_argument("--vanish-fraction", type=float, default=0.5, help="share of clients that vanish (0.5)")
    parser.add_argument("--size", type=parse_size, default=(320, 240), help="WIDTHxHEIGHT sent (default 320x240)")
    parser.add_argument(
        "--silence-timeout", type=float, default=SILENCE_TIMEOUT_S, help="the server's silence timeout, s (default 3)"
    )
    parser.add_argument("--label", default="", help="added to the file names, e.g. before / after")
    parser.add_argument("--note", default="", help="a sentence for the report, e.g. that the machine was shared")
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/memory-...json)")
    args = parser.parse_args(argv)
    plan = Plan(args.sessions, args.concurrency, args.frames, args.vanish_fraction, args.size)
    try:
        plan.check()
    except ValueError as e:
        parser.error(str(e))
    console = Console(width=140)
    res = asyncio.run(_run(plan, args.silence_timeout, console))

    import aiortc
    import av
    import torch

    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    name = cpu_name()
    slug = "cpu-" + "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")[:40]
    result = {
        "benchmark": "memory",
        "device": name,
        "device_type": "cpu",
        "cpus": os.cpu_count(),
        "date": date,
        "command": shlex.join(["python", "-m", "benchmarks.memory", *(argv if argv is not None else sys.argv[1:])]),
        "label": args.label,
        "note": args.note,
        "python": platform.python_version(),
        "libc": " ".join(platform.libc_ver()),
        "torch": torch.__version__,
        "aiortc": aiortc.__version__,
        "av": av.__version__,
        "environment": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "silence_timeout": args.silence_timeout,
        "result": res.to_json(),
    }
    text = markdown(result)
    console.print(text)
    tag = f"-{args.label}" if args.label else ""
    out = args.out or RESULTS / f"memory-{slug}{tag}-{date[:10]}.json"
    console.print("saved " + " and ".join(map(str, save(out, result, text))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
