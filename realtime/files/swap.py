"""File mode: swap faces in a photo or a video file, frame by frame through the same `FramePipeline` as live mode.

Design notes: docs/design-notes.md, section realtime/files/swap.py.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Literal, TypeVar

import av
import cv2
import numpy as np
from av.video.reformatter import ColorRange, Colorspace

from engines.choices import (
    DEFAULT_BACKEND,
    DEFAULT_DETECTOR,
    DEFAULT_DEVICE,
    BackendChoice,
    DetectorName,
)
from engines.errors import ConfigError, ImageError, MediaError, NoFaceError
from realtime.assembly.spec import ModelSpec
from realtime.identity.cache import decode_image
from realtime.identity.source import PhotoInput
from realtime.pipeline.badge import Badge
from realtime.pipeline.choices import (
    DEFAULT_DETECT_EVERY,
    DEFAULT_DETECT_ON_CHANGE,
    DEFAULT_ENGINE,
    DEFAULT_FACE_MODE,
    DEFAULT_MASK,
    DEFAULT_MAX_FACES,
    DEFAULT_STYLE,
    DEFAULT_THRESHOLD,
    AnonymizeStyle,
    EngineName,
    FaceMode,
    MaskKind,
)
from realtime.pipeline.face_choice import FaceChoice
from realtime.pipeline.frame import (
    FramePipeline,
    PipelineConfig,
)
from realtime.pipeline.masks import MaskSpec
from realtime.pipeline.video import Frame

IMAGE_INPUTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
VIDEO_INPUTS = (".mp4", ".mov", ".m4v", ".webm", ".mkv")
IMAGE_OUTPUTS = (".jpg", ".jpeg", ".png")
VIDEO_OUTPUTS = {".mp4": "mp4", ".mov": "mov", ".webm": "webm"}  # extension → muxer
# audio codecs copied as they are (when the muxer also says it takes them); others become AUDIO_TRANSCODE
AUDIO_COPY = {
    "mp4": ("aac", "mp3", "opus", "flac", "alac", "ac3", "eac3"),
    "mov": ("aac", "mp3", "alac", "ac3", "eac3", "pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_f32le"),
    "webm": ("opus", "vorbis"),
}
AUDIO_TRANSCODE = {"mp4": "aac", "mov": "aac", "webm": "libopus"}
VIDEO_CODECS = {"mp4": ("libx264", "mpeg4"), "mov": ("libx264", "mpeg4"), "webm": ("libvpx-vp9", "libvpx")}
_CODEC_OPTIONS = {
    "libx264": {"crf": "18", "preset": "medium"},
    "libvpx-vp9": {"crf": "30", "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"},
    "libvpx": {"crf": "10", "b": "8M", "deadline": "good", "cpu-used": "4"},
    "mpeg4": {"qscale": "3"},
}
_OPUS_RATES = (48000, 24000, 16000, 12000, 8000)

T = TypeVar("T")
Kind = Literal["image", "video"]
Sources = Sequence[tuple[Path, float]]  # source photos with their weights (`--source PHOTO[:WEIGHT]`)
Progress = Callable[[int, "int | None"], None]  # (frames done, total frames or None when unknown)


class SwapInterrupted(KeyboardInterrupt):
    """Ctrl-C during a swap. `saved` is the partial output (a playable file of `frames` frames), or None."""

    def __init__(self, frames: int, total: int | None, saved: Path | None) -> None:
        of = f" of {total}" if total else ""
        if saved is None:
            message = f"interrupted after {frames}{of} frames; no output was written"
        else:
            message = f"interrupted after {frames}{of} frames; the partial output ({frames} frames) is in {saved}"
        super().__init__(message)
        self.frames, self.total, self.saved = frames, total, saved


@dataclass(frozen=True, slots=True)
class SwapOptions:
    """Everything about a swap except the files."""

    engine: EngineName = DEFAULT_ENGINE
    style: AnonymizeStyle = DEFAULT_STYLE  # how the anonymize engine hides faces
    faces: FaceMode = DEFAULT_FACE_MODE
    reference: Path | None = None  # photo of the person to swap, for faces="reference"
    threshold: float = DEFAULT_THRESHOLD
    max_faces: int = DEFAULT_MAX_FACES
    mask: MaskKind = DEFAULT_MASK
    feather_px: float | None = None
    erode_px: int = 0
    colour_transfer: bool = False
    detect_every: int = DEFAULT_DETECT_EVERY
    detect_on_change: bool = DEFAULT_DETECT_ON_CHANGE  # also detect where something changed outside the faces
    model_dir: Path | None = None
    device: str = DEFAULT_DEVICE
    detector: DetectorName = DEFAULT_DETECTOR  # auto: SCRFD on a GPU when det_10g.onnx is present, else MTCNN
    backend: BackendChoice = DEFAULT_BACKEND  # FaceDancer's backend; auto: the fastest present
    simulate_ms: float = 0.0  # extra milliseconds per frame with a face (SimulatedCost)
    draw_boxes: bool = False  # outline the tracked faces in the output
    hide_bystanders: bool = False  # the faces not chosen hidden with `style`, so only the chosen one is swapped
    badge: Badge | None = None  # a visible "altered video" mark on every output frame
    overwrite: bool = False

    def model_spec(self) -> ModelSpec:
        """The models this swap runs (validated: `ConfigError` for a bad engine, detector, backend or cost)."""
        return ModelSpec(
            engine=self.engine,
            style=self.style,
            device=self.device,
            detector=self.detector,
            backend=self.backend,
            model_dir=self.model_dir,
            arcface=self.engine == "facedancer" or self.faces == "reference",
            simulate_ms=self.simulate_ms,
        )


@dataclass(slots=True)
class SwapReport:
    """What a finished swap did."""

    output: Path
    kind: Kind
    frames: int = 0
    total: int | None = None  # frames the input announced (video), when known
    frames_with_faces: int = 0
    fail_closed: int = 0  # frames where some face was repeated or hidden instead of swapped
    audio: str | None = None  # e.g. "copied (aac)", "transcoded aac → opus"
    size: tuple[int, int] = (0, 0)  # output width, height
    notes: list[str] = field(default_factory=list)


# --- paths ----------------------------------------------------------------------------------------------------


def check_paths(source: Path | Sources, input: Path, output: Path, overwrite: bool = False) -> Kind:
    """Validate the files of a swap before any work; returns whether it is an image or a video swap."""
    photos = [path for path, _ in as_sources(source)]
    for label, path in [*(("source photo", p) for p in photos), ("input", input)]:
        if not path.exists():
            raise MediaError(f"{label} {path} does not exist")
        if not path.is_file():
            raise MediaError(f"{label} {path} is not a file")
        if not os.access(path, os.R_OK):
            raise MediaError(f"{label} {path} is not readable (permissions)")
    for photo in photos:
        if photo.suffix.lower() not in IMAGE_INPUTS:
            raise ConfigError(f"source photo {photo} must be an image ({', '.join(IMAGE_INPUTS)})")
    ins, outs = input.suffix.lower(), output.suffix.lower()
    if ins in IMAGE_INPUTS:
        kind: Kind = "image"
    elif ins in VIDEO_INPUTS:
        kind = "video"
    else:
        raise ConfigError(
            f"input {input}: unsupported type {ins or '(no extension)'!r}; images: {', '.join(IMAGE_INPUTS)}; "
            f"videos: {', '.join(VIDEO_INPUTS)}"
        )
    image_out, video_out = outs in IMAGE_OUTPUTS, outs in VIDEO_OUTPUTS
    if not (image_out or video_out):
        raise ConfigError(
            f"output {output}: unsupported type {outs or '(no extension)'!r}; images: {', '.join(IMAGE_OUTPUTS)}; "
            f"videos: {', '.join(VIDEO_OUTPUTS)}"
        )
    if kind == "image" and video_out:
        raise ConfigError(f"the input is a photo but {output.name} is a video: give an image output (.jpg, .png)")
    if kind == "video" and image_out:
        raise ConfigError(
            f"the input is a video but {output.name} is an image: give a video output ({', '.join(VIDEO_OUTPUTS)})"
        )
    if input.resolve() == output.resolve() or (output.exists() and os.path.samefile(input, output)):
        raise ConfigError("the output must not be the input file: choose another output name")
    if output.exists():
        if not overwrite:
            raise ConfigError(f"{output} already exists: pass --overwrite to replace it")
        if not output.is_file():
            raise ConfigError(f"{output} exists and is not a file")
    parent = output.parent
    if not parent.is_dir():
        raise MediaError(f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise MediaError(f"output folder {parent} is not writable")
    return kind


@contextlib.contextmanager
def _staged(output: Path) -> Iterator[Path]:
    """A temporary path beside `output` (same extension), removed unless the caller moved it away."""
    fd, name = tempfile.mkstemp(prefix=f".{output.stem}.", suffix=f".part{output.suffix}", dir=output.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _commit(tmp: Path, output: Path, overwrite: bool) -> None:
    """Move a finished temporary file into place; without `overwrite` an output that appeared meanwhile stays."""
    if overwrite:
        os.replace(tmp, output)
        return
    try:
        os.link(tmp, output)  # fails if the target exists: no clobbering, even in a race
    except FileExistsError:
        raise ConfigError(f"{output} appeared while swapping: pass --overwrite to replace it") from None
    except OSError:  # no hard links here (some network and FAT file systems)
        if output.exists():
            raise ConfigError(f"{output} appeared while swapping: pass --overwrite to replace it") from None
        os.replace(tmp, output)
    else:
        tmp.unlink()


# --- models ---------------------------------------------------------------------------------------------------


def _read_bytes(path: Path, label: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise MediaError(f"cannot read {label} {path}: {e.strerror}") from e


def as_sources(source: Path | str | Sources) -> Sources:
    """One photo or several `(photo, weight)` pairs, as `(photo, weight)` pairs."""
    if isinstance(source, str | Path):
        return [(Path(source), 1.0)]
    return [(Path(path), float(weight)) for path, weight in source]


def build_pipeline(source: Path | Sources, options: SwapOptions) -> tuple[FramePipeline, list[str]]:
    """Detector, engine and face choice for `options`, with the source photo checked (and embedded for FaceDancer).

    The identity engine needs no weights but the source photo must still decode and show a face, so a bad photo
    is reported before any video is read; the anonymize engine takes no source photo (one given is not read).
    FaceDancer (and reference-person choice) need ArcFace; the source's embedding is kept in the identity cache, so
    a photo is embedded once.
    """
    from realtime.assembly import builder
    from realtime.pipeline.context import DeviceContext

    spec = options.model_spec()  # engine, detector, backend and --simulate-ms are checked here
    reference_mode = options.faces == "reference"
    if reference_mode and options.reference is None:
        raise ConfigError("--faces reference needs --reference PHOTO (a photo of the person whose face to swap)")
    if options.reference is not None and not options.reference.is_file():
        raise MediaError(f"reference photo {options.reference} does not exist")
    # settings are validated before any model loads
    FaceChoice("all" if reference_mode else options.faces, options.max_faces, options.threshold)
    mask = MaskSpec(options.mask, options.feather_px, options.erode_px)
    PipelineConfig(detect_every=options.detect_every)
    models = builder.build_models(spec)
    context = DeviceContext(models.device)

    notes: list[str] = []
    if options.detector != "mtcnn":
        notes.append(models.detector_note)
    identity = None
    if options.engine == "anonymize":
        if as_sources(source):
            notes.append("the anonymize engine hides faces and puts none in: the source photo is not used")
    else:
        photos = [
            PhotoInput(_read_bytes(path, "source photo"), weight, str(path)) for path, weight in as_sources(source)
        ]
        # FaceDancer: embedded, mixed, w mapped; identity: no weights needed, but a photo without a usable face is
        # still reported now, not after the video
        identity = models.identity_builder().build(photos)
        if options.engine == "facedancer" and identity.note:
            notes.append(f"source photo: {identity.note}")
    engine = models.swap_engine(identity)  # FaceDancer's backend is chosen here, once
    if models.backend_message:
        notes.append(models.backend_message)

    reference = None
    embedder = None
    if reference_mode:
        assert options.reference is not None
        assert models.identities is not None
        assert models.arcface is not None
        cache, arcface = models.identities, models.arcface
        ref_bytes = _read_bytes(options.reference, "reference photo")
        embed = partial(cache.get_or_compute, detector=models.detector, arcface=arcface)
        reference = _labelled(lambda: embed(ref_bytes), options.reference).z_id.float().cpu().numpy()
        embedder = models.embedder()
    config = PipelineConfig(
        swap=True,
        detect_every=options.detect_every,
        detect_on_change=options.detect_on_change,
        choice=FaceChoice(options.faces, options.max_faces, options.threshold, reference),
        mask=mask,
        colour_transfer=options.colour_transfer,
        draw_boxes=options.draw_boxes,
        hide_bystanders=options.hide_bystanders,
        bystander_style=options.style,
        badge=options.badge,
    )
    if options.simulate_ms:
        notes.append(f"simulating {options.simulate_ms:g} ms of extra swap work per frame with a face")
    return FramePipeline(models.detector, engine, config, context=context, embedder=embedder), notes


def _labelled(fn: Callable[[], T], path: Path) -> T:
    """Run `fn`, naming the file in image and face errors."""
    try:
        return fn()
    except NoFaceError as e:
        raise NoFaceError(f"{path}: {e}") from None
    except ImageError as e:  # decode_image speaks of "the source photo"; here it may be the input
        raise ImageError(f"{path}: {str(e).replace('the source photo must', 'a photo must')}") from None


# --- the swap -------------------------------------------------------------------------------------------------


def swap_file(
    source: Path | Sources,
    input: Path,
    output: Path,
    options: SwapOptions | None = None,
    progress: Progress | None = None,
    pipeline: FramePipeline | None = None,
) -> SwapReport:
    """Swap the source face into `input` (photo or video) and write `output`.

    `pipeline` replaces the one `options` would build (tests, or a caller that keeps models loaded). Raises
    `DanceCamError` subclasses on bad files or settings, `SwapInterrupted` on Ctrl-C.
    """
    options = options or SwapOptions()
    source, input, output = as_sources(source), Path(input), Path(output)
    kind = check_paths(source, input, output, options.overwrite)
    notes: list[str] = []
    if kind == "video":
        _probe(input)  # a file that is no video fails before any model loads
    built = pipeline is None
    if pipeline is None:
        pipeline, notes = build_pipeline(source, options)
    report = SwapReport(output, kind, notes=notes)
    try:
        if kind == "image":
            _swap_image(pipeline, input, output, options.overwrite, report, progress)
        else:
            _swap_video(pipeline, input, output, options.overwrite, report, progress)
    finally:
        if built:  # its runner, graphs and device memory, before the interpreter tears CUDA down
            pipeline.close()
    if pipeline.fail_closed_events:
        report.fail_closed = pipeline.fail_closed_events
    return report


def _swap_image(
    pipeline: FramePipeline, input: Path, output: Path, overwrite: bool, report: SwapReport, progress: Progress | None
) -> None:
    image = _labelled(lambda: decode_image(_read_bytes(input, "input")), input)
    if progress:
        progress(0, 1)
    result = pipeline.process(Frame(image, "rgb24"), 0.0)
    ext = output.suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext in (".jpg", ".jpeg") else []
    ok, data = cv2.imencode(ext, np.ascontiguousarray(result.frame.data[:, :, ::-1]), params)
    if not ok:
        raise MediaError(f"could not encode {output.name}")
    with _staged(output) as tmp:
        try:
            tmp.write_bytes(data.tobytes())
        except OSError as e:
            raise MediaError(f"cannot write {output}: {e.strerror}") from e
        _commit(tmp, output, overwrite)
    report.frames, report.total = 1, 1
    report.frames_with_faces = int(result.faces > 0)
    report.size = (image.shape[1], image.shape[0])
    if progress:
        progress(1, 1)


def _open_input(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), "r")
    except av.FFmpegError as e:
        raise MediaError(f"{path} is not a readable video (corrupt or unsupported): {_reason(e)}") from None
    except OSError as e:
        raise MediaError(f"cannot open {path}: {e.strerror or e}") from None


def _probe(path: Path) -> None:
    with _open_input(path) as inp:
        if not inp.streams.video:
            raise MediaError(f"{path} has no video stream")
        vin = inp.streams.video[0]
        if not vin.codec_context.width or not vin.codec_context.height:
            raise MediaError(f"{path}: the video stream has no frame size (corrupt or unsupported)")


def _total_frames(vin: av.video.stream.VideoStream) -> int | None:
    if vin.frames:
        return int(vin.frames)
    rate = vin.average_rate or vin.guessed_rate
    if vin.duration and vin.time_base and rate:
        return max(1, round(float(vin.duration * vin.time_base * rate)))
    container = vin.container
    if container.duration and rate:  # microseconds
        return max(1, round(container.duration / 1e6 * float(rate)))
    return None


def _video_codec(fmt: str) -> str:
    for name in VIDEO_CODECS[fmt]:
        try:
            av.codec.Codec(name, "w")
        except av.FFmpegError:
            continue
        return name
    raise MediaError(f"this PyAV/FFmpeg build has no encoder for {fmt} ({', '.join(VIDEO_CODECS[fmt])})")


def _even(x: int) -> int:
    return x + (x & 1)


def _matrix(vin: av.video.stream.VideoStream) -> Colorspace:
    """The YUV matrix to read and write with: the input's, else BT.709 for HD and BT.601 below (as players guess)."""
    cs = vin.codec_context.colorspace
    if cs == Colorspace.ITU709 or (cs in (0, 2) and vin.codec_context.height >= 720):
        return Colorspace.ITU709
    return Colorspace.ITU601


class _VideoWriter:
    """The output container. Its streams are made at the first video frame, whose size and display rotation fix
    the output's shape; audio that arrives before that waits, then is copied or transcoded in order."""

    def __init__(
        self, path: Path, fmt: str, vin: av.video.stream.VideoStream, ain: av.audio.stream.AudioStream | None
    ) -> None:
        self.fmt, self.vin, self.ain = fmt, vin, ain
        self.time_base = vin.time_base or Fraction(1, 25)
        self.matrix = _matrix(vin)
        self.out = av.open(str(path), "w", format=fmt)
        self.vout: av.video.stream.VideoStream | None = None
        self.aout: av.audio.stream.AudioStream | None = None
        self.copy_audio = False
        self.audio_note: str | None = None
        self.size = (0, 0)  # output width, height
        self.turns = 0  # quarter turns counter-clockwise that make the input upright
        self.pending: list[av.Packet] = []
        self.frames = 0

    def start(self, frame: av.VideoFrame) -> None:
        """Make the streams for frames like `frame`, then write the audio that came before it."""
        self.turns = round((frame.rotation or 0) / 90) % 4
        w, h = (frame.height, frame.width) if self.turns % 2 else (frame.width, frame.height)
        self.size = (_even(w), _even(h))
        name = _video_codec(self.fmt)
        rate = self.vin.average_rate or self.vin.guessed_rate or Fraction(25)
        vout = self.out.add_stream(name, rate=rate, options=dict(_CODEC_OPTIONS.get(name, {})))
        vout.width, vout.height, vout.pix_fmt = self.size[0], self.size[1], "yuv420p"
        tb = self.time_base
        if name == "mpeg4" and tb.denominator > 65535:  # MPEG-4 Part 2 limits the time base
            tb = Fraction(rate.denominator, rate.numerator)
        vout.codec_context.time_base = vout.time_base = tb
        vout.codec_context.colorspace = self.matrix if self.matrix == Colorspace.ITU709 else 6  # 6: SMPTE 170M
        vout.codec_context.color_range = ColorRange.MPEG
        if name == "mpeg4":
            vout.codec_context.bit_rate = max(2_000_000, w * h * 8)
        self.vout = vout
        if self.ain is not None:
            self._audio_stream(self.ain)
        for packet in self.pending:
            self._audio(packet)
        self.pending.clear()

    def _audio_stream(self, ain: av.audio.stream.AudioStream) -> None:
        codec = ain.codec_context.name
        if codec in AUDIO_COPY[self.fmt] and codec in self.out.supported_codecs:
            self.aout, self.copy_audio = self.out.add_stream_from_template(ain), True
            self.audio_note = f"copied ({codec})"
            return
        target = AUDIO_TRANSCODE[self.fmt]
        rate = ain.codec_context.sample_rate or 48000
        layout = ain.codec_context.layout.name if ain.codec_context.layout else "stereo"
        if target == "libopus":
            rate = rate if rate in _OPUS_RATES else 48000
            layout = layout if ain.codec_context.channels <= 2 else "stereo"
        self.aout = self.out.add_stream(target, rate=rate, layout=layout)
        self.audio_note = f"transcoded {codec} → {target.removeprefix('lib')}"

    def audio(self, packet: av.Packet) -> None:
        if self.vout is None:
            self.pending.append(packet)
        else:
            self._audio(packet)

    def _audio(self, packet: av.Packet) -> None:
        assert self.aout is not None
        if self.copy_audio:
            if packet.dts is None:  # the demuxer's flush packet
                return
            packet.stream = self.aout
            self.out.mux(packet)
        else:
            for frame in packet.decode():
                self.out.mux(self.aout.encode(frame))

    def upright(self, frame: av.VideoFrame, pts: int) -> Frame:
        """The decoded frame as rgb24, turned as the input asks to be displayed, at `pts` of the output's time base."""
        rgb = frame.to_ndarray(
            format="rgb24",
            src_colorspace=self.matrix,
            src_color_range=ColorRange.JPEG if self.vin.codec_context.color_range == ColorRange.JPEG else None,
        )
        rgb = np.ascontiguousarray(np.rot90(rgb, self.turns)) if self.turns else rgb
        return Frame(rgb, "rgb24", pts, self.time_base)

    def video(self, frame: Frame) -> None:
        assert self.vout is not None
        image, pts = frame.data, frame.pts
        w, h = self.size
        if image.shape[:2] != (h, w):
            image = _fit(image, w, h)
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24").reformat(
            format="yuv420p", dst_colorspace=self.matrix, dst_color_range=ColorRange.MPEG
        )
        vf.pts, vf.time_base = pts, self.time_base
        self.out.mux(self.vout.encode(vf))
        self.frames += 1

    def finish(self) -> None:
        """Flush the encoders and write the trailer: the file is complete (and plays) after this."""
        if self.vout is not None and self.frames:
            self.out.mux(self.vout.encode(None))
            if self.aout is not None and not self.copy_audio:
                self.out.mux(self.aout.encode(None))
        self.out.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.out.close()


def _swap_video(
    pipeline: FramePipeline, input: Path, output: Path, overwrite: bool, report: SwapReport, progress: Progress | None
) -> None:
    fmt = VIDEO_OUTPUTS[output.suffix.lower()]
    with _staged(output) as tmp, _open_input(input) as inp:
        if not inp.streams.video:
            raise MediaError(f"{input} has no video stream")
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        ain = inp.streams.audio[0] if inp.streams.audio else None
        if len(inp.streams) > 1 + (ain is not None):
            report.notes.append("only the first video and audio streams are kept")
        report.total = _total_frames(vin)
        writer = _VideoWriter(tmp, fmt, vin, ain)
        time_base = writer.time_base
        interrupted = False
        try:
            last_pts: int | None = None
            try:
                if progress:
                    progress(0, report.total)
                for packet in inp.demux([vin] if ain is None else [vin, ain]):
                    if packet.stream is not vin:
                        writer.audio(packet)
                        continue
                    for frame in packet.decode():
                        if writer.vout is None:
                            writer.start(frame)
                        pts = frame.pts
                        if pts is None:  # no timestamps: number frames at the nominal rate
                            pts = round(report.frames / (vin.average_rate or Fraction(25)) / time_base)
                        if last_pts is not None and pts <= last_pts:
                            pts = last_pts + 1  # the encoder needs strictly increasing pts
                        last_pts = pts
                        result = pipeline.process(writer.upright(frame, pts))  # t: pts in seconds
                        writer.video(result.frame)
                        report.frames += 1
                        report.frames_with_faces += result.faces > 0
                        if progress:
                            progress(report.frames, report.total)
            except KeyboardInterrupt:
                interrupted = True
            if report.frames == 0 and not interrupted:
                raise MediaError(f"{input}: no video frame could be decoded (corrupt or empty)")
        except av.FFmpegError as e:
            writer.abort()
            raise MediaError(f"{input}: {_reason(e)} (corrupt or unsupported video)") from None
        except BaseException:
            writer.abort()
            raise
        try:  # after Ctrl-C too, so that the frames done so far play
            writer.finish()
        except (av.FFmpegError, KeyboardInterrupt) as e:
            writer.abort()
            if interrupted or isinstance(e, KeyboardInterrupt):
                raise SwapInterrupted(report.frames, report.total, None) from None
            raise MediaError(f"could not finish writing {output}: {_reason(e)}") from None
        _describe(writer, vin, report, interrupted)
        if not interrupted:
            _commit(tmp, output, overwrite)
            return
        saved = None
        if report.frames:
            saved = output if not output.exists() else output.with_name(f"{output.stem}.partial{output.suffix}")
            os.replace(tmp, saved)
            report.output = saved
        raise SwapInterrupted(report.frames, report.total, saved)


def _describe(writer: _VideoWriter, vin: av.video.stream.VideoStream, report: SwapReport, interrupted: bool) -> None:
    report.size, report.audio = writer.size, writer.audio_note
    cc = vin.codec_context
    w, h = (cc.height, cc.width) if writer.turns % 2 else (cc.width, cc.height)
    if writer.turns:
        report.notes.append(f"turned {90 * writer.turns}° counter-clockwise, as the input asks to be displayed")
    if (w, h) != writer.size:
        report.notes.append(f"odd frame size {w}x{h} padded to {writer.size[0]}x{writer.size[1]} for yuv420p")
    if not interrupted and vin.frames and report.frames < vin.frames:
        report.notes.append(f"the input announces {vin.frames} frames but only {report.frames} decoded")


def _reason(e: BaseException) -> str:
    """FFmpeg's own words for an error, without errno and file name."""
    return str(getattr(e, "strerror", None) or e)


def _fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pad (edge-replicated) to even dims; resize when a frame's size changed mid-stream."""
    h, w = image.shape[:2]
    if width - 1 <= w <= width and height - 1 <= h <= height:
        return cv2.copyMakeBorder(image, 0, height - h, 0, width - w, cv2.BORDER_REPLICATE)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
