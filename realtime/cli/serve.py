"""`dancecam serve`: the live server's command line — models, limits, binding rules, TLS, the event loop.

Binding rules: 127.0.0.1 (the default) serves only this machine. Any other address needs a token (generated and
printed when --token is not given) and TLS (--cert/--key), because browsers grant the camera only to secure origins
off localhost and a face swap on the network must not be open to anyone; --insecure drops the TLS requirement
(never the token).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import secrets
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from engines.choices import BACKEND_CHOICES, DEFAULT_BACKEND, DEFAULT_DETECTOR, DEFAULT_DEVICE, DETECTORS
from engines.command import styled
from engines.errors import ConfigError, DanceCamError
from realtime.pipeline.choices import DEFAULT_DETECT_EVERY, DEFAULT_ENGINE, ENGINES

if TYPE_CHECKING:
    from aiohttp import web

    from realtime.assembly.spec import ModelSpec
    from realtime.identity.source import PhotoInput
    from realtime.live.server import ServeOptions
    from realtime.live.session import LiveSettings, SessionManager

LOOPBACK_NAMES = ("localhost",)


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "serve",
        help="serve the live page, WebRTC, WHIP and WHEP",
        description="Serve the browser page and live face swapping over WebRTC (POST /offer), WHIP ingest for OBS "
        "(POST /whip) and WHEP playback (POST /whep). Binds 127.0.0.1 unless told otherwise.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--token", help="access token for the API and signalling (generated when binding off loopback)")
    p.add_argument("--cert", type=Path, help="TLS certificate (PEM); with --key serves https")
    p.add_argument("--key", type=Path, help="TLS private key (PEM)")
    p.add_argument("--insecure", action="store_true", help="allow plain http off loopback (a token is still required)")
    p.add_argument(
        "--ice-address",
        action="append",
        metavar="ADDR",
        help="local address WebRTC media may use (repeatable; default: every interface but loopback). "
        "127.0.0.1 keeps the media of this machine's own clients on loopback; on a server with many interfaces "
        "or in a container, name the one peers reach",
    )
    add_model_arguments(p)
    from realtime.cli.options import (
        add_badge,
        add_detect_on_change,
        add_hide_bystanders,
        add_simulate_ms,
        add_source,
        add_style,
    )

    add_style(p)  # the default for new sessions; the page changes it per session
    add_hide_bystanders(p)
    add_badge(p)  # likewise
    add_source(p, False, "source photo to start with (else upload one)")
    p.add_argument(
        "--max-sessions", type=int, help="concurrent sessions (default: measured from one session's cost at start)"
    )
    p.add_argument("--target-fps", type=float, help="frame rate each session aims for (default: the camera's)")
    p.add_argument(
        "--detect-every",
        type=int,
        default=DEFAULT_DETECT_EVERY,
        help=f"frames between detections (default {DEFAULT_DETECT_EVERY})",
    )
    add_detect_on_change(p)
    add_simulate_ms(p)
    p.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="be the front of a Ray cluster's session hosts (started with `dancecam host`) instead of running the "
        "sessions here: auto (the cluster this machine is a node of), ray://HEAD:10001 (Ray Client) or HEAD:6379. "
        "The models and the session limit are then the hosts'; see README, Running a cluster",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    p.set_defaults(handler=run)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The options that choose the models (`serve`, and `host` for a cluster's session hosts)."""
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default=DEFAULT_ENGINE,
        help="facedancer (default; weights and a source photo), identity (no weights) or anonymize (no weights, no "
        "source photo: faces hidden, see --style)",
    )
    p.add_argument("--device", default=DEFAULT_DEVICE, help="auto (default), cpu or cuda[:N]")
    p.add_argument(
        "--detector",
        choices=DETECTORS,
        default=DEFAULT_DETECTOR,
        help="face detector: auto (default: SCRFD on a GPU when det_10g.onnx is downloaded, else MTCNN)",
    )
    p.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default=DEFAULT_BACKEND,
        help="how FaceDancer runs: auto (default: the fastest present), eager, onnxruntime, cuda-graphs, tensorrt",
    )
    p.add_argument("--model-dir", type=Path, help="where the model weights are (default: see dancecam models)")


def model_spec(args: argparse.Namespace) -> ModelSpec:
    """The models `args` ask for (a bad value is refused here, before any model loads)."""
    from realtime.assembly.spec import ModelSpec
    from realtime.cli.options import anonymize_style

    return ModelSpec(
        engine=args.engine,
        style=anonymize_style(args),
        device=args.device,
        detector=args.detector,
        backend=args.backend,
        model_dir=args.model_dir,
        weights_optional=True,  # the server starts without weights and says how to get them
        simulate_ms=args.simulate_ms,
    )


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: treat as reachable from elsewhere


def reachable_addresses(host: str) -> list[str]:
    """The addresses a browser can open for a server bound to `host`: for 0.0.0.0 / :: every interface's address
    of that family (loopback last), else `host` itself."""
    try:
        unspecified = ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        unspecified = False
    if not unspecified:
        return [host.strip("[]")]
    import ifaddr

    v6 = ":" in host
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if v6 != isinstance(ip.ip, tuple):
                continue
            address = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
            if isinstance(ip.ip, tuple) and ip.ip[2]:  # a link-local IPv6 address needs its zone: not a URL to paste
                continue
            if address not in found:
                found.append(address)
    found.sort(key=lambda a: ipaddress.ip_address(a).is_loopback)
    return found or [host.strip("[]")]


def check_binding(host: str, token: str | None, cert: Path | None, key: Path | None, insecure: bool) -> str | None:
    """The token to require (None on loopback without one); `ConfigError` when the rules are not met."""
    if (cert is None) != (key is None):
        raise ConfigError("--cert and --key go together: give both for https, or neither")
    for path in (cert, key):
        if path is not None and not path.is_file():
            raise ConfigError(f"{path} does not exist")
    if token is not None and len(token) < 16:
        raise ConfigError("--token must be at least 16 characters (or leave it out and one is generated)")
    if is_loopback(host):
        return token
    if cert is None and not insecure:
        raise ConfigError(
            f"binding {host} exposes the server to the network: give --cert and --key for https (browsers allow "
            "the camera only on secure origins off localhost), or --insecure to serve plain http anyway"
        )
    return token or secrets.token_urlsafe(24)


def ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"cannot use {cert} / {key} for TLS: {e}") from None
    return context


def live_defaults(args: argparse.Namespace) -> LiveSettings:
    """The settings new sessions start with, from the command line (`SettingsError` for a bad value)."""
    from realtime.cli.options import anonymize_style, badge_option
    from realtime.live.session import LiveSettings

    defaults = LiveSettings().updated(
        {
            "detect_every": args.detect_every,
            "detect_on_change": args.detect_on_change,
            "hide_bystanders": args.hide_bystanders,
            "target_fps": args.target_fps,
            "style": anonymize_style(args),
        }
    )
    badge = badge_option(args)
    if badge is not None:
        defaults = defaults.updated({"badge": True, "badge_text": badge.text, "badge_position": badge.position})
    return defaults


def source_photos(args: argparse.Namespace) -> list[PhotoInput]:
    """The `--source` photos, read (`ConfigError` for one that cannot be read)."""
    from realtime.identity.source import PhotoInput

    photos = []
    for path, weight in args.source:
        try:
            photos.append(PhotoInput(path.read_bytes(), weight, str(path)))
        except OSError as e:
            raise ConfigError(f"cannot read --source {path}: {e.strerror}") from None
    return photos


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True, highlight=False)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be 0..65535, got {args.port}")
    token = check_binding(args.host, args.token, args.cert, args.key, args.insecure)
    context = ssl_context(args.cert, args.key) if args.cert else None
    if args.max_sessions is not None and args.max_sessions < 1:
        raise ConfigError(f"--max-sessions must be at least 1, got {args.max_sessions}")
    from realtime.live.ice import check_addresses

    ice_addresses = check_addresses(args.ice_address) if args.ice_address else None
    if args.cluster:
        return _serve_front(args, token, context, console, ice_addresses)
    spec = model_spec(args)

    from realtime.live import capacity
    from realtime.live.session import LiveServices, SessionManager

    defaults = live_defaults(args)
    console.print(f"loading models ({args.engine}) ...")
    services = LiveServices.from_spec(spec)
    if services.backend_message:
        console.print(styled(services.backend_message), soft_wrap=True)
    if not services.weights.ok:
        console.print(f"[yellow]weights missing:[/] {styled(services.weights.message or '')}", soft_wrap=True)
    if args.source and args.engine == "anonymize":
        console.print("note: the anonymize engine hides faces and puts none in: --source is not used")
    elif args.source:
        photos = source_photos(args)
        if services.weights.ok:
            services.set_source(photos)
    target_fps = args.target_fps or 30.0
    if args.max_sessions is not None:
        limit = capacity.given(args.max_sessions, target_fps)
    else:
        with console.status("measuring what one session costs on this machine ..."):
            limit = capacity.measure(services, target_fps)
        console.print(f"capacity: {limit.reason} (--max-sessions to change)", soft_wrap=True)
    manager = SessionManager(services, limit.max_sessions, defaults, limit)
    try:
        return _serve(manager, args.host, args.port, token, context, console, ice_addresses)
    except OSError as e:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None


def _serve_front(
    args: argparse.Namespace,
    token: str | None,
    context: ssl.SSLContext | None,
    console: Console,
    ice_addresses: tuple[str, ...] | None,
) -> int:
    """`serve --cluster`: the page and the API here, the sessions on the cluster's session hosts."""
    try:
        from realtime.cluster import nodes
    except ImportError as e:
        raise ConfigError(
            f"--cluster needs Ray, which is not installed ({e}): pip install 'dancecam[cluster]'"
        ) from None
    if ice_addresses:
        console.print("note: with --cluster the media go to the hosts: give --ice-address to `dancecam host` instead")
    if args.max_sessions is not None:
        console.print("note: with --cluster each host's limit is its own (`dancecam host --max-sessions`)")
    defaults = live_defaults(args)
    photos = source_photos(args) if args.source else None
    console.print(f"joining the Ray cluster at {args.cluster} ...")
    nodes.connect(args.cluster, log_to_driver=False)  # the hosts' logs stay in Ray's log files

    def make(options: ServeOptions) -> web.Application:
        from realtime.cluster.front import make_front_app
        from realtime.cluster.pool import HostPool

        pool = HostPool()
        pool.photos = photos  # every host gets them when it joins
        return make_front_app(pool, options, defaults)

    try:
        return _run_app(make, args.host, args.port, token, context, console, cluster=args.cluster)
    except OSError as e:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None


def _serve(
    manager: SessionManager,
    host: str,
    port: int,
    token: str | None,
    context: ssl.SSLContext | None,
    console: Console,
    ice_addresses: tuple[str, ...] | None = None,
) -> int:
    """`dancecam serve`: `manager`'s sessions in this process."""
    from realtime.live.server import create_app

    return _run_app(lambda options: create_app(manager, options), host, port, token, context, console, ice_addresses)


def _run_app(
    make_app: Callable[[ServeOptions], web.Application],
    host: str,
    port: int,
    token: str | None,
    context: ssl.SSLContext | None,
    console: Console,
    ice_addresses: tuple[str, ...] | None = None,
    cluster: str | None = None,
) -> int:
    from aiohttp import web

    from realtime.live.server import LOOPBACK_HOSTS, ServeOptions

    # on loopback, only loopback names (DNS rebinding); elsewhere the token guards every route whatever the name
    hosts = tuple(dict.fromkeys((*LOOPBACK_HOSTS, host.strip("[]").lower()))) if is_loopback(host) else None

    async def main() -> None:
        app = make_app(ServeOptions(token=token, allowed_hosts=hosts, ice_addresses=ice_addresses))
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=context)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        scheme = "https" if context else "http"
        fragment = f"#token={token}" if token else ""
        for address in reachable_addresses(host):
            shown = f"[{address}]" if ":" in address else address
            console.print(f"[bold green]serving[/] {scheme}://{shown}:{bound}/{fragment}", soft_wrap=True)
        if token:
            console.print(f"token: {token}  (send it as Authorization: Bearer <token>; the page reads it from #token=)")
        if ice_addresses:
            console.print(f"WebRTC media on {', '.join(ice_addresses)} only")
        if cluster:
            console.print(
                f"sessions run on the session hosts of the Ray cluster at {cluster}; stopping this front "
                "leaves them running"
            )
        console.print("consent of the people whose faces you use is yours to obtain. Ctrl-C stops.")
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        if sys.platform != "win32":
            import uvloop

            uvloop.run(main())
        else:
            asyncio.run(main())
    except KeyboardInterrupt:
        console.print("stopped")
    except DanceCamError:
        raise
    return 0
