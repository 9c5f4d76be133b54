"""Glass-to-glass latency of a live session over WebRTC, swap off (passthrough) and swap on, side by side.

    python -m benchmarks.e2e_webrtc                                  # 60 s per mode, identity engine, in-process
    python -m benchmarks.e2e_webrtc --modes on --cases one,overloaded,overloaded+hog   # does latency stay flat?
    python -m benchmarks.e2e_webrtc --seconds 10 --random-weights    # FaceDancer C + ArcFace, random weights
    python -m benchmarks.e2e_webrtc --url http://127.0.0.1:8080      # a running `dancecam serve`

An aiortc client plays the part of the browser: it sends a real-face clip (the astronaut photo panned slowly) at
`--fps` to the server (POST /offer), stamps each frame's number into its top-left corner (realtime/live/stamp.py), reads
the number back from every returned frame and matches it to the time the frame was handed to the encoder. Per mode
it reports the round trip p50/p95/p99, the frame rates sent and returned, frames that never came back, repeats and
unreadable frames, next to the server's own share (GET /api/stats). The first `--warmup` seconds of each session
(connection, key frame, the first network call) are left out of every number. Whether latency stays flat: the p50
of the first and of the last `--window` seconds, side by side (flat: the last at most 33 ms above the first).
Cases: `one` session; `overloaded`, the engine made to cost twice the frame interval (`--simulate-ms`); and
`overloaded+hog`, the same beside busy processes on every core (a user's machine doing other work).

The client's receiver decodes a frame as soon as its last RTP packet is in, as browsers do and as the server does
(`realtime.live.transport.decode_on_marker`); aiortc's own receiver waits for the next frame's first packet, one sender
frame interval later, which would add 33 ms per frame at 30 fps and a whole processing interval when swapping
returns a few frames a second (`--client-receiver aiortc` measures the client that way).

Without --url the server runs in this process, on its own thread and event loop (as a separate server's loop
would be); the client, the server and the pipeline share this machine's cores, as a browser on the same machine
does. Results go to benchmarks/results/e2e-<device>-<engine>-<date>.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import av
import cv2
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack, VideoStreamTrack
from rich.console import Console
from rich.table import Table

from benchmarks.engines import RESULTS, cpu_name
from benchmarks.saving import save
from realtime.live import ice, stamp
from realtime.live.transport import decode_on_marker

CLOCK_RATE = 90_000  # RTP video clock: pts in 1/90000 s, as aiortc's own tracks
MODES = (("off", False), ("on", True))
CASES = ("one", "overloaded", "overloaded+hog")
FLAT_MS = 33.0  # the last window's p50 may exceed the first's by one frame interval at 30 fps, no more
# extra sending after the measured window: aiortc's receiver on the server holds the newest frame until the next
# one starts, so the last frames sent would otherwise never come back and count as drops
TAIL_S = 0.5


# --- the clip ---------------------------------------------------------------------------------------------------


class PannedClip:
    """The astronaut photo (one real face) scaled to 1.35x the frame width and panned back and forth across it.

    The face stays whole in the frame; the pan speed (about a frame width every 8 s) keeps the tracker, the
    detector and the encoder honest without leaving the face behind.
    """

    def __init__(self, width: int, height: int, seconds_per_sweep: float = 4.0, fps: float = 30.0) -> None:
        from realtime.bench.faces import astronaut  # real face, no download (needs the dev extra, like every benchmark)

        side = max(int(width * 1.35), height)
        self.image = cv2.resize(astronaut(), (side, side), interpolation=cv2.INTER_AREA)
        self.width, self.height = width, height
        self.travel = side - width
        self.step = self.travel / max(1.0, seconds_per_sweep * fps)
        # rows: keep the face (rows 0.12-0.34 of the photo) in the upper middle of the frame
        self.top = max(0, min(side - height, int(0.23 * side - 0.4 * height)))

    def frame(self, k: int) -> np.ndarray:
        phase = (k * self.step) % (2 * self.travel) if self.travel else 0.0
        x = int(phase if phase <= self.travel else 2 * self.travel - phase)
        return np.ascontiguousarray(self.image[self.top : self.top + self.height, x : x + self.width])


# --- the client side ----------------------------------------------------------------------------------------------


@dataclass
class Record:
    """What one session saw: send times by frame number, and what came back."""

    sent: dict[int, float] = field(default_factory=dict)  # frame index -> perf_counter when handed to the encoder
    arrived: dict[int, float] = field(default_factory=dict)  # frame index -> perf_counter of its first return
    received: int = 0  # every decoded frame, repeats included
    repeats: int = 0  # a stamp seen again (the server repeats its last frame when processing is late)
    unreadable: int = 0  # no valid stamp in the returned frame
    unknown: int = 0  # a valid stamp that was never sent (should stay 0)
    sizes: set[tuple[int, int]] = field(default_factory=set)


class StampedClipTrack(VideoStreamTrack):
    """The outbound video: the clip at `fps`, each frame stamped with its index (mod 2**16) and its send time kept.

    Frames are paced to an absolute schedule from the first `recv`; when the encoder falls behind the schedule
    (a busy machine) frames go out late rather than in a burst, and their send time is when they really left.
    """

    kind = "video"

    def __init__(self, clip: PannedClip, fps: float, record: Record, seconds: float) -> None:
        super().__init__()
        self.clip, self.fps, self.record, self.seconds = clip, fps, record, seconds
        self.index = 0
        self.start: float | None = None
        self.done = asyncio.Event()

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.perf_counter()
        if self.start is None:
            self.start = now
        due = self.start + self.index / self.fps
        if due - self.start >= self.seconds:
            self.done.set()
            self.stop()
            raise MediaStreamError
        if due > now:
            await asyncio.sleep(due - now)
        rgb = self.clip.frame(self.index)
        stamp.stamp(rgb, self.index)
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = round(self.index * CLOCK_RATE / self.fps)
        frame.time_base = fractions.Fraction(1, CLOCK_RATE)
        self.record.sent[self.index] = time.perf_counter()
        self.index += 1
        return frame


def read_frame(frame: av.VideoFrame) -> int | None:
    """The stamp of a decoded frame, read from its luma plane without a colour conversion."""
    if frame.format.name in ("yuv420p", "yuvj420p", "nv12"):
        plane = frame.planes[0]
        y = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
        return stamp.read_luma(y)
    return stamp.read(frame.to_ndarray(format="rgb24"))


async def consume(track: MediaStreamTrack, record: Record) -> None:
    """Take every returned frame as soon as it is decoded (so aiortc's queue never grows) and log its stamp."""
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        t = time.perf_counter()
        record.received += 1
        record.sizes.add((frame.width, frame.height))
        number = read_frame(frame)
        if number is None:
            record.unreadable += 1
            continue
        # the newest frame sent with this 16-bit number (the counter wraps after 36 min at 30 fps)
        newest = len(record.sent) - 1
        index = number + (newest - number) // stamp.MODULO * stamp.MODULO if number <= newest else None
        if index is None:
            record.unknown += 1
        elif index in record.arrived:
            record.repeats += 1
        else:
            record.arrived[index] = t


class Api:
    """The few HTTP calls the benchmark makes (api.md), with the token when one is given."""

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str | None) -> None:
        self.http, self.url = http, url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        async with self.http.request(method, self.url + path, headers=self.headers, **kwargs) as r:
            body = await r.json() if r.content_type == "application/json" else await r.text()
            if r.status >= 400:
                message = body.get("error") if isinstance(body, dict) else body
                raise RuntimeError(f"{method} {path}: {r.status} {message}")
            return body


async def run_session(api: Api, clip: PannedClip, swap: bool, args: argparse.Namespace) -> dict[str, Any]:
    """One session: connect, stream `args.seconds`, wait for the last frames, collect the client's and server's
    numbers, end the session."""
    record = Record()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN: it stalls gathering offline
    track = StampedClipTrack(clip, args.fps, record, args.seconds + TAIL_S)
    transceiver = pc.addTransceiver(track, direction="sendrecv")
    if args.client_receiver == "browser":  # as the server does (realtime.live.transport)
        decode_on_marker(transceiver.receiver)
    consumers: list[asyncio.Task[None]] = []
    connected = asyncio.Event()

    @pc.on("track")
    def on_track(remote: MediaStreamTrack) -> None:
        if remote.kind == "video":
            consumers.append(asyncio.create_task(consume(remote, record)))

    @pc.on("connectionstatechange")
    def on_state() -> None:
        if pc.connectionState == "connected":
            connected.set()

    session_id = None
    stats: dict[str, Any] = {}
    load_before = os.getloadavg()[0]  # other work on the machine shifts every number here: keep it on record
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    try:
        # aiortc's setLocalDescription returns once ICE gathering is complete: the server reads only SDP candidates
        with ice.host_addresses(ice.LOOPBACK):  # media on loopback only (a --url server needs --ice-address 127.0.0.1)
            await pc.setLocalDescription(await pc.createOffer())
        assert pc.iceGatheringState == "complete"
        body = {"sdp": pc.localDescription.sdp, "type": "offer", "settings": {"swap": swap}}
        for attempt in range(20):  # the previous session may still be ending (max_sessions is 1 on a CPU)
            try:
                answer = await api.call("POST", "/offer", json=body)
                break
            except RuntimeError as e:
                if " 503 " not in str(e) or attempt == 19:
                    raise
                await asyncio.sleep(0.5)
        session_id = answer["session"]
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        await asyncio.wait_for(connected.wait(), 20)
        await asyncio.wait_for(track.done.wait(), args.seconds + TAIL_S + 30)
        # the frames still in flight: wait until nothing new has come back for `grace` seconds
        last = len(record.arrived)
        quiet_since = time.perf_counter()
        while time.perf_counter() - quiet_since < args.grace:
            await asyncio.sleep(0.1)
            if len(record.arrived) != last:
                last, quiet_since = len(record.arrived), time.perf_counter()
        cpu = (time.process_time() - cpu_start) / (time.perf_counter() - wall_start)
        with contextlib.suppress(Exception):
            found = await api.call("GET", f"/api/stats?session={session_id}")
            stats = found["sessions"][0] if found.get("sessions") else {}
    finally:
        if session_id is not None:
            with contextlib.suppress(Exception):
                await api.call("DELETE", f"/api/sessions/{session_id}")
        await pc.close()
        for task in consumers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    result = summarise(record, track, args, stats)
    result["process_cpu_cores"] = round(cpu, 2)  # this process's CPU time over wall time (client + in-process server)
    result["load_average_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]  # before, after
    result["machine_cores"] = os.cpu_count()
    return result


def _pcts(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "mean": None, "max": None, "n": 0}
    a = np.asarray(values, np.float64)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "p50": round(float(p50), 1),
        "p95": round(float(p95), 1),
        "p99": round(float(p99), 1),
        "mean": round(float(a.mean()), 1),
        "max": round(float(a.max()), 1),
        "n": len(values),
    }


def windows(record: Record, measured: list[int], seconds: float) -> tuple[dict, dict]:
    """Round-trip percentiles of the frames sent in the first and in the last `seconds` of the measured span."""
    if not measured:
        return _pcts([]), _pcts([])
    t0, t1 = record.sent[measured[0]], record.sent[measured[-1]]

    def trips(lo: float, hi: float) -> list[float]:
        return [
            (record.arrived[i] - record.sent[i]) * 1e3
            for i in measured
            if lo <= record.sent[i] <= hi and i in record.arrived
        ]

    return _pcts(trips(t0, t0 + seconds)), _pcts(trips(t1 - seconds, t1))


def summarise(record: Record, track: StampedClipTrack, args: argparse.Namespace, server: dict) -> dict[str, Any]:
    """Client-side numbers over the frames sent after the warm-up."""
    start = track.start or 0.0
    measured = [i for i, t in record.sent.items() if args.warmup <= t - start < args.seconds]
    window = (record.sent[measured[-1]] - record.sent[measured[0]]) if len(measured) > 1 else 0.0
    returned = [i for i in measured if i in record.arrived]
    latency = [(record.arrived[i] - record.sent[i]) * 1e3 for i in returned]
    span = (max(record.arrived[i] for i in returned) - min(record.arrived[i] for i in returned)) if returned else 0
    keep = ("fps_in", "fps_out", "server_latency_ms", "end_to_end", "stages", "counters", "degradation")
    first, last = windows(record, measured, args.window)
    return {
        "frames_sent": len(measured),
        "frames_returned": len(returned),
        "frames_dropped": len(measured) - len(returned),
        "drop_rate": round(1 - len(returned) / len(measured), 3) if measured else None,
        "fps_in": round((len(measured) - 1) / window, 2) if window else 0.0,
        "fps_out": round((len(returned) - 1) / span, 2) if span else 0.0,
        "round_trip_ms": _pcts(latency),
        # flat or growing: the first and the last `window` seconds of the measured frames, side by side
        "window_s": args.window,
        "first_window_ms": first,
        "last_window_ms": last,
        "growth_ms": round(last["p50"] - first["p50"], 1)
        if first["p50"] is not None and last["p50"] is not None
        else None,
        "received_frames_total": record.received,
        "repeated_frames": record.repeats,
        "unreadable_frames": record.unreadable,
        "unknown_stamps": record.unknown,
        "returned_sizes": sorted(f"{w}x{h}" for w, h in record.sizes),
        # per measured frame: ms after the first measured send, and its round trip in ms (None: never returned)
        "samples": [
            [
                round((record.sent[i] - record.sent[measured[0]]) * 1e3, 1),
                round((record.arrived[i] - record.sent[i]) * 1e3, 1) if i in record.arrived else None,
            ]
            for i in measured
        ],
        "server": {k: server[k] for k in keep if k in server},
    }


# --- other work on the machine ------------------------------------------------------------------------------------


def _spin(stop: Any) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


@contextlib.contextmanager
def cpu_hog(processes: int) -> Any:
    """`processes` busy processes for the duration of the block (none for 0): a machine whose cores do other work."""
    if processes <= 0:
        yield
        return
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    workers = [ctx.Process(target=_spin, args=(stop,), daemon=True) for _ in range(processes)]
    for w in workers:
        w.start()
    try:
        yield
    finally:
        stop.set()
        for w in workers:
            w.join(5)
            if w.is_alive():
                w.terminate()


# --- the server, when none is given -------------------------------------------------------------------------------


def build_services(
    engine: str, random_weights: bool, device: str, backend: str = "auto", simulate_ms: float = 0.0
) -> Any:
    """The server's models: the identity engine, FaceDancer C + ArcFace with random weights, or the real files;
    FaceDancer on `backend` (auto: the fastest one here); `simulate_ms` of extra work per frame with a face."""
    import torch

    from realtime.live.session import LiveServices

    if engine == "facedancer" and random_weights:
        from engines.arcface import ArcFace
        from engines.facedancer import facedancer
        from engines.mtcnn import MTCNN
        from realtime.pipeline.context import resolve_device

        torch.manual_seed(0)
        dev = resolve_device(device)
        fd = facedancer().to(dev).eval()
        arc = ArcFace().to(dev).eval()
        services = LiveServices(dev, MTCNN(dev), "facedancer", fd, arc, simulate_ms=simulate_ms)
        services.choose_backend(backend)
        return services
    return LiveServices.load(engine, device, backend=backend, simulate_ms=simulate_ms)  # type: ignore[arg-type]


class ServerThread:
    """`create_app` served on 127.0.0.1 (a free port) by its own event loop in a thread."""

    def __init__(self, services: Any, max_sessions: int = 1) -> None:
        from realtime.live.session import SessionManager

        self.manager = SessionManager(services, max_sessions)
        self.loop = asyncio.new_event_loop()
        self.url = ""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._runner: Any = None
        self._thread = threading.Thread(target=self._run, name="e2e-server", daemon=True)

    def _run(self) -> None:
        from aiohttp import web

        from realtime.live.server import ServeOptions, create_app

        async def start() -> None:
            app = create_app(self.manager, ServeOptions(ice_addresses=ice.LOOPBACK))
            self._runner = web.AppRunner(app, handle_signals=False)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(start())
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self._runner.cleanup())
        self.loop.close()

    def start(self) -> str:
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise RuntimeError(f"the server did not start: {self._error}") from self._error
        return self.url

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(30)


def source_photo() -> tuple[bytes, str]:
    """A real face photo to upload as the source: insightface's t1.jpg when installed, else the astronaut."""
    with contextlib.suppress(ImportError, OSError):
        import importlib.util

        spec = importlib.util.find_spec("insightface")
        if spec is not None and spec.submodule_search_locations:
            path = Path(next(iter(spec.submodule_search_locations))) / "data" / "images" / "t1.jpg"
            return path.read_bytes(), "t1.jpg"
    from realtime.bench.faces import astronaut

    _, png = cv2.imencode(".png", cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR))
    return png.tobytes(), "astronaut.png"


# --- the run ------------------------------------------------------------------------------------------------------


async def run_all(url: str, args: argparse.Namespace, console: Console) -> tuple[dict, dict]:
    width, height = args.size
    clip = PannedClip(width, height, fps=args.fps)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        api = Api(http, url, args.token)
        info = await api.call("GET", "/api/info")
        if not info.get("weights", {}).get("ok", True):
            raise RuntimeError(f"the server has no weights: {info['weights'].get('message')}")
        if info.get("engine") == "facedancer" and not info.get("source", {}).get("set"):
            data, name = source_photo()
            form = aiohttp.FormData()
            form.add_field("image", data, filename=name)
            await api.call("POST", "/api/source", data=form)
            console.print(f"uploaded source photo {name}")
        results = {}
        for name, swap in MODES:
            if name not in args.modes:
                continue
            console.print(f"[bold]swap {name}[/]: {args.seconds:g} s at {args.fps:g} fps, {width}x{height} ...")
            results[name] = await run_session(api, clip, swap, args)
        return info, results


def device_label(info: dict) -> tuple[str, str]:
    """(readable name, file-name slug) of the device the server swaps on."""
    kind = str(info.get("device", "cpu"))
    name = cpu_name()
    if kind.startswith("cuda"):
        with contextlib.suppress(Exception):
            import torch

            name = torch.cuda.get_device_name(torch.device(kind))
    slug = kind.split(":")[0] + "-" + "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")[:40]
    return name, slug


HEAD = (
    "case", "swap", "sent", "returned", "dropped", "fps in", "fps out", "p50 ms", "p95 ms", "p99 ms",
    "server p50 ms", "first p50", "last p50", "growth",
)  # fmt: skip


def table(result: dict) -> Table:
    t = Table(title=f"glass to glass over WebRTC: {result['engine_label']} on {result['device']}, {result['size']}")
    for col in HEAD:
        t.add_column(col, justify="right")
    for row in markdown_rows(result):
        t.add_row(*row)
    return t


def markdown_rows(result: dict) -> list[list[str]]:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    rows = []
    for case, run in result["cases"].items():
        for name, r in run["modes"].items():
            rt = r["round_trip_ms"]
            server = r["server"].get("server_latency_ms", {}).get("p50")
            growth = r["growth_ms"]
            verdict = "-" if growth is None else f"{growth:+.0f} ms " + ("flat" if growth <= FLAT_MS else "GROWS")
            rows.append(
                [
                    case,
                    name,
                    str(r["frames_sent"]),
                    str(r["frames_returned"]),
                    f"{r['frames_dropped']} ({100 * (r['drop_rate'] or 0):.0f}%)",
                    f"{r['fps_in']:.1f}",
                    f"{r['fps_out']:.1f}",
                    ms(rt["p50"]),
                    ms(rt["p95"]),
                    ms(rt["p99"]),
                    ms(server),
                    ms(r["first_window_ms"]["p50"]),
                    ms(r["last_window_ms"]["p50"]),
                    verdict,
                ]
            )
    return rows


def markdown(result: dict) -> str:
    head = list(HEAD)
    cases = "; ".join(
        f"{case}: {run['simulate_ms']:g} ms simulated per frame, {run['hog_processes']} busy processes beside"
        for case, run in result["cases"].items()
    )
    lines = [
        f"# Glass to glass over WebRTC: {result['engine_label']} on {result['device']}",
        "",
        f"{result['size']}, {result['fps']:g} fps sent for {result['seconds']:g} s per mode (first "
        f"{result['warmup']:g} s left out), aiortc client and server on one machine, VP8. Round trip = frame handed "
        "to the client's encoder until the client decoded it again; server p50 = the server's own share "
        "(arrival to processed). Client receiver: "
        + (
            "browser-like (a frame is decoded on its last packet)"
            if result.get("client_receiver", "browser") == "browser"
            else "aiortc's (holds each frame until the next one starts)"
        )
        + f". First/last p50: the first and the last {result['window']:g} s of each mode (flat: growth at most "
        + f"{FLAT_MS:g} ms). Cases: {cases}. `"
        + result["command"]
        + "`",
        *(["", f"FaceDancer: {result['backend']}"] if result.get("backend") else []),
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (len(head) - 1),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in markdown_rows(result)]
    return "\n".join(lines) + "\n"


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, e.g. 640x480, not {text!r}") from None
    if w < 80 or h < 4 or w % 2 or h % 2:
        raise argparse.ArgumentTypeError(f"size must be even and at least 80 wide, not {text!r}")
    return w, h


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.e2e_webrtc", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="streaming time per mode (default 60)")
    parser.add_argument(
        "--window", type=float, default=10.0, help="seconds at the start and at the end compared (default 10)"
    )
    parser.add_argument(
        "--cases",
        default="one",
        help="which of one, overloaded (the engine costs 2 frame intervals), overloaded+hog (and busy processes on "
        "every core) to run, comma-separated (default one)",
    )
    parser.add_argument("--fps", type=float, default=30.0, help="frames per second sent (default 30)")
    parser.add_argument("--size", type=parse_size, default=(640, 480), help="WIDTHxHEIGHT sent (default 640x480)")
    parser.add_argument("--engine", choices=("identity", "facedancer"), default="identity")
    parser.add_argument(
        "--random-weights", action="store_true", help="FaceDancer C + ArcFace randomly initialised (same compute)"
    )
    parser.add_argument("--device", default="auto", help="the in-process server's device: auto, cpu or cuda[:N]")
    parser.add_argument(
        "--backend",
        choices=("auto", "eager", "onnxruntime", "cuda-graphs", "tensorrt"),
        default="auto",
        help="the in-process server's FaceDancer backend (default auto: the fastest one here)",
    )
    parser.add_argument("--url", help="an already-running server (else one is started in this process)")
    parser.add_argument("--token", help="the server's token, when it needs one")
    parser.add_argument("--modes", default="off,on", help="which of off,on to run (default both)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds at the start of each mode left out")
    parser.add_argument("--grace", type=float, default=1.5, help="quiet seconds that end a mode after sending")
    parser.add_argument(
        "--client-receiver",
        choices=("browser", "aiortc"),
        default="browser",
        help="browser (default): the client decodes a frame on its last packet, as browsers do; aiortc: aiortc's "
        "own receiver, which holds each frame until the next one starts",
    )
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/e2e-...json)")
    args = parser.parse_args(argv)
    if args.random_weights:
        args.engine = "facedancer"
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or any(m not in dict(MODES) for m in args.modes):
        parser.error("--modes takes off, on or off,on")
    if args.warmup >= args.seconds:
        parser.error("--warmup must be shorter than --seconds")
    if not 0 < args.window <= (args.seconds - args.warmup) / 2:
        parser.error("--window must be positive and at most half of the measured seconds")
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not args.cases or any(c not in CASES for c in args.cases):
        parser.error(f"--cases takes one or more of {', '.join(CASES)}")
    if args.url and any(c != "one" for c in args.cases):
        parser.error("--cases overloaded needs the in-process server (its engine's cost is set at start)")
    console = Console(width=160)

    backend: str | None = None
    cases: dict[str, Any] = {}
    info: dict = {}
    for case in args.cases:
        simulate_ms = 2000.0 / args.fps if case.startswith("overloaded") else 0.0
        hog = (os.cpu_count() or 1) if case.endswith("+hog") else 0
        console.print(f"[bold]case {case}[/]: {simulate_ms:g} ms simulated per frame, {hog} busy processes beside")
        server: ServerThread | None = None
        url = args.url
        if url is None:
            console.print(
                f"starting the server in this process ({args.engine}{', random weights' * args.random_weights})"
            )
            services = build_services(args.engine, args.random_weights, args.device, args.backend, simulate_ms)
            backend = services.backend_message
            if backend:
                console.print(backend)
            server = ServerThread(services)
            url = server.start()
        try:
            with cpu_hog(hog):
                info, modes = asyncio.run(run_all(url, args, console))
        finally:
            if server is not None:
                server.stop()
        cases[case] = {"simulate_ms": simulate_ms, "hog_processes": hog, "modes": modes}

    name, slug = device_label(info)
    engine = str(info.get("engine", args.engine))
    label = engine + (" (random weights)" if args.random_weights and engine == "facedancer" else "")
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    import aiortc

    result = {
        "benchmark": "e2e_webrtc",
        "device": name,
        "device_type": str(info.get("device", "cpu")).split(":")[0],
        "date": date,
        "command": "python -m benchmarks.e2e_webrtc " + " ".join(argv if argv is not None else sys.argv[1:]),
        "python": platform.python_version(),
        "aiortc": aiortc.__version__,
        "av": av.__version__,
        "server": "in-process" if args.url is None else args.url,
        "engine": engine,
        "engine_label": label,
        "random_weights": bool(args.random_weights),
        "backend": backend,
        "size": f"{args.size[0]}x{args.size[1]}",
        "fps": args.fps,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "window": args.window,
        "client_receiver": args.client_receiver,
        "cases": cases,
    }
    console.print(table(result))
    tag = engine + ("-random" if args.random_weights and engine == "facedancer" else "")
    out = args.out or RESULTS / f"e2e-{slug}-{tag}-{date[:10]}.json"
    console.print("saved " + " and ".join(map(str, save(out, result, markdown(result)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
