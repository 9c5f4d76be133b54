"""The front's view of its session hosts: which are alive and how full, where each session runs, why the ones that
ended ended; admission (the least loaded host with a free slot, or a `CapacityError` that says why not).

Hosts are found by name in Ray (every `DISCOVER_INTERVAL_S`), so a front that restarts finds the running hosts and
their sessions again. Each host is asked for its status every `POLL_INTERVAL_S`; one that has not answered for
`LOST_AFTER_S`, or whose actor Ray reports dead, is lost: its sessions end with the reason, its slots go. Ray's own
node failure detection takes longer (its health checks), which is why the front watches the hosts itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engines.errors import CapacityError, HostUnavailableError, SessionNotFoundError
from realtime.cluster import nodes
from realtime.cluster.config import Refused
from realtime.cluster.nodes import HostError, HostGone
from realtime.identity.source import PhotoInput
from realtime.live.peers import NO_SUCH_SESSION
from realtime.live.session import ENDED_KEPT, LiveSettings, SessionKind

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 1.0
LOST_AFTER_S = 3.0  # no answer for this long: the host is lost (with the poll interval, sessions end within ~4 s)
DISCOVER_INTERVAL_S = 2.0
WATCH_INTERVAL_S = 0.25
CALL_TIMEOUT_S = 5.0  # a request to a host: settings, stats, ending a session
START_TIMEOUT_S = 60.0  # a new session: its pipeline is built and its backend made ready before the answer
SOURCE_TIMEOUT_S = 120.0  # detection and ArcFace on up to 8 photos


@dataclass
class Host:
    """One session host as the front last heard from it."""

    name: str
    handle: Any
    status: dict[str, Any]
    seen: float  # when it last answered (the pool's clock)
    pending: int = 0  # sessions being started there now
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    gone: asyncio.Event = field(default_factory=asyncio.Event, repr=False)  # set when lost: calls in flight end

    @property
    def instance(self) -> str:
        return str(self.status["instance"])

    @property
    def ready(self) -> bool:
        return bool(self.status.get("ready"))

    @property
    def max_sessions(self) -> int:
        return int(self.status.get("max_sessions") or 0) if self.ready else 0

    def summary(self, sessions: int, now: float) -> dict[str, Any]:
        s = self.status
        capacity = s.get("capacity") or {}
        services = s.get("services") or {}
        return {
            "name": self.name,
            "node": str(s.get("node_id", ""))[:12],
            "address": s.get("node_ip"),
            "ready": self.ready,
            "reason": s.get("reason"),
            "sessions": sessions,
            "starting": self.pending,
            "max_sessions": self.max_sessions,
            "capacity": capacity.get("reason"),
            "engine": services.get("engine"),
            "device": services.get("device"),
            "versions": s.get("versions"),
            "last_answer_s": round(now - self.seen, 2),
        }


@dataclass(frozen=True, slots=True)
class Placed:
    """Where a session runs."""

    host: str
    kind: SessionKind
    created: float  # wall clock
    since: float  # when the front learned of it (the pool's clock)


class HostPool:
    """The session hosts of one Ray cluster, kept up to date by tasks on the front's event loop (`start`/`close`)."""

    def __init__(
        self,
        poll_interval: float = POLL_INTERVAL_S,
        lost_after: float = LOST_AFTER_S,
        discover_interval: float = DISCOVER_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.poll_interval = poll_interval
        self.lost_after = lost_after
        self.discover_interval = discover_interval
        self.clock = clock
        self.hosts: dict[str, Host] = {}
        self.placed: dict[str, Placed] = {}
        self.ended: OrderedDict[str, str] = OrderedDict()  # session id → why it ended (the last ENDED_KEPT)
        self.lost_sessions = 0  # sessions ended because their host was lost
        self.hosts_lost = 0
        self.lost: dict[str, str] = {}  # host name → the instance that was lost (not taken back unseen)
        self.losses: list[dict[str, Any]] = []  # each loss: host, when (wall clock), why, sessions ended
        self.photos: list[PhotoInput] | None = None  # the source identity's photos, given to every new host
        self.source_key: str | None = None
        self.discovered = asyncio.Event()  # set after the first look for hosts
        self._probing: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        # the loops also stop on this: asyncio.wait_for before Python 3.12 can swallow a cancellation that arrives
        # as its call completes, and a loop that missed its cancel would keep `close` waiting for ever
        self._closed = False

    # --- running --------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._discover_loop(), name="dancecam-front-discover"),
            asyncio.create_task(self._watch_loop(), name="dancecam-front-watch"),
        ]

    async def close(self) -> None:
        """Stop watching; the hosts and their sessions carry on (a front that starts again finds them)."""
        self._closed = True
        tasks = self._tasks + [h.task for h in self.hosts.values() if h.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _discover_loop(self) -> None:
        while not self._closed:
            try:
                names = await asyncio.to_thread(nodes.host_names)
            except Exception as e:  # the cluster itself is unreachable for now: the hosts' watch decides
                log.warning("cannot list the session hosts: %s", e)
            else:
                probes = [self._probe(n) for n in names if n not in self.hosts and n not in self._probing]
                for name, host in list(self.hosts.items()):
                    if name not in names:
                        self._lose(host, "it left the cluster")
                if probes:
                    await asyncio.gather(*probes)
            self.discovered.set()
            await asyncio.sleep(self.discover_interval)

    async def _probe(self, name: str) -> None:
        """Take a host found by name into the pool once it answers (with its sessions: a restarted front re-attaches
        them), giving it the source identity the others have."""
        self._probing.add(name)
        try:
            handle = await asyncio.to_thread(nodes.host_handle, name)
            if handle is None:
                return
            status = await nodes.call(handle.status.remote(), self.lost_after)
            if self.lost.get(name) == status["instance"]:  # written off while silent, now back: start it afresh
                lost_for = "the front lost contact with its session host, which ended its sessions"
                await nodes.call(handle.end_all.remote(lost_for), CALL_TIMEOUT_S)
                status = await nodes.call(handle.status.remote(), self.lost_after)
            if self.photos is not None and status["ready"]:
                source = (status.get("services") or {}).get("source") or {}
                if source.get("key") != self.source_key:
                    given = await nodes.call(handle.set_source.remote(self.photos), SOURCE_TIMEOUT_S)
                    if isinstance(given, Refused):
                        log.warning("session host %s refused the source photos: %s", name, given.message)
            if self._closed:
                return
            host = Host(name, handle, status, self.clock())
            self.hosts[name] = host
            self.lost.pop(name, None)
            self._update(host, status, self.clock())
            host.task = asyncio.create_task(self._poll(host), name=f"dancecam-front-poll-{name}")
            log.info(
                "session host %s joined: %s", name, (status.get("capacity") or {}).get("reason") or status["reason"]
            )
        except HostError as e:
            log.info("session host %s does not answer yet: %s", name, e)
        finally:
            self._probing.discard(name)

    async def _poll(self, host: Host) -> None:
        while self.hosts.get(host.name) is host and not self._closed:
            asked = self.clock()
            try:
                status = await nodes.call(host.handle.status.remote(), self.lost_after)
            except HostGone as e:
                self._lose(host, str(e))
                return
            except HostError as e:  # one missed status is not a loss: `_watch_loop` writes it off after lost_after
                log.debug("session host %s gave no status this time: %s", host.name, e)
            else:
                if self.hosts.get(host.name) is not host:
                    return
                if status["instance"] != host.instance:
                    self._lose(host, "it was started again")  # the new one is found by name
                    return
                self._update(host, status, asked)
            await asyncio.sleep(max(0.0, self.poll_interval - (self.clock() - asked)))

    async def _watch_loop(self) -> None:
        tick = self.clock()
        while not self._closed:
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = self.clock()
            stalled, tick = now - tick > 4 * WATCH_INTERVAL_S, now
            for host in list(self.hosts.values()):
                if stalled:  # this loop itself was held up: the hosts' silence proves nothing
                    host.seen = max(host.seen, now - self.poll_interval)
                elif now - host.seen > self.lost_after:
                    self._lose(host, f"it did not answer for {self.lost_after:g} s")

    def _update(self, host: Host, status: dict[str, Any], asked: float) -> None:
        """Take in a host's status asked for at `asked`: its sessions that ended, and those the front did not know."""
        host.status = status
        host.seen = self.clock()
        live = {s["id"]: s for s in status["sessions"]}
        reasons = dict(status["ended"])
        for session_id, placed in list(self.placed.items()):
            if placed.host == host.name and session_id not in live and placed.since < asked:
                self.forget(session_id, reasons.get(session_id, "it ended on its session host"))
        for session_id, s in live.items():
            if session_id not in self.placed:  # started before this front (re-attached), or by another front
                self.placed[session_id] = Placed(host.name, s["kind"], float(s["created"]), self.clock())

    def forget(self, session_id: str, reason: str) -> None:
        """Session `session_id` ended, for `reason` (told to whoever asks for it afterwards)."""
        self.placed.pop(session_id, None)
        self.ended[session_id] = reason
        self.ended.move_to_end(session_id)
        while len(self.ended) > ENDED_KEPT:
            self.ended.popitem(last=False)

    def _lose(self, host: Host, why: str) -> None:
        if self.hosts.get(host.name) is not host:
            return
        del self.hosts[host.name]
        self.lost[host.name] = host.instance
        where = host.status.get("node_ip") or str(host.status.get("node_id", ""))[:12]
        reason = f"its session host {host.name} on {where} was lost: {why}"
        ended = [sid for sid, p in self.placed.items() if p.host == host.name]
        for session_id in ended:
            self.forget(session_id, reason)
        self.lost_sessions += len(ended)
        self.hosts_lost += 1
        self.losses.append({"host": host.name, "at": time.time(), "why": why, "sessions": len(ended)})
        del self.losses[:-64]
        host.gone.set()
        log.warning("session host %s lost (%s): %d session(s) ended", host.name, why, len(ended))
        if host.task is not None and host.task is not asyncio.current_task():
            host.task.cancel()

    # --- admission ------------------------------------------------------------------------------------------

    def sessions_on(self, name: str) -> int:
        return sum(1 for p in self.placed.values() if p.host == name)

    def _used(self, host: Host) -> int:
        return self.sessions_on(host.name) + host.pending

    def choose(self, exclude: set[str] | frozenset[str] = frozenset()) -> Host:
        """The least loaded host with a free slot (load: the share of its slots in use); `CapacityError` says why
        there is none."""
        free = [h for h in self.hosts.values() if h.ready and h.name not in exclude and self._used(h) < h.max_sessions]
        if free:
            return min(free, key=lambda h: (self._used(h) / h.max_sessions, self._used(h), h.name))
        raise CapacityError(self.full_reason())

    def full_reason(self) -> str:
        hosts = list(self.hosts.values())
        if not hosts:
            return (
                "no session host in the cluster yet: start them on each GPU node with `dancecam host --cluster auto` "
                "(README, Running a cluster)"
            )
        idle = "; ".join(f"{h.name}: {h.status.get('reason')}" for h in hosts if not h.ready)
        ready = [h for h in hosts if h.ready]
        if not ready:
            return f"no session host can take sessions ({idle})"
        used, total = sum(self._used(h) for h in ready), sum(h.max_sessions for h in ready)
        text = f"the cluster is full: {len(ready)} session host(s) hold {used} of {total} session(s)"
        if idle:
            text += f" ({len(hosts) - len(ready)} more take no sessions: {idle})"
        return text + "; try again when one ends"

    @property
    def capacity(self) -> int:
        return sum(h.max_sessions for h in self.hosts.values())

    async def start_session(self, kind: SessionKind, sdp: str, settings: LiveSettings) -> dict[str, Any] | Refused:
        """Start a session on the least loaded host (another one if that one is full or dies meanwhile)."""
        tried: set[str] = set()
        while True:
            host = self.choose(tried)
            tried.add(host.name)
            host.pending += 1
            try:
                result = await self.call(host, "start", kind, sdp, settings, timeout=START_TIMEOUT_S)
            except HostUnavailableError:
                if self.hosts.get(host.name) is not host:
                    continue  # it died meanwhile and is lost, with its sessions: the next host
                raise
            finally:
                host.pending -= 1
            if isinstance(result, Refused):
                if result.error == "CapacityError":  # full by its own count: another may have a slot
                    continue
                return result
            self.placed[result["session"]] = Placed(host.name, kind, time.time(), self.clock())
            return result

    # --- asking hosts ---------------------------------------------------------------------------------------

    async def call(self, host: Host, method: str, *args: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        """`host.method(*args)`, awaited; a dead host is lost at once. `HostUnavailableError` (503) for no answer,
        also as soon as the host is lost while the call is in flight (the caller may then say why its session ended).
        """
        answer = asyncio.ensure_future(nodes.call(getattr(host.handle, method).remote(*args), timeout))
        lost = asyncio.ensure_future(host.gone.wait())
        try:
            await asyncio.wait({answer, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not answer.done():
                answer.cancel()
        if not answer.done() or answer.cancelled():
            raise HostUnavailableError(f"its session host {host.name} was lost")
        try:
            return answer.result()
        except HostGone as e:
            self._lose(host, str(e))
            raise HostUnavailableError(f"its session host {host.name} is gone: {e}") from e
        except HostError as e:
            raise HostUnavailableError(f"its session host {host.name} did not answer: {e}") from e

    def where(self, session_id: str) -> tuple[Placed, Host]:
        """Where session `session_id` runs; `SessionNotFoundError` with why it ended when that is known."""
        placed = self.placed.get(session_id)
        host = self.hosts.get(placed.host) if placed is not None else None
        if placed is None or host is None:
            reason = self.ended.get(session_id)
            raise SessionNotFoundError(f"the session ended: {reason}" if reason else NO_SUCH_SESSION)
        return placed, host

    def newest(self) -> str | None:
        live = [(p.created, sid) for sid, p in self.placed.items() if p.host in self.hosts]
        return max(live)[1] if live else None

    async def ask_all(self, method: str, *args: Any, timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
        """`method(*args)` on every ready host at once: each host's answer, or the `HostUnavailableError`."""
        hosts = [h for h in self.hosts.values() if h.ready]
        answers = await asyncio.gather(
            *(self.call(h, method, *args, timeout=timeout) for h in hosts), return_exceptions=True
        )
        for answer in answers:
            if isinstance(answer, BaseException) and not isinstance(answer, HostUnavailableError):
                raise answer
        return {h.name: a for h, a in zip(hosts, answers, strict=True)}

    async def set_source(self, photos: list[PhotoInput]) -> dict[str, Any] | Refused:
        """The source identity on every ready host (each embeds the photos with its own models); the first host's
        answer. New hosts get the same photos when they join."""
        answers = await self.ask_all("set_source", photos, timeout=SOURCE_TIMEOUT_S)
        if not answers:
            raise CapacityError(self.full_reason())
        refused = [a for a in answers.values() if isinstance(a, Refused)]
        done = [a for a in answers.values() if isinstance(a, dict)]
        if refused:
            return refused[0]
        if not done:
            raise next(a for a in answers.values() if isinstance(a, HostUnavailableError))
        self.photos, self.source_key = list(photos), done[0].get("key")
        return done[0]
