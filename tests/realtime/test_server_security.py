"""`dancecam serve`'s security rules, each checked as a user meets it: the binding rules of the command line, the
token on every API and signalling route, TLS with a real certificate, the size limits, and that no request path,
session id or file name reaches the file system."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import re
import shutil
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest

from engines.errors import ConfigError
from engines.mtcnn import MTCNN
from realtime.cli.main import build_parser, main
from realtime.cli.serve import check_binding, is_loopback, ssl_context
from realtime.identity.cache import MAX_IMAGE_BYTES
from realtime.live.server import WEB_DIR
from realtime.live.session import LiveSettings
from tests import faces
from tests.live_client import StampedFaceTrack, face_frame, offer, wait_for
from tests.realtime.live_fixtures import Live, assert_clean, get, identity_services, live_server

pytestmark = pytest.mark.network

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "k7Qe-2vX_9mZpL4wRt8sNb3c"  # 24 characters, as a user would pass with --token
SDP = "application/sdp"


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN("cpu")


def png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))
    assert ok
    return data.tobytes()


# --- binding rules ----------------------------------------------------------------------------------------------


def test_serve_binds_this_machine_only_by_default() -> None:
    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1"
    assert is_loopback(args.host)
    assert args.token is None
    assert args.cert is None
    assert args.key is None
    assert not args.insecure
    assert check_binding(args.host, args.token, args.cert, args.key, args.insecure) is None  # no token needed


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
        ("10.0.0.7", False),
        ("dancecam.example", False),  # a name: may resolve anywhere
        ("", False),  # aiohttp binds every interface for an empty host
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.fixture
def pem_files(tmp_path: Path) -> tuple[Path, Path]:
    """Two files that exist (check_binding looks only at that; ssl_context reads them)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("cert")
    key.write_text("key")
    return cert, key


def test_off_loopback_a_token_is_generated(pem_files: tuple[Path, Path]) -> None:
    cert, key = pem_files
    tokens = {check_binding("0.0.0.0", None, cert, key, False) for _ in range(3)}
    assert len(tokens) == 3, "each start gets a fresh token"
    for token in tokens:
        assert token is not None
        assert len(token) >= 16
        assert re.fullmatch(r"[A-Za-z0-9_-]+", token), token  # safe in a URL fragment and a header
    assert check_binding("192.168.1.20", None, None, None, True) is not None  # --insecure drops TLS, never the token
    assert check_binding("0.0.0.0", TOKEN, cert, key, False) == TOKEN  # a given token is used as given
    assert check_binding("127.0.0.1", TOKEN, None, None, False) == TOKEN  # and required on loopback too


def test_a_short_token_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least 16 characters"):
        check_binding("0.0.0.0", "short", None, None, True)


def test_off_loopback_tls_is_required_unless_insecure() -> None:
    with pytest.raises(ConfigError) as e:
        check_binding("0.0.0.0", None, None, None, False)
    assert "--cert" in str(e.value)
    assert "--key" in str(e.value)
    assert "--insecure" in str(e.value)


def test_cert_and_key_go_together(pem_files: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = pem_files
    for c, k in ((cert, None), (None, key)):
        with pytest.raises(ConfigError, match="--cert and --key go together"):
            check_binding("0.0.0.0", None, c, k, False)
        with pytest.raises(ConfigError, match="--cert and --key go together"):
            check_binding("127.0.0.1", None, c, k, False)
    with pytest.raises(ConfigError, match="does not exist"):
        check_binding("0.0.0.0", None, tmp_path / "nope.pem", key, False)


def test_the_command_line_refuses_an_open_binding(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """What the user sees: exit code 2 and one clear line, before anything is loaded or bound."""
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err
    assert "--cert" in err
    assert "--insecure" in err
    assert "Traceback" not in err
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    assert main(["serve", "--host", "0.0.0.0", "--cert", str(cert)]) == 2
    assert "--cert and --key go together" in capsys.readouterr().err
    assert main(["serve", "--token", "abc"]) == 2
    assert "at least 16 characters" in capsys.readouterr().err


# --- TLS --------------------------------------------------------------------------------------------------------


def _self_signed_with_cryptography(cert: Path, key: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key (PEM)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        _self_signed_with_cryptography(cert, key)
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("neither the cryptography package nor openssl is here to make a test certificate")
        subprocess.run(
            [
                openssl,
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
    return cert, key


def test_ssl_context_refuses_unusable_files(pem_files: tuple[Path, Path], certificate: tuple[Path, Path]) -> None:
    cert, key = pem_files
    with pytest.raises(ConfigError, match=r"cannot use .* for TLS"):
        ssl_context(cert, key)  # not PEM at all
    real_cert, _ = certificate
    with pytest.raises(ConfigError, match=r"cannot use .* for TLS"):
        ssl_context(real_cert, key)  # the key does not go with the certificate


# `dancecam serve` as a user starts it, but listening on 127.0.0.1 whatever --host says: the test exposes nothing
LOOPBACK_SERVE = """
import sys
from aiohttp import web
_site = web.TCPSite
class LoopbackSite(_site):
    def __init__(self, runner, host=None, port=None, **kw):
        super().__init__(runner, "127.0.0.1", port, **kw)
web.TCPSite = LoopbackSite
from realtime.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@contextlib.asynccontextmanager
async def dancecam_serve(*args: str) -> AsyncIterator[tuple[str, str]]:
    """`dancecam serve *args` in a subprocess; yields (the printed URL, everything printed until then)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LOOPBACK_SERVE,
        "serve",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    printed = ""
    try:
        assert proc.stdout is not None
        while "serving" not in printed:
            line = await asyncio.wait_for(proc.stdout.readline(), 120)
            if not line:
                pytest.fail(f"dancecam serve exited ({await proc.wait()}):\n{printed}")
            printed += line.decode(errors="replace")
        for _ in range(4):  # more URLs (one per interface) and the token line follow the first
            with contextlib.suppress(asyncio.TimeoutError):
                printed += (await asyncio.wait_for(proc.stdout.readline(), 5)).decode(errors="replace")
        url = re.search(r"serving (\S+)", printed)
        assert url is not None, printed
        yield url.group(1), printed
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


async def test_dancecam_serve_off_loopback_prints_a_token_and_serves_https(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    args = ["--host", "0.0.0.0", "--port", "0", "--cert", str(cert), "--key", str(key)]
    args += ["--engine", "identity", "--device", "cpu", "--max-sessions", "1"]
    async with dancecam_serve(*args) as (url, printed):
        # one URL per interface, each usable as printed; never the unroutable 0.0.0.0
        urls = re.findall(r"serving (\S+)", printed)
        assert "https://0.0.0.0" not in printed, printed
        assert any(u.startswith("https://127.0.0.1:") for u in urls), printed
        found = re.fullmatch(r"https://[0-9.]+:(\d+)/#token=([A-Za-z0-9_-]+)", url)
        assert found, printed
        port, token = int(found.group(1)), found.group(2)
        assert len(token) >= 16
        assert f"token: {token}" in printed
        trusted = ssl.create_default_context(cafile=str(cert))  # verifies the chain and the name 127.0.0.1
        base = f"https://127.0.0.1:{port}"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusted)) as http:
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200
                assert (await r.json())["status"] == "ok"
            async with http.get(f"{base}/") as r:
                assert r.status == 200
                assert r.content_type == "text/html"
            async with http.get(f"{base}/api/info") as r:
                assert r.status == 401
                assert "token" in (await r.json())["error"]
            async with http.get(f"{base}/api/info", headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200
                info = await r.json()
                assert info["token_required"] is True
                assert info["engine"] == "identity"
            # plain http on the TLS port gets nothing
            with pytest.raises(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{port}/healthz", timeout=aiohttp.ClientTimeout(total=10)) as r:
                    await r.read()
        # and a client that does not trust the certificate refuses it
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with http.get(f"{base}/healthz") as r:
                    await r.read()


# --- the token on every route -----------------------------------------------------------------------------------

# every API and signalling route, with a request that gets past the token, and the status it then gets
ROUTES: list[tuple[str, str, dict[str, Any], int]] = [
    ("GET", "/api/info", {}, 200),
    ("POST", "/offer", {"json": {"sdp": "v=0", "type": "offer"}}, 400),
    ("POST", "/whip", {"data": "v=0", "headers": {"Content-Type": "application/sdp"}}, 400),
    ("DELETE", "/whip/x", {}, 404),
    ("POST", "/whep", {"data": "v=0", "headers": {"Content-Type": "application/sdp"}}, 404),
    ("DELETE", "/whep/x", {}, 404),
    ("POST", "/api/source", {"data": b"text", "headers": {"Content-Type": "text/plain"}}, 415),
    ("GET", "/api/settings", {}, 200),
    ("PUT", "/api/settings", {"json": {"swap": False}}, 200),
    ("GET", "/api/stats", {}, 200),
    ("GET", "/metrics", {}, 200),
    ("DELETE", "/api/sessions/x", {}, 404),
]

WRONG = {
    "none": None,
    "wrong": "Bearer wrong",
    "same length": "Bearer " + TOKEN[:-1] + ("A" if TOKEN[-1] != "A" else "B"),
    "first char": "Bearer " + ("A" if TOKEN[0] != "A" else "B") + TOKEN[1:],
    "prefix": "Bearer " + TOKEN[:-1],
    "longer": "Bearer " + TOKEN + "x",
    "empty": "Bearer ",
    "scheme only": "Bearer",
    "no scheme": TOKEN,
    "basic": "Basic " + TOKEN,
    "other case": "Bearer " + TOKEN.swapcase(),
}


@pytest.fixture
async def token_live(detector: MTCNN) -> AsyncIterator[Live]:
    async with live_server(identity_services(detector), token=TOKEN) as live:
        yield live


def _with_auth(kw: dict[str, Any], auth: str | None) -> dict[str, Any]:
    headers = dict(kw.get("headers", {}))
    if auth is not None:
        headers["Authorization"] = auth
    return {**kw, "headers": headers}


@pytest.mark.parametrize(("method", "path", "kw", "status"), ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
async def test_every_api_route_needs_the_token(
    token_live: Live, method: str, path: str, kw: dict[str, Any], status: int
) -> None:
    for name, auth in WRONG.items():
        reply = await token_live.call(method, path, **_with_auth(kw, auth))
        assert reply.status == 401, (name, reply.status, reply.body)
        assert "token" in reply.error, name
        assert reply.headers.get("www-authenticate", "").startswith("Bearer"), name
    # a token in the query string is not a token
    reply = await token_live.call(method, f"{path}?token={TOKEN}", **kw)
    assert reply.status == 401
    # header bytes that are not UTF-8 are a wrong token, not a server error
    raw = get(path, method=method).replace(b"\r\n\r\n", b"\r\nAuthorization: Bearer \xff\xfe\x80\r\n\r\n")
    reply = await token_live.raw(raw)
    assert reply.status == 401, reply.body
    assert token_live.manager.defaults == LiveSettings()  # nothing a refused request carried was applied
    # with the token (the scheme's case does not matter, RFC 7235) the route answers as it would without auth
    for scheme in ("Bearer", "bearer", "BEARER"):
        reply = await token_live.call(method, path, **_with_auth(kw, f"{scheme} {TOKEN}"))
        assert reply.status == status, (scheme, reply.status, reply.body)
    assert not token_live.manager.sessions


async def test_the_page_and_healthz_stay_open(token_live: Live) -> None:
    for path in ("/", "/index.html", "/app.js", "/style.css", "/healthz"):
        for method in ("GET", "HEAD"):
            reply = await token_live.call(method, path)
            assert reply.status == 200, (method, path, reply.status)
    _status, body = await token_live.json("GET", "/healthz")
    assert body == {"status": "ok", "version": body["version"], "sessions": 0}
    # open means read-only: other methods on them, and unknown paths, still need the token
    for method, path in (("POST", "/"), ("PUT", "/index.html"), ("DELETE", "/healthz"), ("GET", "/nothing-here")):
        reply = await token_live.call(method, path)
        assert reply.status == 401, (method, path, reply.status)


async def test_a_session_with_the_token_streams_and_only_the_token_ends_it(token_live: Live) -> None:
    live = token_live
    client = await offer(live.http, live.base, StampedFaceTrack(face_frame(faces.astronaut())), token=TOKEN)
    try:
        assert await wait_for(lambda: len(client.received.images) >= 3, timeout=20)
        assert client.session in live.manager.sessions
        auth = {"Authorization": f"Bearer {TOKEN}"}
        status, stats = await live.json("GET", f"/api/stats?session={client.session}", headers=auth)
        assert status == 200
        assert stats["sessions"][0]["id"] == client.session
        # without the token nobody can end, watch or change someone's session
        for method, path, kw in (
            ("DELETE", f"/api/sessions/{client.session}", {}),
            ("PUT", f"/api/settings?session={client.session}", {"json": {"swap": False}}),
            ("POST", f"/whep?session={client.session}", {"data": "v=0", "headers": {"Content-Type": SDP}}),
            ("GET", f"/api/stats?session={client.session}", {}),
        ):
            reply = await live.call(method, path, **_with_auth(kw, "Bearer " + TOKEN[::-1]))
            assert reply.status == 401, (method, path)
        assert live.manager.sessions[client.session].settings.swap is True
        reply = await live.call("DELETE", f"/api/sessions/{client.session}", headers=auth)
        assert reply.status == 204
        await assert_clean(live, keep_pcs=[client.pc])
    finally:
        await client.close()


# --- size limits ------------------------------------------------------------------------------------------------


async def _chunks(total: int, size: int = 64 * 1024, head: bytes = b"", tail: bytes = b"") -> AsyncIterator[bytes]:
    """A body sent chunked (no Content-Length)."""
    yield head
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        yield b"\x00" * n
        sent += n
    yield tail


BOUNDARY = "dancecamboundary"
PART_HEAD = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="me.png"\r\n'
    "Content-Type: image/png\r\n\r\n"
).encode()
PART_TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()
MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


@pytest.fixture
async def small_limits(detector: MTCNN) -> AsyncIterator[Live]:
    async with live_server(identity_services(detector), max_upload_bytes=100_000, max_sdp_bytes=8192) as live:
        yield live


def _too_large(reply: Any, what: str, limit: str) -> None:
    assert reply.status == 413, (reply.status, reply.body)
    message = reply.error
    for word in (what, "too large", limit):
        assert word in message, message


async def test_upload_over_the_limit_is_refused_whatever_its_length_header_says(small_limits: Live) -> None:
    live = small_limits
    body = PART_HEAD + b"\x00" * 300_000 + PART_TAIL
    # an honest Content-Length over the limit: refused before the body is read
    _too_large(await live.call("POST", "/api/source", data=body, headers=MULTIPART), "photo", "100000 bytes")
    # no Content-Length at all (chunked): counted while reading
    reply = await live.call(
        "POST", "/api/source", data=_chunks(300_000, head=PART_HEAD, tail=PART_TAIL), headers=MULTIPART
    )
    _too_large(reply, "photo", "100000 bytes")
    # a Content-Length that claims a gigabyte and sends a few bytes: refused at once, without waiting for the rest
    head = get("/api/source", {**MULTIPART, "Content-Length": str(10**9)}, method="POST")
    reply = await asyncio.wait_for(live.raw(head + PART_HEAD), 10)
    _too_large(reply, "photo", "100000 bytes")
    # a Content-Length inside the allowance for the form's own bytes, with the file itself just over the limit
    body = PART_HEAD + b"\x00" * 100_001 + PART_TAIL
    _too_large(await live.call("POST", "/api/source", data=body, headers=MULTIPART), "photo", "100000 bytes")
    assert live.manager.services.source is None
    # the limit itself is fine (this one is not an image: 422, not 413)
    body = PART_HEAD + b"\x00" * 100_000 + PART_TAIL
    reply = await live.call("POST", "/api/source", data=body, headers=MULTIPART)
    assert reply.status == 422, reply.body


async def test_default_upload_limit_is_20_mb(detector: MTCNN) -> None:
    async with live_server(identity_services(detector)) as live:
        assert live.app.options.max_upload_bytes == MAX_IMAGE_BYTES == 20_000_000
        reply = await live.call(
            "POST", "/api/source", data=_chunks(21_000_000, 1 << 20, PART_HEAD, PART_TAIL), headers=MULTIPART
        )
        _too_large(reply, "photo", "20 MB")


async def test_sdp_over_the_limit_is_refused(small_limits: Live) -> None:
    live = small_limits
    sdp = "v=0\r\n" + "a=x-padding:" + "p" * 9000 + "\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    # /offer: the SDP inside the JSON is held to the SDP limit, and the JSON body to it plus room for settings
    _too_large(await live.call("POST", "/offer", json={"sdp": sdp, "type": "offer"}), "offer", "8 KiB")
    big = {"sdp": "v=0\r\n" + "p" * 40_000, "type": "offer"}
    _too_large(await live.call("POST", "/offer", json=big), "request body", "KiB")
    reply = await live.call("POST", "/offer", data=_chunks(100_000), headers={"Content-Type": "application/json"})
    _too_large(reply, "request body", "KiB")
    # /whip: the SDP is the body
    _too_large(await live.call("POST", "/whip", data=sdp, headers={"Content-Type": SDP}), "offer", "8 KiB")
    reply = await live.call("POST", "/whip", data=_chunks(100_000), headers={"Content-Type": SDP})
    _too_large(reply, "offer", "8 KiB")
    # /whep takes an offer too
    _too_large(await live.call("POST", "/whep", data=sdp, headers={"Content-Type": SDP}), "offer", "8 KiB")
    # settings bodies have their own small limit
    reply = await live.call("PUT", "/api/settings", data=b" " * 20_000, headers={"Content-Type": "application/json"})
    _too_large(reply, "request body", "16 KiB")
    await assert_clean(live)


# --- nothing reaches the file system ----------------------------------------------------------------------------

TRAVERSALS = [
    "/../pyproject.toml",
    "/%2e%2e/pyproject.toml",
    "/%2E%2E%2Fpyproject.toml",
    "/..%2fpyproject.toml",
    "/..%5cpyproject.toml",
    "/web/../README.md",
    "/web/index.html",
    "/index.html/../../pyproject.toml",
    "/./../README.md",
    "//etc/passwd",
    "/%2fetc%2fpasswd",
    "/etc/passwd",
    "/realtime/live/server.py",
    "/static/../../pyproject.toml",
]


@pytest.mark.parametrize("path", TRAVERSALS)
async def test_no_request_path_reaches_the_file_system(detector: MTCNN, path: str) -> None:
    async with live_server(identity_services(detector)) as live:
        reply = await live.raw(get(path))
    assert reply.status == 404, (path, reply.status, reply.body[:200])
    assert "not found" in reply.error.lower()
    assert b"[project]" not in reply.body
    assert b"root:" not in reply.body
    assert b"DanceCam" not in reply.body


async def test_only_files_in_web_at_start_are_served(detector: MTCNN, tmp_path: Path) -> None:
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<!doctype html><title>test page</title>")
    (web / "app.js").write_text("export const x = 1;")
    (web / ".env").write_text("SECRET=1")
    (web / "notes.md").write_text("private notes")
    (tmp_path / "secret.txt").write_text("outside the page")
    async with live_server(identity_services(detector), web_dir=web) as live:
        (web / "later.js").write_text("export const late = 1;")  # created after the app was built
        (web / "app.js").write_text("export const changed = 1;")  # changed after
        for path in ("/later.js", "/.env", "/notes.md", "/../secret.txt", "/%2e%2e/secret.txt", "/secret.txt"):
            reply = await live.raw(get(path))
            assert reply.status == 404, (path, reply.status)
            assert "not found" in reply.error.lower()
        reply = await live.call("GET", "/app.js")
        assert reply.status == 200
        assert reply.body == b"export const x = 1;"
        assert reply.headers["content-type"].startswith("text/javascript")
        assert reply.headers["x-content-type-options"] == "nosniff"
        (web / "index.html").unlink()
        reply = await live.call("GET", "/")
        assert reply.status == 200
        assert b"test page" in reply.body


@pytest.mark.parametrize(
    "request_line",
    [
        ("DELETE", "/api/sessions/..%2F..%2Fx"),
        ("DELETE", "/api/sessions/%2e%2e"),
        ("DELETE", "/whip/..%2F..%2Fx"),
        ("DELETE", "/whep/..%2F..%2Fx"),
        ("GET", "/api/settings?session=../../x"),
        ("PUT", "/api/settings?session=..%2F..%2Fetc%2Fpasswd"),
        ("GET", "/api/stats?session=/etc/passwd"),
        ("GET", "/api/sessions/..%2F..%2Fx"),  # GET is not a method of that route
    ],
    ids=lambda r: " ".join(r),
)
async def test_a_session_id_is_only_a_name(detector: MTCNN, request_line: tuple[str, str]) -> None:
    method, path = request_line
    async with live_server(identity_services(detector)) as live:
        reply = await live.raw(get(path, method=method))
    if method == "GET" and path.startswith("/api/sessions/"):
        assert reply.status == 405
        assert "DELETE" in reply.error
    else:
        assert reply.status == 404, (path, reply.status, reply.body)
        assert "no such" in reply.error


def _files(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def _named(marker: str, *folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.glob(f"{marker}*")]


async def test_an_uploaded_file_name_is_never_used(
    detector: MTCNN, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    marker = f"dancecam-upload-{uuid.uuid4().hex}"
    names = [f"../../{marker}.png", f"/tmp/{marker}.png", f"..\\..\\{marker}.png", f"{marker}.png"]
    before_tmp, before_web = _files(tmp_path), _files(WEB_DIR)
    data = png(faces.astronaut())
    async with live_server(identity_services(detector)) as live:
        for name in names:
            form = aiohttp.FormData()
            form.add_field("image", data, filename=name, content_type="image/png")
            status, body = await live.json("POST", "/api/source", data=form)
            assert status == 200, body
            assert marker not in str(body)
    assert _files(tmp_path) == before_tmp
    assert _files(WEB_DIR) == before_web
    assert not _named(marker, Path("/tmp"), ROOT, ROOT.parent)


@pytest.fixture
async def identity_live_for_hosts(detector: MTCNN) -> AsyncIterator[Live]:
    async with live_server(identity_services(detector)) as live:
        yield live


async def test_a_foreign_host_name_is_refused_on_loopback(identity_live_for_hosts: Live) -> None:
    """DNS rebinding: a page at http://evil.example:PORT/ whose name resolves to 127.0.0.1 is same-origin with us."""
    live = identity_live_for_hosts
    for host in ("evil.example", f"evil.example:{live.server.port}", "127.0.0.1.evil.example"):
        reply = await live.call("GET", "/api/info", headers={"Host": host})
        assert reply.status == 403, host
        assert "answers only to 127.0.0.1, localhost, ::1" in reply.error
    for host in (f"127.0.0.1:{live.server.port}", f"localhost:{live.server.port}", "LOCALHOST"):
        assert (await live.call("GET", "/api/info", headers={"Host": host})).status == 200, host


async def test_cross_origin_changes_are_refused(identity_live_for_hosts: Live) -> None:
    """CSRF: another site's page may post a form to 127.0.0.1 (no preflight for multipart); Origin gives it away."""
    live = identity_live_for_hosts
    port = live.server.port
    form = aiohttp.FormData()
    form.add_field("image", b"not an image", filename="x.png", content_type="image/png")
    for origin in ("http://evil.example", f"http://127.0.0.1:{port + 1}", f"https://127.0.0.1:{port}", "null"):
        reply = await live.call("POST", "/api/source", data=form, headers={"Origin": origin})
        assert reply.status == 403, origin
        assert "cross-origin request" in reply.error
        reply = await live.call("PUT", "/api/settings", json={"swap": False}, headers={"Origin": origin})
        assert reply.status == 403, origin
    assert live.manager.defaults.swap is True
    # the page's own requests (same origin) and clients that send no Origin (OBS, aiortc) go through
    same = await live.call("PUT", "/api/settings", json={"swap": False}, headers={"Origin": f"http://127.0.0.1:{port}"})
    assert same.status == 200
    assert (await live.call("PUT", "/api/settings", json={"swap": True})).status == 200
    # reading is not changing: a GET with a foreign Origin is answered (without CORS headers, the browser hides it)
    assert (await live.call("GET", "/api/settings", headers={"Origin": "http://evil.example"})).status == 200
