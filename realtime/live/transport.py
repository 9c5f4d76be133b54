"""aiortc media glue around the pipeline worker: inbound track → `drain` → worker → `SwappedVideoTrack`.

Design notes: docs/design-notes.md, section realtime/live/transport.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole, MediaRelay
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtpPacket

from engines.errors import SignallingError
from realtime.live import allocator, dtls_peer, ice, playout
from realtime.live.av_frames import from_av, to_av
from realtime.pipeline.worker import FrameProcessor, PipelineWorker, ProcessedFrame

log = logging.getLogger(__name__)

REPEAT_AFTER_S = 0.5  # how long the outbound track waits for a new processed frame before repeating the last one


async def drain(
    track: MediaStreamTrack,
    worker: PipelineWorker,
    stop: asyncio.Event | None = None,
    on_input: Callable[[], None] | None = None,
) -> None:
    """Submit every video frame of `track` to `worker` as soon as it arrives, until the track ends or `stop` is set.

    Decoded WebRTC video is yuv420p: its planes go to the worker as they are (one packed (H * 3 / 2, W) copy, no
    colour conversion on the event loop); the pipeline converts on its device and converts back only the faces'
    boxes, so every other pixel (the glass-to-glass stamp too) leaves bit-identical. Frames in any other format (or
    with an odd size, which yuv420p cannot pack) go as RGB. Each goes as a typed `Frame` with its pts and time base,
    which the outbound frame carries (the tracker's timestamp is the pts in seconds).
    Ends without error when the track ends (`MediaStreamError`) or `stop` is set; non-video frames are skipped.
    `on_input` is called for every video frame that arrives (the session's input rate).
    """
    stopped = asyncio.ensure_future(stop.wait()) if stop is not None else None
    receiving: asyncio.Future[Any] | None = None
    try:
        while stopped is None or not stopped.done():
            receiving = asyncio.ensure_future(track.recv())
            if stopped is not None:
                await asyncio.wait({receiving, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not receiving.done():
                    return  # stopped while waiting for a frame
            try:
                frame = receiving.result() if receiving.done() else await receiving
            except MediaStreamError:
                return  # the track ended: the peer left or the source stopped
            if not isinstance(frame, av.VideoFrame):
                continue
            if on_input is not None:
                on_input()
            worker.submit(from_av(frame))
    finally:  # cancelled or stopped: leave no task behind
        for pending in (receiving, stopped):
            if pending is not None and not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, MediaStreamError):
                    await pending


class SwappedVideoTrack(MediaStreamTrack):
    """The outbound video: the worker's processed frames, each with the pts and time base of its input frame.

    `recv` waits (without blocking the loop) for a processed frame newer than the one it last returned; after
    `repeat_after` seconds it returns the last one again, counted as `repeated_frames`. A repeat gets the previous
    pts plus one tick, so an encoder sees strictly increasing timestamps. Before the first processed frame it
    waits, however long. Create it on the event loop that will call `recv`; it takes over the worker's `on_frame`.
    """

    kind = "video"

    def __init__(self, worker: PipelineWorker, repeat_after: float = REPEAT_AFTER_S) -> None:
        super().__init__()
        self.worker = worker
        self.repeat_after = repeat_after
        self._loop = asyncio.get_running_loop()
        self._arrived = asyncio.Event()
        self._newest: ProcessedFrame | None = None  # written on the worker thread, read on the loop
        self.last: ProcessedFrame | None = None  # the processed frame `recv` returned last
        self._last_pts: Any = None
        worker.on_frame = self._on_frame

    def _on_frame(self, frame: ProcessedFrame) -> None:  # on the worker thread
        self._newest = frame
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening any more
            self._loop.call_soon_threadsafe(self._arrived.set)

    async def recv(self) -> av.VideoFrame:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.repeat_after
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            self._arrived.clear()
            newest = self._newest
            if newest is not None and (self.last is None or newest.sequence > self.last.sequence):
                return self._emit(newest, repeat=False)
            if self.last is None:
                await self._arrived.wait()  # nothing processed yet: wait, never show the raw input
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                self.worker.count_repeat()
                return self._emit(self.last, repeat=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    def _emit(self, processed: ProcessedFrame, repeat: bool) -> av.VideoFrame:
        out = to_av(processed.frame)
        pts = out.pts
        if pts is not None and self._last_pts is not None and (repeat or pts <= self._last_pts):
            out.pts = pts = self._last_pts + 1  # keep timestamps strictly increasing for the encoder
        self.last, self._last_pts = processed, pts
        return out

    def stop(self) -> None:
        super().stop()
        if self.worker.on_frame == self._on_frame:
            self.worker.on_frame = None
        self._arrived.set()  # wake a waiting `recv`, which then raises MediaStreamError


class LiveSession:
    """One live stream: `source` → `drain` task → worker thread → `output`. Create it on the event loop.

    `close` stops the drain task, the outbound track and the worker (joined in a thread), leaving no task behind.
    When the source ends the drain task finishes and `output` goes on repeating the last processed frame.
    """

    def __init__(
        self,
        source: MediaStreamTrack,
        pipeline: FrameProcessor,  # a FramePipeline, or a session's pipeline around one
        repeat_after: float = REPEAT_AFTER_S,
        name: str = "dancecam-pipeline",
        on_input: Callable[[], None] | None = None,
    ) -> None:
        self.source = source
        self.worker = PipelineWorker(pipeline, name=name)
        self.output = SwappedVideoTrack(self.worker, repeat_after)
        self._stop = asyncio.Event()
        self.worker.start()
        self.drain_task = asyncio.create_task(drain(source, self.worker, self._stop, on_input), name=f"{name}-drain")

    async def close(self) -> None:
        self._stop.set()
        if not self.drain_task.done():
            self.drain_task.cancel()
        try:
            await self.drain_task
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("the inbound track's drain task failed")
        self.output.stop()
        await asyncio.to_thread(self.worker.stop)


# --- peers ----------------------------------------------------------------------------------------------------

CONNECT_TIMEOUT_S = 10.0  # an answered offer whose peer never connects is given up after this long
IDLE_TIMEOUT_S = 15.0  # a connected peer that sends no decodable video for this long has gone
# A connected peer sends RTCP reports every second or so even when its video pauses (a background tab): nothing at
# all for this long means it has gone, and its slot is freed.
SILENCE_TIMEOUT_S = 3.0
WATCH_INTERVAL_S = 0.5
# Why a session ended, for /api/stats, the log and the metrics.
EndCause = Literal[
    "client",
    "peer_closed",
    "connection_failed",
    "never_connected",
    "silent",
    "no_video",
    "pipeline_failed",
    "negotiation_failed",
    "shutdown",
    "host_lost",  # a cluster's front lost contact with the session's host
]


async def packets_received(pc: RTCPeerConnection) -> int:
    """Every datagram `pc`'s transports received after ICE (media, RTCP, DTLS): a peer that still lives sends some."""
    report = await pc.getStats()
    return sum(int(getattr(s, "packetsReceived", 0) or 0) for s in report.values() if s.type == "transport")


class MarkerJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer, except that a frame leaves as soon as its last packet (RTP marker bit) is in.

    aiortc releases a frame only when the first packet of the next frame arrives, which holds every frame one
    inter-frame interval of the sender: 33 ms at 30 fps. Browsers decode on the marker bit; so do we. A frame whose
    packets are not all in yet (loss, reordering) is left to aiortc's own rule.
    """

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        pli, frame = super().add(packet)
        if frame is not None or not packet.marker or self._origin is None:
            return pli, frame
        packets = []
        for count in range(self._capacity):  # the frame ending here, if it is complete from the origin on
            p = self._packets[(self._origin + count) % self._capacity]
            if p is None or p.timestamp != packet.timestamp:
                return pli, None
            packets.append(p)
            if p.sequence_number == packet.sequence_number:
                self.remove(count + 1)
                return pli, JitterFrame(b"".join(x._data for x in packets), packet.timestamp)  # type: ignore[attr-defined]
        return pli, None


_JITTER_ATTRIBUTE = "_RTCRtpReceiver__jitter_buffer"  # private in aiortc (1.9 to 1.16 at least)


def decode_on_marker(receiver: RTCRtpReceiver) -> bool:
    """Give a video receiver the `MarkerJitterBuffer`; False (and aiortc's own buffer kept) where that is impossible."""
    current = getattr(receiver, _JITTER_ATTRIBUTE, None)
    if isinstance(current, MarkerJitterBuffer):
        return True
    if type(current) is not JitterBuffer or not getattr(current, "_is_video", False):
        return False
    setattr(receiver, _JITTER_ATTRIBUTE, MarkerJitterBuffer(capacity=current.capacity, is_video=True))
    return True


def media_route(pc: RTCPeerConnection) -> dict[str, str] | None:
    """`pc`'s nominated ICE pair as {"local": "host:port", "remote": "host:port"}; None before one is chosen."""
    for transceiver in pc.getTransceivers():
        ice_transport = getattr(transceiver.receiver.transport, "transport", None)
        connection = getattr(ice_transport, "_connection", None)  # aioice's Connection: aiortc shows no stats of it
        for pair in list(getattr(connection, "_nominated", {}).values()):
            local, remote = pair.local_candidate, pair.remote_candidate
            return {"local": f"{local.host}:{local.port}", "remote": f"{remote.host}:{remote.port}"}
    return None


def detach_listeners(pc: RTCPeerConnection) -> None:
    """Drop the event handlers of a closed `pc` and of its transports. aiortc's transports call back into the
    connection that made them, a reference cycle: without this a closed connection, and all that its own handlers
    reach, is freed only by a full garbage collection."""
    sctp = pc.sctp
    emitters: list[Any] = [pc] if sctp is None else [pc, sctp]
    for dtls in [t.sender.transport for t in pc.getTransceivers()] + ([sctp.transport] if sctp is not None else []):
        emitters += [dtls, dtls.transport, dtls.transport.iceGatherer]  # DTLS, ICE, ICE gatherer
    for emitter in emitters:
        emitter.remove_all_listeners()


def rtc_configuration() -> RTCConfiguration:
    # no ICE servers: aiortc would otherwise add a public STUN server, which stalls gathering offline, and
    # DanceCam serves peers that reach it directly (localhost or the LAN)
    return RTCConfiguration(iceServers=[])


def _peer_connection() -> RTCPeerConnection:
    playout.install()  # a ceiling on the receiver's jitter buffer (realtime/live/playout.py)
    return RTCPeerConnection(rtc_configuration())


def _offer(sdp: object, ice_addresses: tuple[str, ...] | None = None) -> RTCSessionDescription:
    if not isinstance(sdp, str) or "m=" not in sdp or not sdp.lstrip().startswith("v=0"):
        raise SignallingError("the offer is not an SDP session description (it must start with v=0)")
    if ice.all_loopback(ice_addresses):
        sdp = ice.loopback_candidates_only(sdp)
    return RTCSessionDescription(sdp=sdp, type="offer")


def _unusable(error: Exception) -> str:
    """The message for an offer aiortc refused. Its SDP parser raises bare AssertionErrors; a media section with no
    codec in common raises "Failed to set remote <kind> description send parameters"."""
    text = str(error)
    if "description send parameters" in text:
        if "video" in text:
            return "no video codec in common: offer VP8 or H.264"
        return "no audio codec in common: offer Opus, G.722, PCMU or PCMA (or no audio)"
    return f"the offer cannot be used: {text or 'it is not a valid SDP session description'}"


async def _negotiate(
    pc: RTCPeerConnection,
    offer: RTCSessionDescription,
    check: Callable[[], None],
    ice_addresses: tuple[str, ...] | None = None,
) -> str:
    """Apply the remote offer, run `check` (raises SignallingError), answer with candidates on `ice_addresses`
    (None: every interface but loopback); aiortc's errors become 400s."""
    try:
        await pc.setRemoteDescription(offer)
    except SignallingError:
        raise
    except Exception as e:  # aiortc raises ValueError, InvalidAccessError, ... for SDP it cannot use
        raise SignallingError(_unusable(e)) from None
    for transceiver in pc.getTransceivers():  # before any packet arrives: decode each frame on its last packet
        if transceiver.kind == "video" and not decode_on_marker(transceiver.receiver):
            log.warning("aiortc's receiver is not what we know: frames wait for the next one (+1 frame of latency)")
    check()
    try:
        answer = await pc.createAnswer()
        with ice.host_addresses(ice_addresses):
            await pc.setLocalDescription(answer)  # gathers the local candidates into the SDP (no trickle)
    except Exception as e:
        raise SignallingError(f"no answer is possible for this offer: {str(e) or type(e).__name__}") from None
    return pc.localDescription.sdp


class Publisher:
    """A session's inbound peer: a browser (`echo`: the swapped video and the audio go back to it) or WHIP.

    The first inbound video track feeds the pipeline (`LiveSession`); the first audio track is relayed unchanged
    to the browser and to WHEP viewers. Tracks nobody uses are drained into a blackhole, so no receive queue
    grows. `on_end(cause, reason)` is called once when the peer fails, closes, never connects, goes silent, or
    stops sending video.
    """

    def __init__(
        self,
        pipeline: Any,
        echo: bool,
        on_end: Callable[[EndCause, str], Awaitable[None]],
        on_input: Callable[[], None] | None = None,
        name: str = "dancecam-session",
        connect_timeout: float = CONNECT_TIMEOUT_S,
        idle_timeout: float = IDLE_TIMEOUT_S,
        ice_addresses: tuple[str, ...] | None = None,
        silence_timeout: float = SILENCE_TIMEOUT_S,
    ) -> None:
        self.pc = _peer_connection()
        self.ice_addresses = ice_addresses
        self.relay = MediaRelay()
        self.live: LiveSession | None = None
        self.audio: MediaStreamTrack | None = None
        self.viewers: set[Viewer] = set()
        self._pipeline = pipeline
        self._echo = echo
        self._on_end = on_end
        self._on_input = on_input
        self._name = name
        self._sinks: list[MediaBlackhole] = []
        self._tracks: list[MediaStreamTrack] = []  # relay subscriptions: stopped on close, or the relay keeps them
        self._watchdog: asyncio.Task[None] | None = None
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._silence_timeout = silence_timeout
        self._last_input = asyncio.get_running_loop().time()
        self._ending = False
        self.closed = False
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    @property
    def worker(self) -> PipelineWorker | None:
        return self.live.worker if self.live is not None else None

    @property
    def state(self) -> str:
        return self.pc.connectionState

    def media_route(self) -> dict[str, str] | None:
        """The local and remote address ("host:port") the media flow between, once ICE has chosen a pair."""
        return media_route(self.pc)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video" and self.live is None:
            self.live = LiveSession(track, self._pipeline, name=self._name, on_input=self._input)
            if self._echo:
                self.pc.addTrack(self._subscribe(self.live.output))
        elif track.kind == "audio" and self.audio is None:
            self.audio = track
            self._drain_unused(self._subscribe(track))  # the relay reads the audio even with nobody listening
            if self._echo:
                self.pc.addTrack(self._subscribe(track))
        else:
            self._drain_unused(track)

    def _subscribe(self, track: MediaStreamTrack) -> MediaStreamTrack:
        proxy = self.relay.subscribe(track, buffered=False)
        self._tracks.append(proxy)
        return proxy

    def _drain_unused(self, track: MediaStreamTrack) -> None:
        sink = MediaBlackhole()
        sink.addTrack(track)
        self._sinks.append(sink)

    def _input(self) -> None:
        self._last_input = asyncio.get_running_loop().time()
        if self._on_input is not None:
            self._on_input()

    async def answer(self, sdp: object) -> str:
        """The answer SDP for an offer; `SignallingError` (the caller closes this publisher) when there is none."""

        def check() -> None:
            if self.live is None:
                raise SignallingError("the offer has no video track: DanceCam needs a camera's video")

        answer = await _negotiate(self.pc, _offer(sdp, self.ice_addresses), check, self.ice_addresses)
        if self._echo:  # the answer's direction: what the offer allows and ours (sendrecv once _on_track added ours)
            video = [t for t in self.pc.getTransceivers() if t.kind == "video"]
            if video and video[0].currentDirection != "sendrecv":
                raise SignallingError("the offer does not receive video back: offer the video as sendrecv")
        for sink in self._sinks:
            await sink.start()
        self._watchdog = asyncio.create_task(self._watch(), name=f"{self._name}-watchdog")
        return answer

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        start = tick = loop.time()
        heard, heard_at = -1, start  # packets received from the peer, and when that count last grew
        while not self.closed:
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = loop.time()
            stalled = now - tick > 4 * WATCH_INTERVAL_S  # this loop itself was held up: its silence proves nothing
            tick = now
            if self.pc.connectionState != "connected":
                if now - start > self._connect_timeout and self.pc.connectionState in ("new", "connecting"):
                    await self._end("never_connected", f"the peer did not connect within {self._connect_timeout:.0f} s")
                    return
                continue
            received = await packets_received(self.pc)
            if received != heard or stalled:
                heard, heard_at = received, now
            elif now - heard_at > self._silence_timeout:
                # a killed browser or a lost network sends no DTLS close: ICE consent would notice only after 30 s
                await self._end(
                    "silent",
                    f"the peer went silent: no packets for {self._silence_timeout:.0f} s "
                    "(a closed or crashed client, or a lost network)",
                )
                return
            if now - self._last_input > self._idle_timeout:
                await self._end("no_video", f"no video for {self._idle_timeout:.0f} s on a live connection")
                return
            worker = self.worker
            if worker is not None and worker.broken:  # the session ends, saying why
                await self._end(
                    "pipeline_failed",
                    f"the pipeline failed on {worker.consecutive_errors} frames in a row: {worker.last_error}",
                )
                return

    async def _on_state(self) -> None:
        if self.pc.connectionState == "closed":
            await self._end("peer_closed", "the connection closed")
        elif self.pc.connectionState == "failed":
            why = dtls_peer.failure_reason(self.pc)  # FFmpeg's own certificate: say what the publisher must change
            await self._end("connection_failed", "the connection failed" + (f": {why}" if why else ""))

    async def _end(self, cause: EndCause, reason: str) -> None:
        if self._ending or self.closed:
            return
        self._ending = True
        await self._on_end(cause, reason)

    async def close(self) -> None:
        """Stop everything this peer started: viewers, pipeline thread, relay, blackholes, the connection."""
        if self.closed:
            return
        self.closed = True
        for viewer in list(self.viewers):
            await viewer.close()
        watchdog = self._watchdog
        if watchdog is not None and watchdog is not asyncio.current_task() and not watchdog.done():
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        try:
            if self.live is not None:
                await self.live.close()
            elif self._pipeline is not None:  # refused before a video track arrived: nothing else will close it
                await asyncio.to_thread(self._pipeline.close)
        finally:  # whatever the pipeline's teardown does, the connection and its tracks go
            for sink in self._sinks:
                await sink.stop()
            await self.pc.close()
            for track in self._tracks:
                track.stop()
            # reference cycles held this session (pipeline, frames, connection) until a full garbage collection,
            # which a server with a large heap runs rarely: the connection's handlers, and our on_end (the server's)
            detach_listeners(self.pc)
            self._on_end = _ended
            # glibc keeps what the session freed (frames, codec buffers, tensors) in its arenas: without this the
            # server's RSS grew with every session and was never given back (benchmarks/memory.py)
            await asyncio.to_thread(allocator.trim)


async def _ended(cause: EndCause, reason: str) -> None:
    """A closed publisher's `on_end`: the session has already ended."""


class Viewer:
    """A WHEP player pulling a publisher's swapped video (and its audio) through the publisher's relay."""

    def __init__(self, publisher: Publisher) -> None:
        if publisher.live is None:
            raise SignallingError("that session has no video yet")
        self.publisher = publisher
        self.pc = _peer_connection()
        self.closed = False
        self._tracks: list[MediaStreamTrack] = []  # relay subscriptions: stopped on close, or the relay keeps them
        self.pc.on("connectionstatechange", self._on_state)

    async def answer(self, sdp: object) -> str:
        publisher = self.publisher
        offer = _offer(sdp, publisher.ice_addresses)
        assert publisher.live is not None

        def check() -> None:
            kinds = {t.kind for t in self.pc.getTransceivers()}
            if "video" not in kinds:
                raise SignallingError("the WHEP offer asks for no video")
            self._tracks.append(publisher.relay.subscribe(publisher.live.output, buffered=False))
            if publisher.audio is not None and "audio" in kinds:
                self._tracks.append(publisher.relay.subscribe(publisher.audio, buffered=False))
            for track in self._tracks:
                self.pc.addTrack(track)

        answer = await _negotiate(self.pc, offer, check, publisher.ice_addresses)
        publisher.viewers.add(self)
        return answer

    async def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            await self.close()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.publisher.viewers.discard(self)
        await self.pc.close()
        detach_listeners(self.pc)  # the same cycle as a publisher's: freed now, not at the next full collection
        for track in self._tracks:
            track.stop()
