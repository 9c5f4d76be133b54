"""Publish a real face over WHIP with the FFmpeg that PyAV ships, for tests: `python -m tests.realtime.pyav_whip URL`.

A process of its own: PyAV holds the GIL while FFmpeg's WHIP muxer does its HTTP, ICE and DTLS exchange (in the
first `mux`), so a server on an event loop in the same process would never answer it. H.264 constrained baseline
(zerolatency, no B-frames) and Opus, like OBS; each video frame stamped with its number; in real time. Exit 0 when
FFmpeg published and closed (it sends the DELETE), 1 with FFmpeg's error on stderr otherwise.
"""

from __future__ import annotations

import argparse
import fractions
import logging
import sys
import time

import av
import numpy as np

from realtime.live import stamp
from tests import faces
from tests.live_client import face_frame

FPS = 30


def publish(url: str, seconds: float, options: dict[str, str]) -> int:
    """Send `seconds` of video and audio to `url`; the number of video frames sent."""
    frame = face_frame(faces.astronaut()[40:440, 56:456])
    sent = 0
    with av.open(url, "w", format="whip", options=options) as out:
        video = out.add_stream("libx264", rate=FPS, options={"profile": "baseline", "tune": "zerolatency"})
        video.width, video.height, video.pix_fmt = frame.shape[1], frame.shape[0], "yuv420p"
        video.codec_context.max_b_frames = 0
        audio = out.add_stream("libopus", rate=48000)
        audio.layout = "stereo"
        silence = np.zeros((1, 960 * 2), np.int16)  # 20 ms of stereo s16, interleaved
        audio_pts, start = 0, None
        for number in range(int(seconds * FPS)):
            image = frame.copy()
            stamp.stamp(image, number)
            picture = av.VideoFrame.from_ndarray(image, format="rgb24")
            picture.pts, picture.time_base = number, fractions.Fraction(1, FPS)
            for packet in video.encode(picture):
                out.mux(packet)  # the first one connects: HTTP, ICE, DTLS
            while audio_pts < (number + 1) * 48000 // FPS:
                sound = av.AudioFrame.from_ndarray(silence, format="s16", layout="stereo")
                sound.sample_rate, sound.pts, sound.time_base = 48000, audio_pts, fractions.Fraction(1, 48000)
                audio_pts += 960
                for packet in audio.encode(sound):
                    out.mux(packet)
            sent = number + 1
            start = time.monotonic() - number / FPS if start is None else start  # the clock starts once connected
            time.sleep(max(0.0, start + (number + 1) / FPS - time.monotonic()))  # real time, like a camera
    return sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--token", help="the WHIP muxer's `authorization` option: sent as a Bearer token")
    parser.add_argument("--cert-file", help="the WHIP muxer's `cert_file` (with --key-file): its DTLS certificate")
    parser.add_argument("--key-file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    av.logging.set_level(av.logging.WARNING)  # FFmpeg's own lines ("DTLS session failed") on stderr
    options = {"handshake_timeout": "5000"}
    for name, value in (("authorization", args.token), ("cert_file", args.cert_file), ("key_file", args.key_file)):
        if value:
            options[name] = value
    try:
        sent = publish(args.url, args.seconds, options)
    except Exception as e:  # av raises OSError with FFmpeg's last log line ("DTLS session failed")
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"published {sent} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
