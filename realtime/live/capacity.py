"""How many live sessions this machine holds: one session's whole per-frame work, measured at start.

A probe session decodes VP8, runs the real pipeline with the session's own engine on a 640x480 frame of a real
face (detection amortised as the session's settings say) and encodes VP8, for several detection cycles after a
warm-up. The CPU time it takes (every thread of the process) is what sessions compete for on the cores there are;
its wall time says whether one session alone keeps up; on CUDA, its device time and memory bound the rest.
"""

from __future__ import annotations

import fractions
import time
from typing import Any

import numpy as np

from realtime.live.limits import Capacity, cpu_cores, given, not_measured
from realtime.live.session import LiveServices, LiveSettings

__all__ = ["Capacity", "cpu_cores", "given", "measure", "not_measured", "probe_frame"]

PROBE_SIZE = (640, 480)
USABLE_SHARE = 0.8  # of the CPU (and device) time: the event loop, the network and the rest need some too
MAX_SESSIONS = 16
WARMUP_CYCLES = 3
RUNS = 5


def probe_frame() -> np.ndarray:
    """A 640x480 RGB frame with one real face (scikit-image's astronaut, a runtime dependency) in the middle."""
    from skimage import data

    face = data.astronaut()[:440, 36:476]  # the face and shoulders, square
    width, height = PROBE_SIZE
    frame = np.full((height, width, 3), (90, 100, 120), np.uint8)
    y0, x0 = (height - face.shape[0]) // 2, (width - face.shape[1]) // 2
    frame[y0 : y0 + face.shape[0], x0 : x0 + face.shape[1]] = face
    return frame


class _Codec:
    """VP8 both ways, as a session's peer connection runs it (aiortc's own encoder and decoder)."""

    def __init__(self) -> None:
        import av
        from aiortc.codecs import get_decoder, get_encoder
        from aiortc.jitterbuffer import JitterFrame
        from aiortc.rtcrtpparameters import RTCRtpCodecParameters

        vp8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
        self._av, self._jitter_frame = av, JitterFrame
        self._encoder, self._decoder = get_encoder(vp8), get_decoder(vp8)
        self._sender = get_encoder(vp8)  # the session's outbound encoder
        self._pts = 0

    def inbound(self, rgb: np.ndarray) -> np.ndarray:
        """What a session's drain hands the worker: the camera frame, encoded by the peer and decoded here."""
        from aiortc.codecs.vpx import vp8_depayload

        frame = self._video_frame(rgb)
        payloads, timestamp = self._encoder.encode(frame)  # the peer's cost, not ours: left out of the sums below
        start = time.process_time()
        data = b"".join(vp8_depayload(p) for p in payloads)
        decoded = self._decoder.decode(self._jitter_frame(data, timestamp))
        self.decode_cpu = time.process_time() - start
        return decoded[0].to_ndarray()  # packed yuv420p planes

    def outbound(self, planes: np.ndarray) -> None:
        frame = self._av.VideoFrame.from_ndarray(planes, format="yuv420p")
        frame.pts, frame.time_base = self._pts, fractions.Fraction(1, 90000)
        self._sender.encode(frame)

    def _video_frame(self, rgb: np.ndarray) -> Any:
        frame = self._av.VideoFrame.from_ndarray(rgb, format="rgb24")
        self._pts += 3000
        frame.pts, frame.time_base = self._pts, fractions.Fraction(1, 90000)
        return frame


def measure(services: LiveServices, target_fps: float = 30.0, runs: int = RUNS) -> Capacity:
    """The session limit for `services` on this machine, measured with a probe session (see the module notes)."""
    import torch

    from realtime.identity.cache import map_identity
    from realtime.identity.source import SourceIdentity, SourcePhoto

    if not services.ready:
        return not_measured(f"the {services.engine} engine cannot start ({services.weights.message})", target_fps)
    settings = LiveSettings()
    cuda = services.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(services.device)
        torch.cuda.reset_peak_memory_stats(services.device)
        free_before = torch.cuda.mem_get_info(services.device)[0]
        allocated_before = torch.cuda.memory_allocated(services.device)
    z = torch.zeros(512)
    w = map_identity(services.facedancer, z) if services.facedancer is not None else None
    photo = SourcePhoto("probe", 1.0, 1, 1, (0.0, 0.0, 1.0, 1.0), None, 1, z)
    probe_source = SourceIdentity("probe", (photo,), z, w, 0)
    engine = services.make_engine(probe_source if services.engine == "facedancer" else None)
    from realtime.pipeline.frame import FramePipeline
    from realtime.pipeline.video import Frame

    pipeline = FramePipeline(services.detector, engine, settings.pipeline_config())
    codec = _Codec()
    rgb = probe_frame()
    cycle = settings.detect_every
    cpu_runs: list[float] = []
    wall_runs: list[float] = []
    faces = 0
    try:
        for run in range(WARMUP_CYCLES + runs):
            cpu = wall = 0.0
            for _ in range(cycle):  # a whole detection cycle: the detector's cost amortised as in a session
                planes = codec.inbound(rgb)
                start_cpu, start_wall = time.process_time(), time.perf_counter()
                result = pipeline.process(Frame(planes, "yuv420p"))
                codec.outbound(result.frame.data)
                cpu += time.process_time() - start_cpu + codec.decode_cpu
                wall += time.perf_counter() - start_wall
                faces = max(faces, result.faces)
            if run >= WARMUP_CYCLES:  # the first cycles allocate, compile and capture
                cpu_runs.append(cpu * 1e3 / cycle)
                wall_runs.append(wall * 1e3 / cycle)
        memory_mib = 0.0
        if cuda:
            free_during = torch.cuda.mem_get_info(services.device)[0]
            peak = torch.cuda.max_memory_allocated(services.device) - allocated_before
            # the driver also sees TensorRT's and ONNX Runtime's memory: the larger of the two is what a session takes
            memory_mib = max(peak, free_before - free_during, 0) / 2**20 + 1920 * 1080 * 3 / 2**20
    finally:
        pipeline.close()
    return _limit(services, target_fps, cpu_runs, wall_runs, memory_mib, cycle, faces)


def _limit(
    services: LiveServices,
    target_fps: float,
    cpu_runs: list[float],
    wall_runs: list[float],
    memory_mib: float,
    detect_every: int,
    faces: int,
) -> Capacity:
    import torch

    cores = cpu_cores()
    budget_ms = 1000.0 / target_fps
    cpu_ms = float(np.median(cpu_runs))
    wall_ms = float(np.median(wall_runs))
    by_cpu = int(cores * budget_ms * USABLE_SHARE / max(cpu_ms, 1e-3))
    limits = {"the CPU": by_cpu}
    if services.device.type == "cuda":
        limits["the GPU"] = int(budget_ms * USABLE_SHARE / max(wall_ms, 1e-3))  # the device runs one frame at a time
        torch.cuda.empty_cache()  # what the probe left cached is free for sessions
        free = torch.cuda.mem_get_info(services.device)[0] / 2**20
        limits["device memory"] = int(USABLE_SHARE * free / max(memory_mib, 1.0))
    bound = min(limits, key=lambda k: limits[k])
    limit = max(1, min(limits[bound], MAX_SESSIONS))
    probe = {
        "size": f"{PROBE_SIZE[0]}x{PROBE_SIZE[1]}",
        "faces": faces,
        "detect_every": detect_every,
        "codec": "VP8 decode + encode",
        "engine": services.engine,
        "backend": services.backend if services.engine == "facedancer" else None,
        "device": str(services.device),
    }
    face_count = f"{faces} face" + ("" if faces == 1 else "s")
    cost = f"one session ({probe['size']}, {face_count}, detection every {detect_every} frames, VP8 in and out) "
    cost += f"takes {cpu_ms:.1f} ms of CPU per frame (median of {len(cpu_runs)} runs) on {cores} core(s)"
    if services.device.type == "cuda":
        cost += f", {wall_ms:.1f} ms per frame on the GPU and {memory_mib:.0f} MiB"
    if wall_ms > budget_ms:
        reason = f"1 session, at about {1000.0 / wall_ms:.0f} fps: one alone cannot reach {target_fps:g} fps; {cost}"
    elif limits[bound] < 1:
        reason = f"1 session, below {target_fps:g} fps ({bound} is short of even one); {cost}"
    else:
        capped = f" (the cap of {MAX_SESSIONS})" if limits[bound] > MAX_SESSIONS else ""
        plural = "session" if limit == 1 else "sessions"
        reason = f"{limit} {plural} at {target_fps:g} fps{capped}, bound by {bound}; {cost}"
    return Capacity(
        limit,
        reason,
        "measured",
        target_fps,
        cores,
        round(cpu_ms, 2),
        round(wall_ms, 2),
        round(memory_mib, 1),
        [round(v, 2) for v in cpu_runs],
        probe,
    )
