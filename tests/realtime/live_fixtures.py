"""Shared pieces of the live server tests: the server on 127.0.0.1 with an HTTP client, raw HTTP requests (paths
exactly as written, headers as raw bytes), and the check that a session left nothing behind (no session, no
`dancecam-*` thread or task, no open peer connection)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import torch
from aiohttp.test_utils import TestServer
from aiortc import RTCPeerConnection

from engines.mtcnn import MTCNN
from realtime.live import ice
from realtime.live.server import SERVER, LiveServer, ServeOptions, create_app
from realtime.live.session import LiveServices, SessionManager
from tests.live_client import wait_for


def identity_services(detector: MTCNN) -> LiveServices:
    """The identity engine on the CPU: real sessions, no weights."""
    return LiveServices(torch.device("cpu"), detector, "identity")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        import json

        return json.loads(self.body)

    @property
    def error(self) -> str:
        """The `error` message of a JSON error reply (asserts it is one)."""
        assert self.headers.get("content-type", "").startswith("application/json"), (self.status, self.headers)
        body = self.json
        assert isinstance(body, dict), body
        assert set(body) == {"error"}, body
        assert isinstance(body["error"], str), body
        assert len(body["error"]) >= 8, body  # a sentence, not a code
        assert not body["error"].rstrip().endswith(":"), body  # nothing missing after the colon
        return body["error"]


class Live:
    """A running server and an HTTP client for it."""

    def __init__(self, server: TestServer, http: aiohttp.ClientSession, manager: SessionManager) -> None:
        self.server = server
        self.http = http
        self.manager = manager
        self.app: LiveServer = server.app[SERVER]  # type: ignore[index]
        self.port: int = server.port  # type: ignore[assignment]
        self.base = str(server.make_url("")).rstrip("/")
        # what was running before this server: another test's leak is not this one's
        # what was running before this server: another test's leak is not this one's (held, so ids stay unique)
        self._before: list[object] = [*threading.enumerate(), *open_peer_connections()]
        self.baseline = {id(o) for o in self._before}

    async def json(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.http.request(method, self.base + path, **kw) as r:
            return r.status, await r.json(content_type=None)

    async def call(self, method: str, path: str, **kw: Any) -> Reply:
        async with self.http.request(method, self.base + path, **kw) as r:
            return Reply(r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read())

    async def raw(self, request: bytes) -> Reply:
        """Send `request` as written (path not normalised, header bytes not encoded) and read the reply."""
        return await raw_request(self.port, request)


async def raw_request(port: int, request: bytes, timeout: float = 20.0) -> Reply:
    """Send `request` on a new connection; read one reply (by its Content-Length, or chunked, or to the end)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if "content-length" in headers:
            body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout)
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int((await asyncio.wait_for(reader.readline(), timeout)).split(b";")[0], 16):
                body += await asyncio.wait_for(reader.readexactly(size + 2), timeout)
                body = body[:-2]
        else:
            body = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return Reply(status, headers, body)


def get(path: str, headers: dict[str, str] | None = None, method: str = "GET") -> bytes:
    """A raw HTTP/1.1 request for `path` exactly as given."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@contextlib.asynccontextmanager
async def live_server(services: LiveServices, max_sessions: int = 2, **options: Any) -> AsyncIterator[Live]:
    manager = SessionManager(services, max_sessions)
    options.setdefault("ice_addresses", ice.LOOPBACK)  # every packet of a test stays on loopback
    app = create_app(manager, ServeOptions(**options))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    with tracking_peer_connections():
        async with aiohttp.ClientSession() as http:
            try:
                yield Live(server, http, manager)
            finally:
                await server.close()


# --- leftovers ------------------------------------------------------------------------------------------------


_PEER_CONNECTIONS: weakref.WeakSet[RTCPeerConnection] = weakref.WeakSet()


@contextlib.contextmanager
def tracking_peer_connections() -> Iterator[None]:
    """Note every RTCPeerConnection made meanwhile (a weak set: scanning the heap for them blocks the loop)."""
    original = RTCPeerConnection.__init__

    def init(self: RTCPeerConnection, *args: Any, **kw: Any) -> None:
        original(self, *args, **kw)
        _PEER_CONNECTIONS.add(self)

    RTCPeerConnection.__init__ = init  # type: ignore[method-assign]
    try:
        yield
    finally:
        RTCPeerConnection.__init__ = original  # type: ignore[method-assign]


def open_peer_connections() -> list[RTCPeerConnection]:
    """Every RTCPeerConnection made while tracking that is not closed."""
    return [pc for pc in list(_PEER_CONNECTIONS) if pc.connectionState != "closed"]


def leftovers(live: Live, keep_names: Iterable[str] = (), keep_pcs: Iterable[RTCPeerConnection] = ()) -> list[str]:
    """What sessions may leave behind since `live` started: `dancecam-*` threads and tasks (but those whose name
    starts with one of `keep_names`), and open peer connections (but `keep_pcs`)."""
    keep = tuple(keep_names)
    ignored = live.baseline | {id(pc) for pc in keep_pcs}

    def ours(name: str) -> bool:
        return name.startswith("dancecam-") and not (keep and name.startswith(keep))

    found = [f"thread {t.name}" for t in threading.enumerate() if ours(t.name) and id(t) not in ignored]
    found += [f"task {t.get_name()}" for t in asyncio.all_tasks() if ours(t.get_name()) and not t.done()]
    found += [f"peer connection ({pc.connectionState})" for pc in open_peer_connections() if id(pc) not in ignored]
    return found


def session_name(session_id: str, kind: str = "offer") -> str:
    """The prefix of a session's thread and task names (see `PeerSessions.start`)."""
    return f"dancecam-{kind}-{session_id[:6]}"


async def assert_clean(
    live: Live,
    keep_sessions: Iterable[str] = (),
    keep_names: Iterable[str] = (),
    keep_pcs: Iterable[RTCPeerConnection] = (),
    timeout: float = 10.0,
) -> None:
    """The server holds only `keep_sessions`, and nothing else of any session is left running."""
    keep_sessions, keep_names, keep_pcs = set(keep_sessions), tuple(keep_names), tuple(keep_pcs)
    ok = await wait_for(
        lambda: set(live.manager.sessions) == keep_sessions and not leftovers(live, keep_names, keep_pcs), timeout
    )
    assert ok, f"sessions {sorted(live.manager.sessions)}, expected {sorted(keep_sessions)}; left over: " + ", ".join(
        leftovers(live, keep_names, keep_pcs)
    )
