"""`dancecam cam`: local camera in, swapped video out to a virtual camera and/or a preview window.

camera thread (`realtime.local.camera.Capture`) → worker's one-slot mailbox → pipeline thread (`PipelineWorker`) →
`Presenter` on the main thread → sinks. The heavy modules are imported only when the command runs, so that
`dancecam --help` does not load torch.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from engines.command import styled
from engines.errors import ConfigError, MediaError
from realtime.cli.options import add_pipeline_options, add_source, check_source, swap_options
from realtime.pipeline.counters import read_counters

if TYPE_CHECKING:
    from realtime.local.camera import Capture
    from realtime.local.sinks import Presenter, SinkFactory
    from realtime.pipeline.worker import PipelineWorker


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "cam",
        help="swap a source face into your camera, live: out to a virtual camera or a window",
        description="Read a local camera, swap the source face into every frame and send the result to a virtual "
        "camera (choose 'DanceCam' in your video call or OBS) and/or a preview window. Only swapped frames are "
        "sent, never the raw camera. Ctrl-C stops.",
    )
    add_source(p, False, "photo of the face to put in (required, except by --engine anonymize)")
    p.add_argument(
        "--camera",
        default="0",
        metavar="N|PATH",
        help="camera number (default 0, the first camera), a device path such as /dev/video2, or a video file "
        "(played looped, for trying without a camera)",
    )
    p.add_argument("--size", metavar="WxH", help="ask the camera for this frame size, e.g. 1280x720")
    p.add_argument("--fps", type=float, metavar="FPS", help="ask the camera for this frame rate")
    out = p.add_argument_group("output (one or both)")
    out.add_argument("--virtual-cam", action="store_true", help="send to a virtual camera (v4l2loopback, OBS)")
    out.add_argument("--virtual-cam-device", metavar="DEV", help="which virtual camera, e.g. /dev/video10 (Linux)")
    out.add_argument("--preview", action="store_true", help="show a window (Esc or q closes it)")
    p.add_argument("-q", "--quiet", action="store_true", help="no status line and no summary")
    add_pipeline_options(p)
    p.set_defaults(handler=cmd_cam)


def _sink_factories(args: argparse.Namespace) -> list[SinkFactory]:
    from realtime.local import sinks  # looked up at run time, so tests can put a fake sink class in its place

    factories: list[SinkFactory] = []
    if args.virtual_cam:
        factories.append(lambda w, h, fps: sinks.VirtualCameraSink(w, h, fps, device=args.virtual_cam_device))
    if args.preview:
        factories.append(sinks.PreviewSink)
    return factories


def cmd_cam(args: argparse.Namespace) -> int:
    if not (args.virtual_cam or args.preview):
        raise ConfigError(
            "choose where the video goes: --virtual-cam (for video calls and OBS), --preview (a window), or both"
        )
    from realtime.files.swap import build_pipeline
    from realtime.local.camera import Capture, open_source, parse_size
    from realtime.local.sinks import Presenter
    from realtime.pipeline.worker import PipelineWorker

    options = swap_options(args)  # a bad --style first: it says which engine to use
    check_source(args)
    size = parse_size(args.size) if args.size else None
    for photo, _ in args.source or []:
        if not photo.is_file():
            raise MediaError(f"source photo {photo} does not exist")
    err = Console(stderr=True, highlight=False)
    show = not args.quiet
    live = show and err.is_terminal
    interrupted = False
    capture: Capture | None = None
    presenter: Presenter | None = None
    worker: PipelineWorker | None = None
    # cheap checks first (camera, sinks: under a second), then the models; closed in reverse order
    with contextlib.ExitStack() as stack:
        source = open_source(args.camera, size, args.fps)
        stack.callback(source.close)
        w, h = source.size
        if show:  # a camera may round what it was asked for
            asked = (size and size != source.size) or (args.fps and args.fps != source.fps)
            note = f" (asked for {args.size or f'{w}x{h}'} at {args.fps or source.fps:g} fps)" if asked else ""
            err.print(f"{escape(source.description)}: {w}x{h} at {source.fps:g} fps{escape(note)}", soft_wrap=True)
        sinks = []
        for make in _sink_factories(args):
            sink = make(w, h, source.fps)
            stack.callback(sink.close)
            sinks.append(sink)
            if show and getattr(sink, "device", None):
                err.print(f"{sink.name}: {escape(str(sink.device))}", soft_wrap=True)
        status = stack.enter_context(err.status("loading models", spinner="dots")) if live else None
        pipeline, notes = build_pipeline(args.source or [], options)
        for line in notes if show else ():
            err.print(f"note: {styled(line)}", soft_wrap=True)
        worker = PipelineWorker(pipeline)
        stack.callback(worker.stop)  # after the capture has stopped feeding it
        presenter = Presenter(worker, sinks, source.fps)
        worker.start()
        capture = Capture(source, worker.submit).start()
        stack.callback(capture.stop)

        def update() -> None:
            if status is not None:
                status.update(escape(_status_line(capture, presenter, worker)))

        def done() -> bool:  # the camera ended, or the pipeline fails on every frame (a broken device)
            return capture.stopped.is_set() or worker.broken

        try:
            presenter.run(done, update)
        except KeyboardInterrupt:
            interrupted = True
    # everything is closed here: camera thread, worker, sinks, camera
    if capture is not None and capture.error is not None and not interrupted:
        raise capture.error
    if worker is not None and worker.broken and not interrupted:
        raise MediaError(f"the pipeline failed on {worker.consecutive_errors} frames in a row: {worker.last_error}")
    summary = _summary(capture, presenter, worker)
    if interrupted:
        raise KeyboardInterrupt(f"stopped (Ctrl-C): {summary}")
    if show:
        Console(highlight=False).print(f"stopped: {escape(summary)}", soft_wrap=True)
    return 0


def _counters(worker: PipelineWorker) -> dict[str, int]:
    return read_counters(worker.pipeline, worker)  # the pipeline's counts and the worker's own


def _status_line(capture: Capture, presenter: Presenter, worker: PipelineWorker) -> str:
    if presenter.sent == 0:
        return f"{capture.frames} frames in, waiting for the first swapped frame"
    c = _counters(worker)
    latency = statistics.median(presenter.latencies) if presenter.latencies else 0.0
    return (  # short enough for an 80-column terminal
        f"{capture.rate.rate():.1f} fps in, {presenter.rate.rate():.1f} out · {latency:.0f} ms · "
        f"{c.get('dropped_frames', 0)} dropped · {c.get('repeated_frames', 0)} repeated · "
        f"{c.get('fail_closed', 0)} fail-closed"
    )


def _summary(capture: Capture | None, presenter: Presenter | None, worker: PipelineWorker | None) -> str:
    if capture is None or presenter is None or worker is None:
        return "before the camera started"
    c = _counters(worker)
    return (
        f"{capture.frames} frames in, {presenter.sent} swapped frames out, {c.get('dropped_frames', 0)} dropped, "
        f"{c.get('repeated_frames', 0)} repeated, {c.get('fail_closed', 0)} fail-closed"
    )
