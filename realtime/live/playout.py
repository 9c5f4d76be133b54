"""The RTP playout-delay header extension on our outbound video: a ceiling on the receiver's jitter buffer.

Design notes: docs/design-notes.md, section realtime/live/playout.py.
"""

from __future__ import annotations

from typing import Any

from aiortc import codecs, rtp
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters

URI = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay"
MIN_MS = 0
MAX_MS = 0  # 0: render each frame as soon as it is decoded (measured: benchmarks/results/e2e-chromium-playout-*)
_ID = 6  # our offer's id (aiortc answers with the offerer's); unique beside aiortc's 1-3 across BUNDLE


def payload(min_ms: int = MIN_MS, max_ms: int = MAX_MS) -> bytes:
    """The extension's 3 bytes: 12-bit minimum and maximum delay, in 10 ms units."""
    lo, hi = min_ms // 10, max_ms // 10
    if not 0 <= lo <= hi < 4096:
        raise ValueError(f"playout delay {min_ms}..{max_ms} ms is not 0 <= min <= max < 40960")
    return bytes(((lo >> 4) & 0xFF, ((lo & 0xF) << 4) | ((hi >> 8) & 0xF), hi & 0xFF))


def install() -> None:
    """Offer and answer the extension on video, and send it on every video packet once negotiated. Idempotent."""
    video = codecs.HEADER_EXTENSIONS["video"]
    if not any(e.uri == URI for e in video):
        video.append(RTCRtpHeaderExtensionParameters(id=_ID, uri=URI))
    mapping = rtp.HeaderExtensionsMap
    if getattr(mapping, "_dancecam_playout", False):
        return
    configure, pack = mapping.configure, mapping.set

    def configure_with_playout(self: Any, parameters: Any) -> None:
        configure(self, parameters)
        self._playout_id = next((e.id for e in parameters.headerExtensions if e.uri == URI), None)

    def set_with_playout(self: Any, values: Any) -> tuple[int, bytes]:
        profile, data = pack(self, values)
        ext_id = getattr(self, "_playout_id", None)
        if ext_id is None:
            return profile, data
        extensions = list(rtp.unpack_header_extensions(profile, data)) if data else []
        return rtp.pack_header_extensions([*extensions, (ext_id, payload())])

    mapping.configure = configure_with_playout  # type: ignore[method-assign]
    mapping.set = set_with_playout  # type: ignore[method-assign]
    mapping._dancecam_playout = True  # type: ignore[attr-defined]
