"""What a front and its session hosts tell each other, as picklable values: a host's configuration (`HostConfig`),
the Ray resource one session slot takes (`SlotResource`), a refusal (`Refused`), and the names hosts go by."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from engines.errors import ConfigError
from realtime.assembly.spec import ModelSpec
from realtime.live.peers import PeerOptions
from realtime.live.session import LiveSettings

NAMESPACE = "dancecam"  # the Ray namespace of every host and front: named hosts are found in it
HOST_PREFIX = "dancecam-host-"  # a host actor's name: this, the node id's first 12 hex digits, and its number
DEFAULT_SLOT_RESOURCE = "dancecam_slot"


@dataclass(frozen=True, slots=True)
class SlotResource:
    """The Ray resource one session slot takes: a custom resource a node declares (`ray start --resources
    '{"dancecam_slot": 8}'`), or a fraction of a GPU (`GPU`, 0.125: eight sessions per GPU)."""

    name: str = DEFAULT_SLOT_RESOURCE
    amount: float = 1.0

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ConfigError(f"--slot-resource must be a Ray resource name (letters, digits, _), not {self.name!r}")
        if not (math.isfinite(self.amount) and 0 < self.amount <= 1024):
            raise ConfigError(f"--slot-amount must be a number above 0 (at most 1024), got {self.amount}")

    def slots_in(self, total: float) -> int:
        """How many slots `total` of the resource holds (a tolerance for Ray's fixed-point amounts)."""
        return int(total / self.amount + 1e-6)

    def ray_options(self, slots: int) -> dict[str, object]:
        """`options(...)` for an actor holding `slots` slots: GPUs by Ray's own resource, anything else custom."""
        amount = round(slots * self.amount, 4)
        if self.name == "GPU":
            return {"num_gpus": amount, "num_cpus": 0}
        if self.name == "CPU":
            return {"num_cpus": amount}
        return {"num_cpus": 0, "resources": {self.name: amount}}


@dataclass(frozen=True, slots=True)
class HostConfig:
    """Everything a session host is made from: its models (the one composition root builds them from `spec` in the
    host's own process), its limit (None: measured there, as `dancecam serve` measures), its WebRTC side, and the
    settings its sessions start with when the front sends none."""

    name: str
    spec: ModelSpec
    slots: int  # the slots it holds of its node's slot resource: its limit is at most this
    max_sessions: int | None = None  # None: measured at start (realtime.live.capacity)
    target_fps: float = 30.0
    peers: PeerOptions = field(default_factory=PeerOptions)
    defaults: LiveSettings = field(default_factory=LiveSettings)

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ConfigError(f"a session host needs at least one slot, got {self.slots}")
        if self.max_sessions is not None and self.max_sessions < 1:
            raise ConfigError(f"--max-sessions must be at least 1, got {self.max_sessions}")


@dataclass(frozen=True, slots=True)
class Refused:
    """A host's answer when it cannot do what was asked: the HTTP status and the message the front passes on."""

    status: int
    message: str
    error: str = ""  # the error type's name: a front tries another host after a CapacityError


def host_name(node_id: str, index: int) -> str:
    return f"{HOST_PREFIX}{node_id[:12]}-{index}"
