"""A Ray cluster of simulated nodes on this machine for the cluster tests and `benchmarks/cluster.py`: a head and
worker nodes (each a raylet of its own, with its own slot resource), every Ray process bound to 127.0.0.1, the
session hosts' WebRTC peers gathering on 127.0.0.1 only; and a check that nothing of it listens elsewhere."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
from ray._private import ray_constants
from ray.cluster_utils import Cluster

from realtime.assembly.spec import ModelSpec
from realtime.cluster import nodes
from realtime.cluster.config import DEFAULT_SLOT_RESOURCE, HostConfig, SlotResource
from realtime.live import ice
from realtime.live.peers import PeerOptions
from tests.cluster import LOOPBACK_ENV

ROOT = Path(__file__).resolve().parents[2]
SLOT = SlotResource(DEFAULT_SLOT_RESOURCE, 1.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def host_config(name: str, slots: int, **changes: Any) -> HostConfig:
    """A host of the identity engine on the CPU, its peers on loopback, its limit given (not measured)."""
    config = HostConfig(
        name,
        ModelSpec(engine="identity", device="cpu", detector="mtcnn"),
        slots,
        max_sessions=slots,
        # a node starting (a raylet, its agents, a host importing torch) starves two shared cores for seconds: the
        # serve default of 3 s of silence would end sessions whose clients are merely slow here
        peers=PeerOptions(ice_addresses=ice.LOOPBACK, silence_timeout=10.0),
    )
    return replace(config, **changes)


@dataclass
class SimNode:
    name: str
    node_id: str
    slots: int
    process: subprocess.Popen[bytes] | None = None  # `ray start --block` of a worker node (None: the head)


class LocalCluster:
    """Start with `start()`, then `add_node` and `start_hosts`; `kill` a node; `shutdown` ends it all."""

    def __init__(self, head_slots: int = 0) -> None:
        self.head_slots = head_slots
        self.client_port = free_port()  # the head's Ray Client server: ray://127.0.0.1:<port>
        self.nodes: dict[str, SimNode] = {}
        self.cluster: Cluster | None = None
        self._env: dict[str, str | None] = {}

    @property
    def client_address(self) -> str:
        return f"ray://127.0.0.1:{self.client_port}"

    @property
    def address(self) -> str:
        assert self.cluster is not None
        return str(self.cluster.address)

    def start(self) -> LocalCluster:
        if ray_constants.ENABLE_RAY_CLUSTER:
            # tests/cluster/__init__.py sets LOOPBACK_ENV; a process that imported Ray before it would leave loopback
            raise RuntimeError(f"Ray was imported before {LOOPBACK_ENV} was set: its driver would leave loopback")
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        for key, value in env.items():  # the cluster's processes inherit it: this checkout's code, on loopback
            self._env[key] = os.environ.get(key)
            os.environ[key] = value
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 1,
                "resources": {DEFAULT_SLOT_RESOURCE: self.head_slots},
                "include_dashboard": False,
                "node_ip_address": "127.0.0.1",
                "ray_client_server_port": self.client_port,
            },
        )
        head = self.cluster.head_node
        self.nodes["head"] = SimNode("head", head.node_id, self.head_slots)
        nodes.connect(self.cluster.address)  # as `serve --cluster HEAD:PORT` joins (its GCS address)
        return self

    def add_node(self, name: str, slots: int, timeout: float = 60.0) -> SimNode:
        """A worker node joins, a process of its own (tests/cluster/sim_node.py) and its own process group."""
        assert self.cluster is not None
        resources = json.dumps({DEFAULT_SLOT_RESOURCE: slots})
        command = [sys.executable, "-m", "tests.cluster.sim_node", self.address, resources]
        process = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, start_new_session=True
        )
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], timeout)
        node_id = process.stdout.readline().decode().strip() if ready else ""
        if not node_id:
            _kill_group(process)
            raise RuntimeError(f"node {name} did not start within {timeout:g} s (exit status {process.poll()})")
        deadline = time.monotonic() + timeout
        while not any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes()):
            if time.monotonic() > deadline:
                _kill_group(process)
                raise RuntimeError(f"node {name} started but did not join within {timeout:g} s")
            time.sleep(0.2)
        self.nodes[name] = SimNode(name, node_id, slots, process)
        return self.nodes[name]

    def start_hosts(self, configs: dict[str, HostConfig]) -> dict[str, str]:
        """Start one host on each named node, made from its config (its name and slots are the node's), at once;
        returns host name by node name."""

        def one(node_name: str) -> str:
            node = self.nodes[node_name]
            config = configs[node_name]
            started = nodes.start_hosts(lambda name, slots: replace(config, name=name, slots=slots), node.node_id, SLOT)
            return str(started[0][0])

        with ThreadPoolExecutor(len(configs)) as pool:
            return dict(zip(configs, pool.map(one, configs), strict=True))

    def kill(self, name: str) -> None:
        """The node dies at once (its raylet and every process on it killed, nothing said to anyone)."""
        node = self.nodes.pop(name)
        assert node.process is not None, "the head is not killed: the driver is connected to it"
        _kill_group(node.process)

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            ray.shutdown()
        for node in self.nodes.values():
            if node.process is not None:
                _kill_group(node.process)
        if self.cluster is not None:
            self.cluster.shutdown()
        for key, value in self._env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def local_cluster(head_slots: int = 0) -> Iterator[LocalCluster]:
    cluster = LocalCluster(head_slots)
    try:
        yield cluster.start()
    finally:
        cluster.shutdown()


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """The node's `ray start`, raylet, agents and workers, all killed at once (SIGKILL: nothing said to anyone)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


_SOCKET = re.compile(r"^(\S+)\s+\S+\s+\S+\s+\S+\s+(\S+):(\d+|\*)\s+\S+\s+users:\((.*)\)$")


def listening_off_loopback() -> list[str]:
    """Every socket this process and its descendants (the cluster's processes, the hosts) listen on or have bound
    for UDP, on an address that is not loopback: `ss` lines, empty when all is on 127.0.0.1."""
    ours = _descendants(os.getpid()) | {os.getpid()}
    out = subprocess.run(["ss", "-H", "-l", "-n", "-p", "-t", "-u"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        match = _SOCKET.match(line.strip())
        if match is None:
            continue
        address = ipaddress.ip_address(match.group(2).strip("[]").split("%")[0]) if match.group(2) != "*" else None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # an IPv6 socket bound to ::ffff:127.0.0.1 is on loopback
        pids = {int(p) for p in re.findall(r"pid=(\d+)", match.group(4))}
        if pids & ours and (address is None or not address.is_loopback):
            found.append(line.strip())
    return found
