"""Ray itself: joining a cluster, starting the session hosts of one node, finding the hosts, and awaiting a call to
one without blocking the event loop.

Hosts are named, detached actors in the `dancecam` namespace: they outlive the process that started them (and a
front that restarts finds them again by name), and each is pinned to its node, holding its slots of the node's slot
resource while it lives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from engines.errors import ConfigError
from realtime.cluster.config import HOST_PREFIX, NAMESPACE, HostConfig, SlotResource, host_name
from realtime.cluster.host import SessionHost

log = logging.getLogger(__name__)

HOST_START_TIMEOUT_S = 600.0  # models load and the capacity probe runs in the actor's constructor
NAME_FREED_TIMEOUT_S = 30.0  # a killed host's name is free again once Ray has noticed
# Ray Client: the head starts a server process per client, and that start fails now and then (seen right after
# another client of the same head was killed: a front restart); a second try has worked
CLIENT_TRIES = 3
CLIENT_RETRY_S = 2.0


class HostError(Exception):
    """A call to a session host that brought no answer (the front answers 503 with this message)."""


class HostGone(HostError):
    """The host's actor is dead (its process or its node died, or it was stopped)."""


class HostSilent(HostError):
    """The host did not answer in time (it may be busy, or its node unreachable)."""


class HostFailed(HostError):
    """The host raised an error it should have answered with a `Refused` (a fault in the host: see its log)."""


def connect(address: str, log_to_driver: bool = True) -> None:
    """Join the Ray cluster at `address` ("auto": the one this machine belongs to; "ray://HOST:PORT": through the
    head's Ray Client server; "HOST:PORT": its GCS) in the `dancecam` namespace; `ConfigError` when it cannot."""
    if ray.is_initialized():
        return
    tries = CLIENT_TRIES if address.startswith("ray://") else 1
    for attempt in range(1, tries + 1):
        try:
            ray.init(
                address=address,
                namespace=NAMESPACE,
                log_to_driver=log_to_driver,
                logging_level=logging.WARNING,
                configure_logging=False,
            )
            return
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
            if attempt < tries and "Starting Ray client server failed" in str(e):
                log.warning("the head's Ray Client server could not start ours (try %d of %d): again", attempt, tries)
                time.sleep(CLIENT_RETRY_S)
                continue
            hint = "; start one with `ray start --head` (see README, Running a cluster)" if address == "auto" else ""
            raise ConfigError(f"cannot join the Ray cluster at {address}: {e}{hint}") from None


def node_of_this_process() -> str:
    return ray.get_runtime_context().get_node_id()


def node_resources(node_id: str) -> dict[str, float]:
    for node in ray.nodes():
        if node["NodeID"] == node_id and node["Alive"]:
            return dict(node["Resources"])
    raise ConfigError(f"node {node_id[:12]} is not a live node of this Ray cluster")


def host_names() -> list[str]:
    """The names of the session hosts Ray knows (alive, or not yet noticed dead)."""
    return sorted(n for n in ray.util.list_named_actors(all_namespaces=False) if n.startswith(HOST_PREFIX))


def host_handle(name: str) -> Any | None:
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:  # no such actor (any more)
        return None


def start_hosts(
    make_config: Callable[[str, int], HostConfig],
    node_id: str,
    slot: SlotResource,
    count: int = 1,
    slots: int | None = None,
    replace: bool = False,
) -> list[tuple[str, Any]]:
    """Start `count` session hosts on node `node_id`, each holding `slots` slots (None: the node's slot resource
    shared out), made from `make_config(name, slots)`. Returns (name, handle) once each has started its engine (or
    found it cannot: its status says why). A host of the same name already running is a `ConfigError` unless
    `replace`, which ends its sessions and starts it again."""
    if count < 1:
        raise ConfigError(f"--hosts must be at least 1, got {count}")
    total = node_resources(node_id).get(slot.name, 0.0)
    per_host = slots if slots is not None else slot.slots_in(total) // count
    if per_host < 1 or per_host * count * slot.amount > total + 1e-6:
        raise ConfigError(
            f"node {node_id[:12]} has {total:g} of resource {slot.name!r}: not enough for {count} host(s) of "
            f"{per_host} slot(s) of {slot.amount:g}; start the node with e.g. "
            f"`ray start ... --resources '{{\"{slot.name}\": 8}}'`, or use --slot-resource GPU --slot-amount 0.125"
        )
    actor = ray.remote(SessionHost)
    started: list[tuple[str, Any]] = []
    for index in range(count):
        name = host_name(node_id, index)
        old = host_handle(name)
        if old is not None:
            if not replace:
                raise ConfigError(f"session host {name} already runs on this node: give --replace to start it again")
            _stop(old, name)
        handle = actor.options(  # type: ignore[attr-defined]
            name=name,
            namespace=NAMESPACE,
            lifetime="detached",  # lives on after this process, until its node goes or it is replaced
            max_restarts=0,  # a dead host's sessions are gone with it: a new one is started deliberately
            max_concurrency=1000,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            **slot.ray_options(per_host),
        ).remote(make_config(name, per_host))
        started.append((name, handle))
    for name, handle in started:
        try:
            ray.get(handle.status.remote(), timeout=HOST_START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise ConfigError(
                f"session host {name} did not start within {HOST_START_TIMEOUT_S:.0f} s: is the node's {slot.name} "
                "taken by something else? (`ray status`)"
            ) from None
    return started


def _stop(handle: Any, name: str) -> None:
    try:
        ray.get(handle.shutdown.remote(), timeout=30)
    except ray.exceptions.RayError as e:
        log.warning("session host %s did not end its sessions: %s", name, e)
    ray.kill(handle, no_restart=True)
    deadline = time.monotonic() + NAME_FREED_TIMEOUT_S
    while host_handle(name) is not None and time.monotonic() < deadline:
        time.sleep(0.2)


async def call(ref: Any, timeout: float) -> Any:
    """Await a call to a host without blocking the loop; `HostGone` when its actor is dead, `HostSilent` when it
    did not answer within `timeout` seconds (or Ray says it is unreachable for now), `HostFailed` when it raised."""
    try:
        return await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout)
    except asyncio.TimeoutError:
        raise HostSilent(f"no answer within {timeout:g} s") from None
    except ray.exceptions.ActorUnavailableError as e:
        raise HostSilent(_first_line(e)) from None
    except ray.exceptions.RayActorError as e:
        raise HostGone(_death(e)) from None
    except ray.exceptions.RayTaskError as e:
        raise HostFailed(f"the session host failed: {_first_line(e)} (see its log)") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _death(error: ray.exceptions.RayActorError) -> str:
    """Ray's reason an actor died, in a few words, from its message ("The actor died because its node has died",
    "... because it was killed by `ray.kill`", "... because its worker process has died")."""
    text = str(error)
    if "because its node has died" in text:
        return "its node died"
    if "killed by `ray.kill`" in text:
        return "it was stopped"
    return "its process died"
