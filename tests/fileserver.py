"""A real HTTP file server on 127.0.0.1 (aiohttp's TestServer) that misbehaves on request.

It runs its own event loop in a thread, so synchronous code (the downloader, the CLI) can be tested against it
directly. Every request is logged with its headers, so tests can check what the client sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass
class Served:
    data: bytes
    etag: str | None = None
    status: int | None = None  # answer this status instead of the file
    token: str | None = None  # require "Authorization: Bearer <token>"
    cut_after: int | None = None  # on the next request only, drop the connection after this many body bytes
    stop_at: int | None = None  # always drop the connection at this absolute offset (a broken upstream)
    redirect: str | None = None  # answer 302 to this URL
    ignore_range: bool = False
    delay: float = 0.0  # seconds between 64 kB chunks (a slow link)

    def __post_init__(self) -> None:
        if self.etag is None:
            self.etag = '"' + hashlib.sha256(self.data).hexdigest()[:20] + '"'


@dataclass
class Request:
    path: str
    headers: dict[str, str]


@dataclass
class FileServer:
    files: dict[str, Served] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    base_url: str = ""
    host: str = "127.0.0.1"

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def requests_for(self, name: str) -> list[Request]:
        return [r for r in self.requests if r.path == f"/{name}"]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.requests.append(Request(request.path, dict(request.headers)))
        served = self.files.get(name)
        if served is None:
            return web.Response(status=404, text="not found")
        if served.redirect:
            raise web.HTTPFound(served.redirect)
        if served.token is not None and request.headers.get("Authorization") != f"Bearer {served.token}":
            return web.Response(status=401, text="unauthorized")
        if served.status is not None:
            return web.Response(status=served.status, text="refused")

        data, start, status = served.data, 0, 200
        headers = {
            "ETag": served.etag or "",
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        rng = request.headers.get("Range")
        if_range = request.headers.get("If-Range")
        if rng and not served.ignore_range and (if_range is None or if_range == served.etag):
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        headers["Content-Length"] = str(len(body))
        resp = web.StreamResponse(status=status, headers=headers)
        await resp.prepare(request)

        limit = len(body)
        if served.cut_after is not None:
            limit, served.cut_after = min(limit, served.cut_after), None
        if served.stop_at is not None:
            limit = min(limit, max(0, served.stop_at - start))
        for i in range(0, limit, 64 * 1024):
            await resp.write(body[i : min(limit, i + 64 * 1024)])
            if served.delay:
                await asyncio.sleep(served.delay)
        if limit < len(body):
            assert request.transport is not None
            request.transport.close()  # the client sees the connection end before Content-Length
            return resp
        await resp.write_eof()
        return resp


class ServerThread:
    """Starts a FileServer in a thread with its own event loop; `stop()` shuts it down."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.server = FileServer(host=host)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._test_server: TestServer | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/{name:.+}", self.server.handle)
        self._test_server = TestServer(app, host=self.server.host)
        self._loop.run_until_complete(self._test_server.start_server())
        self.server.base_url = str(self._test_server.make_url("")).rstrip("/")
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> FileServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("test HTTP server did not start")
        return self.server

    def stop(self) -> None:
        assert self._test_server is not None
        asyncio.run_coroutine_threadsafe(self._test_server.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
