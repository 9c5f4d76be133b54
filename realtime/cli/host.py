"""`dancecam host`: start the session hosts of this node of a Ray cluster (the front is `dancecam serve --cluster`).

Each host is a detached Ray actor pinned to this node: it loads the models, measures what it holds as `serve` does
(or takes --max-sessions), and runs its sessions' peers, so the node's --ice-address must be reachable by browsers.
The command returns once the hosts have started; they live on until the node goes or `--replace` restarts them.
"""

from __future__ import annotations

import argparse
import logging

from rich.console import Console

from engines.command import styled
from engines.errors import ConfigError
from realtime.pipeline.choices import DEFAULT_DETECT_EVERY


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "host",
        help="start the session hosts of this node of a Ray cluster (for `serve --cluster`)",
        description="Start this node's session hosts: Ray actors that run live sessions (models, pipelines and "
        "WebRTC peers) for a `dancecam serve --cluster` front. Each holds slots of a Ray resource of this node: a "
        "custom one (ray start --resources '{\"dancecam_slot\": 8}') or a GPU share (--slot-resource GPU "
        "--slot-amount 0.125).",
    )
    p.add_argument(
        "--cluster", default="auto", metavar="ADDRESS", help="the Ray cluster this node belongs to (default auto)"
    )
    from realtime.cli.options import add_badge, add_detect_on_change, add_hide_bystanders, add_simulate_ms, add_style
    from realtime.cli.serve import add_model_arguments

    add_model_arguments(p)
    add_style(p)
    add_hide_bystanders(p)
    add_badge(p)
    add_detect_on_change(p)
    add_simulate_ms(p)
    p.add_argument(
        "--ice-address",
        action="append",
        metavar="ADDR",
        help="address of this node that browsers reach for the media (repeatable; default: every interface but "
        "loopback)",
    )
    p.add_argument(
        "--max-sessions", type=int, help="sessions per host (default: measured from one session's cost at start)"
    )
    p.add_argument("--target-fps", type=float, help="frame rate the capacity is measured for (default 30)")
    p.add_argument(
        "--detect-every",
        type=int,
        default=DEFAULT_DETECT_EVERY,
        help=f"frames between detections (default {DEFAULT_DETECT_EVERY}); the front's settings win",
    )
    p.add_argument(
        "--slot-resource", default="dancecam_slot", help="the Ray resource a session slot takes (default dancecam_slot)"
    )
    p.add_argument("--slot-amount", type=float, default=1.0, help="how much of it one slot takes (default 1)")
    p.add_argument("--slots", type=int, help="slots per host (default: all of this node's, shared by the hosts)")
    p.add_argument("--hosts", type=int, default=1, help="hosts on this node (default 1; e.g. one per GPU)")
    p.add_argument("--replace", action="store_true", help="end and restart this node's hosts if they run already")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True, highlight=False)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.max_sessions is not None and args.max_sessions < 1:
        raise ConfigError(f"--max-sessions must be at least 1, got {args.max_sessions}")
    try:
        from realtime.cluster import nodes
        from realtime.cluster.config import HostConfig, SlotResource
    except ImportError as e:
        raise ConfigError(
            f"dancecam host needs Ray, which is not installed ({e}): pip install 'dancecam[cluster]'"
        ) from None
    from realtime.cli.serve import live_defaults, model_spec
    from realtime.live.ice import check_addresses
    from realtime.live.peers import PeerOptions

    spec = model_spec(args)
    slot = SlotResource(args.slot_resource, args.slot_amount)
    ice_addresses = check_addresses(args.ice_address) if args.ice_address else None
    defaults = live_defaults(args)

    def config(name: str, slots: int) -> HostConfig:
        return HostConfig(
            name,
            spec,
            slots,
            args.max_sessions,
            args.target_fps or 30.0,
            PeerOptions(ice_addresses=ice_addresses),
            defaults,
        )

    console.print(f"joining the Ray cluster at {args.cluster} ...")
    nodes.connect(args.cluster, log_to_driver=False)
    node = nodes.node_of_this_process()
    with console.status(f"starting {args.hosts} session host(s) on node {node[:12]} (models, capacity) ..."):
        started = nodes.start_hosts(config, node, slot, args.hosts, args.slots, args.replace)
    import ray

    for name, handle in started:
        status = ray.get(handle.status.remote())
        said = (status.get("capacity") or {}).get("reason")
        if status["ready"]:
            console.print(f"[bold green]{name}[/]: {said}", soft_wrap=True)
        else:
            console.print(f"[yellow]{name}[/] takes no sessions: {styled(status['reason'] or '')}", soft_wrap=True)
    console.print("the hosts run on in the cluster; `dancecam serve --cluster auto` is their front")
    return 0
