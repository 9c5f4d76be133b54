"""One worker node of tests/cluster/local_cluster.py in a process of its own, as a node joins from another machine:
`python -m tests.cluster.sim_node GCS_ADDRESS RESOURCES_JSON` prints the node's id, then runs until it is killed.

Its own process because starting a node forks the raylet with a Python `preexec_fn`, which can hang in the child
of a process with many threads (the tests' own, with aiortc, torch and Ray's driver running)."""

from __future__ import annotations

import json
import signal
import sys

from ray._private import ray_constants
from ray._private.node import Node
from ray._private.parameter import RayParams


def main(address: str, resources: str) -> None:
    if ray_constants.ENABLE_RAY_CLUSTER:  # inherited from the tests' process (tests/cluster/__init__.py)
        sys.exit("sim_node: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is not set: the node would leave loopback")
    params = RayParams(
        gcs_address=address,
        node_ip_address="127.0.0.1",
        num_cpus=1,
        num_gpus=0,
        resources=json.loads(resources),
        object_store_memory=150 * 1024 * 1024,
        min_worker_port=0,
        max_worker_port=0,
        node_manager_port=0,
        include_log_monitor=False,  # the head's watches this machine's logs already
    )
    params.dashboard_agent_listen_port = None  # a free port, not the head agent's
    node = Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
    print(node.node_id, flush=True)
    signal.pause()


if __name__ == "__main__":
    main(*sys.argv[1:3])
