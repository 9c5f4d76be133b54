"""The glass-to-glass stamp (realtime/live/stamp.py, web/stamp.js): round trips, real VP8/H.264 encodes, the encoder's
downscale, rejection of damaged codes, and pixel-for-pixel agreement of the JavaScript module with the Python one.
"""

from __future__ import annotations

import fractions
import json
import shutil
import subprocess
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from realtime.live import stamp
from tests.faces import astronaut

ROOT = Path(__file__).resolve().parents[2]
SIZES = [(640, 480), (480, 360), (1280, 720), (320, 240), (333, 250)]


def face_frame(width: int, height: int, shift: int = 0) -> np.ndarray:
    """The astronaut's photo filling the frame, panned `shift` pixels: a real face and real texture in the corner."""
    side = int(max(width, height) * 1.4)
    big = cv2.resize(astronaut(), (side, side), interpolation=cv2.INTER_AREA)
    x = shift % (side - width)
    return np.ascontiguousarray(big[:height, x : x + width])


def cell_rect(row: int, col: int, width: int) -> tuple[int, int, int, int]:
    return stamp._cell(row, col, width)


@pytest.mark.parametrize(("width", "height"), SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
@pytest.mark.parametrize("number", [0, 1, 0x5A5A, 40_000, 65_535])
def test_round_trip(width: int, height: int, number: int) -> None:
    frame = face_frame(width, height)
    assert stamp.read(frame) is None  # a plain picture has no code
    stamp.stamp(frame, number)
    assert stamp.read(frame) == number
    assert stamp.read_luma(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)) == number


def test_number_wraps_at_16_bits() -> None:
    frame = face_frame(640, 480)
    stamp.stamp(frame, 65_536 + 7)
    assert stamp.read(frame) == 7


@pytest.mark.parametrize(("width", "height"), SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_stamp_touches_only_its_region(width: int, height: int) -> None:
    frame = face_frame(width, height)
    before = frame.copy()
    stamp.stamp(frame, 0xFFFF)
    x0, y0, x1, y1 = stamp.stamp_region(width, height)
    assert (x0, y0) == (0, 0)
    changed = np.argwhere((frame != before).any(axis=2))
    assert changed[:, 0].max() < y1
    assert changed[:, 1].max() < x1
    # a fraction of the frame: 7/40 of the width, 4/40 of the width high
    assert x1 == round(width * 7 / 40)
    assert y1 == round(width * 4 / 40)


def test_layout_cells_are_one_fortieth_of_the_width() -> None:
    assert stamp.stamp_region(640, 480) == (0, 0, 112, 64)  # 16 px cells
    assert stamp.stamp_region(480, 360) == (0, 0, 84, 48)  # 12 px cells after Chromium's downscale
    assert stamp.stamp_region(1280, 720) == (0, 0, 224, 128)
    frame = np.full((480, 640, 3), 128, np.uint8)
    stamp.stamp(frame, 0)
    for cells, level in ((stamp.REF_WHITE, 255), (stamp.REF_BLACK, 0)):
        for r, c in cells:
            x0, y0, x1, y1 = cell_rect(r, c, 640)
            assert (x1 - x0, y1 - y0) == (16, 16)
            assert (frame[y0:y1, x0:x1] == level).all()


def test_yuv420p_planes() -> None:
    width, height = 480, 360
    frame = av.VideoFrame.from_ndarray(face_frame(width, height), format="rgb24").reformat(format="yuv420p")
    packed = bytearray(frame.to_ndarray().tobytes())  # I420: Y, then U, then V
    assert stamp.read_yuv420p(packed, width, height) is None
    stamp.stamp_yuv420p(packed, width, height, 12_345)
    assert stamp.read_yuv420p(bytes(packed), width, height) == 12_345
    # and through RGB: the video-range levels convert back to black and white
    planes = np.frombuffer(bytes(packed), np.uint8).reshape(height * 3 // 2, width)
    rgb = av.VideoFrame.from_ndarray(planes, format="yuv420p").to_ndarray(format="rgb24")
    assert stamp.read(rgb) == 12_345


def encode_decode(
    frames: list[np.ndarray], codec: str, kbps: int, out_width: int | None = None
) -> tuple[list[np.ndarray], float]:
    """Encode RGB frames at 30 fps and `kbps` (optionally scaled to `out_width` first, as an encoder under bandwidth
    pressure does), decode them again; returns the decoded RGB frames and the bitrate actually spent."""
    height, width = frames[0].shape[:2]
    ow = out_width or width
    oh = (height * ow // width) // 2 * 2
    enc = av.CodecContext.create(codec, "w")
    enc.width, enc.height, enc.pix_fmt = ow, oh, "yuv420p"
    enc.bit_rate = kbps * 1000
    enc.framerate = fractions.Fraction(30)
    enc.time_base = fractions.Fraction(1, 30)
    if codec == "libvpx":  # as aiortc configures it: real time, no look-ahead
        enc.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    else:
        enc.options = {"preset": "ultrafast", "tune": "zerolatency"}
    packets = []
    for i, rgb in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(width=ow, height=oh, format="yuv420p")
        vf.pts = i
        packets += enc.encode(vf)
    packets += enc.encode(None)
    dec = av.CodecContext.create("libvpx" if codec == "libvpx" else "h264", "r")
    out = [d.to_ndarray(format="rgb24") for p in packets for d in dec.decode(p)]
    kbit = sum(p.size for p in packets) * 8 / 1000
    return out, kbit / (len(frames) / 30)


CODEC_CASES = [
    ("libvpx", 640, 480, 300, None),
    ("libvpx", 640, 480, 300, 480),  # Chromium's 640x480 -> 480x360
    ("libvpx", 1280, 720, 300, None),
    ("libvpx", 320, 240, 100, None),
    ("libx264", 640, 480, 300, None),
    ("libx264", 640, 480, 200, 480),
]


@pytest.mark.parametrize(
    ("codec", "width", "height", "kbps", "out_width"),
    CODEC_CASES,
    ids=[f"{c}-{w}x{h}-{k}k" + (f"-to{o}" if o else "") for c, w, h, k, o in CODEC_CASES],
)
def test_survives_a_real_encode(codec: str, width: int, height: int, kbps: int, out_width: int | None) -> None:
    if codec not in av.codecs_available:
        pytest.skip(f"PyAV here has no {codec} encoder")
    start = 65_520  # crosses the 16-bit wrap
    frames = []
    for i in range(45):  # a slow pan: the background moves under the code, the code changes every frame
        frame = face_frame(width, height, shift=3 * i)
        stamp.stamp(frame, start + i)
        frames.append(frame)
    decoded, spent = encode_decode(frames, codec, kbps, out_width)
    assert len(decoded) == len(frames)
    assert spent < 3 * kbps  # the encoder really ran at a low rate (it overshoots a little on key frames)
    read = [stamp.read(f) for f in decoded]
    assert read == [(start + i) % 65_536 for i in range(len(frames))]


def test_rejects_damaged_codes() -> None:
    frame = face_frame(640, 480)
    stamp.stamp(frame, 0x1234)
    assert stamp.read(frame) == 0x1234
    for r, c in stamp.BIT_CELLS:  # any one cell flipped: the checksum catches it
        bad = frame.copy()
        x0, y0, x1, y1 = cell_rect(r, c, 640)
        bad[y0:y1, x0:x1] = 255 - bad[y0:y1, x0:x1]
        assert stamp.read(bad) is None, (r, c)
    for r, c in (*stamp.REF_WHITE, *stamp.REF_BLACK):  # a reference flipped: no contrast
        bad = frame.copy()
        x0, y0, x1, y1 = cell_rect(r, c, 640)
        bad[y0:y1, x0:x1] = 255 - bad[y0:y1, x0:x1]
        assert stamp.read(bad) is None, (r, c)
    grey = frame.copy()  # a cell half-way between black and white: ambiguous
    x0, y0, x1, y1 = cell_rect(*stamp.BIT_CELLS[3], 640)
    grey[y0:y1, x0:x1] = 128
    assert stamp.read(grey) is None
    assert stamp.read(255 - frame) is None  # inverted
    assert stamp.read(np.zeros_like(frame)) is None
    assert stamp.read(np.full_like(frame, 255)) is None
    covered = frame.copy()  # something (a hand, a face) over the corner
    covered[: 64 * 2 // 3, : 112 * 2 // 3] = face_frame(640, 480, shift=50)[: 64 * 2 // 3, : 112 * 2 // 3]
    assert stamp.read(covered) is None


def test_checksum_catches_every_single_and_double_bit_error() -> None:
    rng = np.random.default_rng(0)
    for n in rng.integers(0, 65_536, 200):
        bits = stamp._bits(int(n))
        word = int("".join(map(str, bits)), 2)
        for i in range(24):
            for j in range(i, 24):
                bad = word ^ (1 << i) ^ (1 << j) if j != i else word ^ (1 << i)
                number, check = bad >> 8, bad & 0xFF
                assert stamp.crc8(bytes([number >> 8, number & 0xFF])) != check


def test_too_small_frames() -> None:
    with pytest.raises(ValueError, match="too small"):
        stamp.stamp(np.zeros((200, 60, 3), np.uint8), 1)
    with pytest.raises(ValueError, match="too small"):
        stamp.stamp(np.zeros((4, 640, 3), np.uint8), 1)
    assert stamp.read(np.zeros((4, 640, 3), np.uint8)) is None


NODE_SCRIPT = """
import { readFileSync, writeFileSync } from "node:fs";
import { stampImageData, readImageData, stampRegion } from "./stamp.mjs";
const jobs = JSON.parse(readFileSync("jobs.json", "utf8"));
const results = [];
for (const job of jobs) {
  const data = new Uint8ClampedArray(readFileSync(job.file));
  const image = { data, width: job.width, height: job.height };  // what a canvas ImageData holds
  const before = readImageData(image);
  let after = null;
  if (job.stamp !== null) {
    stampImageData(image, job.stamp);
    writeFileSync(job.file + ".out", data);
    after = readImageData(image);
  }
  results.push({ before, after, region: stampRegion(job.width, job.height) });
}
console.log(JSON.stringify(results));
"""


def run_node(tmp_path: Path, jobs: list[tuple[np.ndarray, int | None]]) -> list[dict]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed here (apt-get install -y nodejs); stamp.js cannot be run")
    shutil.copy(ROOT / "web" / "stamp.js", tmp_path / "stamp.mjs")  # .mjs: an ES module without a package.json
    (tmp_path / "run.mjs").write_text(NODE_SCRIPT)
    manifest = []
    for i, (rgb, number) in enumerate(jobs):
        h, w = rgb.shape[:2]
        rgba = np.dstack([rgb, np.full((h, w), 255, np.uint8)])
        (tmp_path / f"f{i}.rgba").write_bytes(rgba.tobytes())
        manifest.append({"file": f"f{i}.rgba", "width": w, "height": h, "stamp": number})
    (tmp_path / "jobs.json").write_text(json.dumps(manifest))
    proc = subprocess.run([node, "run.mjs"], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_stamp_js_agrees_with_python(tmp_path: Path) -> None:
    numbers = [0, 1, 0x5A5A, 40_000, 65_535, 65_536 + 9]
    jobs: list[tuple[np.ndarray, int | None]] = []
    for (w, h), n in zip([*SIZES, (640, 480)], numbers, strict=True):
        jobs.append((face_frame(w, h, shift=n % 97), n))
    # frames damaged by a real low-bitrate encode and downscale, and damaged codes: both readers must agree,
    # None included
    src = []
    for i in range(12):
        f = face_frame(640, 480, shift=5 * i)
        stamp.stamp(f, 1000 + i)
        src.append(f)
    decoded, _ = encode_decode(src, "libvpx", 150, out_width=480)
    bad = src[0].copy()
    x0, y0, x1, y1 = cell_rect(*stamp.BIT_CELLS[5], 640)
    bad[y0:y1, x0:x1] = 255 - bad[y0:y1, x0:x1]
    grey = src[1].copy()
    x0, y0, x1, y1 = cell_rect(*stamp.BIT_CELLS[9], 640)
    grey[y0:y1, x0:x1] = 127
    extra: list[np.ndarray] = [*decoded, bad, grey, face_frame(640, 480), np.zeros((40, 60, 3), np.uint8)]
    jobs += [(f, None) for f in extra]

    results = run_node(tmp_path, jobs)
    for i, ((rgb, number), res) in enumerate(zip(jobs, results, strict=True)):
        h, w = rgb.shape[:2]
        assert res["before"] == stamp.read(rgb), i
        assert tuple(res["region"]) == stamp.stamp_region(w, h)
        if number is None:
            continue
        expected = rgb.copy()
        stamp.stamp(expected, number)
        got = np.frombuffer((tmp_path / f"f{i}.rgba.out").read_bytes(), np.uint8).reshape(h, w, 4)
        assert (got[..., 3] == 255).all()  # alpha untouched
        np.testing.assert_array_equal(got[..., :3], expected)  # byte for byte the same pixels
        assert res["after"] == number % 65_536 == stamp.read(expected)
    assert [r["before"] for r in results[len(numbers) : len(numbers) + len(decoded)]] == list(range(1000, 1012))
