"""Downloads of model files: resumable, atomic and verified.

Design notes: docs/design-notes.md, section engines/download.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import http.client
import json
import os
import shutil
import socket
import ssl
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from engines.command import dancecam
from engines.errors import (
    AccessDeniedError,
    ChecksumMismatchError,
    DiskFullError,
    DownloadError,
    GatedModelError,
    HTTPStatusError,
    ModelMissingError,
    NetworkError,
    RemoteFileNotFoundError,
    TruncatedDownloadError,
)
from engines.registry import ModelEntry, Source
from engines.store import TrustStore, check, expected_sha256, human_size, sha256_file, size_plausible

try:  # advisory lock against two processes writing one .part; POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

CHUNK = 1 << 20
USER_AGENT = "dancecam-model-manager/0.1"
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}
_TOKEN_PAGE = "https://huggingface.co/settings/tokens"
HF_BASE = "https://huggingface.co"


def resolve_url(url: str) -> str:
    """Hugging Face addresses honour HF_ENDPOINT (a mirror or self-hosted hub), as huggingface_hub does."""
    endpoint = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    if endpoint and url.startswith(HF_BASE + "/"):
        return endpoint + url[len(HF_BASE) :]
    return url


def hf_token_from_env() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


@dataclass(frozen=True, slots=True)
class DownloadOptions:
    retries: int = 4  # further attempts at one source after a cut, a timeout or a 5xx, while no progress is made
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    timeout: float = 30.0  # seconds per connect or read
    progress: bool = True
    force: bool = False  # fetch again even when a verified file is present
    hf_token: str | None = field(default_factory=hf_token_from_env)


@dataclass(frozen=True, slots=True)
class DownloadResult:
    entry: ModelEntry
    path: Path
    sha256: str
    size: int
    url: str | None  # None: the file was already present and verified
    trust: str  # "pinned", "trusted" or "recorded" (hash recorded now, on first use)


class _Transient(Exception):
    """A failure worth another attempt at the same source (cut, timeout, 5xx)."""

    def __init__(self, final: DownloadError) -> None:
        super().__init__(str(final))
        self.final = final


class _SameHostAuthRedirect(urllib.request.HTTPRedirectHandler):
    """Keeps the token on redirects within one host, drops it on redirects to others (signed CDN URLs)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        auth = req.unredirected_hdrs.get("Authorization")
        if new is not None and auth and urlsplit(newurl).hostname == urlsplit(req.full_url).hostname:
            new.add_unredirected_header("Authorization", auth)
        return new


# --- public entry point -----------------------------------------------------------------------------------


def download(
    entry: ModelEntry,
    model_dir: Path,
    options: DownloadOptions | None = None,
    console: Console | None = None,
) -> DownloadResult:
    """Fetch `entry` into `model_dir` (or confirm a verified copy is there) and return where it is."""
    opts = options or DownloadOptions()
    console = console or Console(stderr=True)
    if entry.bundled is not None:
        status = check(entry, model_dir)
        if not status.usable:
            raise ModelMissingError(f"{entry.file_name}: {status.describe()}")
        assert status.path is not None
        assert status.actual is not None
        return DownloadResult(entry, status.path, status.actual, status.size or 0, None, status.origin)
    if not entry.downloadable:
        raise ModelMissingError(f"{entry.file_name} has no download source; place it at {model_dir / entry.file_name}")

    _ensure_dir(model_dir)
    dest = model_dir / entry.file_name
    if dest.exists() and not opts.force:
        status = check(entry, model_dir)
        if status.usable:
            assert status.actual is not None
            return DownloadResult(entry, dest, status.actual, status.size or 0, None, status.origin)
        console.print(f"[yellow]{entry.file_name}: {status.describe()}; fetching a fresh copy[/]")

    failures: list[DownloadError] = []
    with _lock(model_dir, entry), _progress(opts, console) as progress:
        for listed in entry.sources:
            source = dataclasses.replace(listed, url=resolve_url(listed.url))
            try:
                return _from_source(entry, source, model_dir, opts, progress)
            except DiskFullError:
                raise  # another source needs the same space
            except DownloadError as e:
                e.url = e.url or source.url
                failures.append(e)
    raise failures[0].with_alternatives(failures[1:])


# --- one source -------------------------------------------------------------------------------------------


def _from_source(
    entry: ModelEntry, source: Source, model_dir: Path, opts: DownloadOptions, progress: Progress
) -> DownloadResult:
    dest = model_dir / entry.file_name
    part = model_dir / f"{entry.file_name}.part"
    if source.member is None:
        _fetch(entry, source, part, opts, progress, entry.file_name)
    else:
        archive_name = Path(urlsplit(source.url).path).name or f"{entry.file_name}.zip"
        archive_part = model_dir / f"{archive_name}.part"
        _fetch(entry, source, archive_part, opts, progress, f"{archive_name} (for {entry.file_name})")
        if source.archive_sha256:
            actual = sha256_file(archive_part)
            if actual != source.archive_sha256:
                _discard(archive_part)
                raise ChecksumMismatchError(
                    archive_name,
                    source.archive_sha256,
                    actual,
                    "The archive was deleted; run the command again (its sha256 is published and pinned in "
                    "DanceCam's registry: there is no record to reset).",
                )
        try:
            _extract_member(archive_part, source.member, part)
        finally:
            _discard(archive_part)
    return _finish(entry, source, part, dest, model_dir)


def _finish(entry: ModelEntry, source: Source, part: Path, dest: Path, model_dir: Path) -> DownloadResult:
    """Verify the complete `.part`, record its hash on first use, and rename it into place."""
    trust = TrustStore(model_dir)
    expected, origin = expected_sha256(entry, trust)
    actual = sha256_file(part)
    size = part.stat().st_size
    if expected is not None and actual != expected:
        _discard(part)
        raise ChecksumMismatchError(
            entry.file_name,
            expected,
            actual,
            f"The download from {source.url} was deleted. "
            + (
                "The file changed since its hash was recorded (in "
                f"{trust.path}): if that is expected (a new release), reset the record with "
                f"`{dancecam('models', 'forget', entry.name)}` and download again."
                if origin == "trusted"
                else "Run the command again; if it persists, the source serves a different file (the sha256 is "
                "published and pinned in DanceCam's registry: there is no record to reset)."
            ),
        )
    if expected is None:
        if not size_plausible(entry, size):
            _discard(part)
            raise DownloadError(
                f"{entry.file_name} from {source.url} is {size} bytes, not the published "
                f"{human_size(entry.size, entry.size_exact)}: the server sent something else (an error page?). "
                "Nothing was kept.",
                source.url,
            )
        trust.record(entry.file_name, actual, size, source.url)
        origin_text = "recorded"
    else:
        origin_text = origin
    os.replace(part, dest)
    _fsync_dir(dest.parent)
    _meta_path(part).unlink(missing_ok=True)
    return DownloadResult(entry, dest, actual, size, source.url, origin_text)


# --- HTTP transfer with resume ----------------------------------------------------------------------------


def _fetch(
    entry: ModelEntry, source: Source, part: Path, opts: DownloadOptions, progress: Progress, label: str
) -> None:
    """Bring `source.url` completely into `part`, resuming what an earlier attempt or run left there."""
    opener = urllib.request.build_opener(_SameHostAuthRedirect)
    task = progress.add_task(label, total=None)
    failed_attempts = 0
    best = -1  # the largest part size reached: only progress past it forgives earlier failures
    while True:
        try:
            _attempt(entry, source, part, opts, opener, progress, task)
            return
        except _Transient as t:
            size = part.stat().st_size if part.exists() else 0
            if size > best:
                best, failed_attempts = size, 0
            failed_attempts += 1
            if failed_attempts > opts.retries:
                progress.remove_task(task)
                raise t.final from t
            time.sleep(opts.backoff * 2 ** (failed_attempts - 1))
        except BaseException:
            progress.remove_task(task)  # a failed source leaves no empty bar behind; the error says what happened
            raise


def _attempt(
    entry: ModelEntry,
    source: Source,
    part: Path,
    opts: DownloadOptions,
    opener: urllib.request.OpenerDirector,
    progress: Progress,
    task: TaskID,
) -> None:
    offset, validator = _resume_state(part, source.url)
    req = urllib.request.Request(source.url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
        if validator:
            req.add_header("If-Range", validator)
    if source.auth == "huggingface" and opts.hf_token:
        req.add_unredirected_header("Authorization", f"Bearer {opts.hf_token}")

    try:
        resp = opener.open(req, timeout=opts.timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:  # our partial file is not a prefix of theirs any more: start over
            _discard(part)
            raise _Transient(HTTPStatusError(f"HTTP 416 for {source.url}", source.url)) from e
        raise _http_error(entry, source, e.code, opts) from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _network_error(source.url, e) from e

    with resp:
        status = resp.status
        if status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != offset:
                _discard(part)
                raise _Transient(HTTPStatusError(f"{source.url} resumed at byte {start}, not {offset}", source.url))
            mode = "ab"
        else:  # 200: a fresh start, because we asked for none or the resource changed (If-Range)
            offset, mode = 0, "wb"
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        if status == 200 or not _meta_path(part).exists():
            _save_meta(part, source.url, resp.headers)
        if total is not None:
            _check_space(part.parent, total - offset, entry, part)
        progress.update(task, total=total, completed=offset)

        received = 0
        try:
            with part.open(mode) as f:
                while True:
                    try:
                        block = resp.read(CHUNK)
                    except (OSError, http.client.HTTPException) as e:  # reset, timeout, incomplete chunk
                        raise _Transient(_truncated(source.url, part, offset + received, total)) from e
                    if not block:
                        break
                    f.write(block)
                    received += len(block)
                    progress.update(task, advance=len(block))
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            if e.errno in _DISK_ERRNOS:
                raise _disk_full(entry, part, e) from e
            raise

    if total is not None and offset + received != total:
        if offset + received > total:
            _discard(part)
        raise _Transient(_truncated(source.url, part, offset + received, total))


def _http_error(entry: ModelEntry, source: Source, code: int, opts: DownloadOptions) -> Exception:
    url = source.url
    if code in (401, 403):
        if entry.gated and source.auth == "huggingface":
            if opts.hf_token:
                why = (
                    "HF_TOKEN is set but was refused: the access request is not granted yet, "
                    "or the token cannot read this repository."
                )
            else:
                why = "No HF_TOKEN is set."
            return GatedModelError(
                f"{entry.file_name} is gated (HTTP {code} from {url}). {why}\n"
                f"  1. Sign in and request access at {entry.access_url} (the authors approve requests).\n"
                f"  2. Create a read token at {_TOKEN_PAGE}.\n"
                f"  3. export HF_TOKEN=hf_...  then run: {dancecam('models', 'download', entry.name)}\n"
                f"  Or fetch the file on another machine and place it in the directory `{dancecam('models', 'path')}` "
                f"prints, then run `{dancecam('models', 'verify')}`.",
                url,
            )
        hint = " Set HF_TOKEN if this repository needs a Hugging Face token." if source.auth == "huggingface" else ""
        return AccessDeniedError(f"access to {url} was refused (HTTP {code}).{hint}", url)
    if code == 404:
        return RemoteFileNotFoundError(
            f"{entry.file_name} is not at {url} (HTTP 404): the source moved or removed it.\n"
            f"Update DanceCam, or fetch the file elsewhere and place it in `{dancecam('models', 'path')}`.",
            url,
        )
    err = HTTPStatusError(f"{url} answered HTTP {code}; try again later.", url)
    return _Transient(err) if code in _RETRY_STATUSES else err


def _network_error(url: str, e: BaseException) -> Exception:
    reason = e.reason if isinstance(e, urllib.error.URLError) else e
    host = urlsplit(url).hostname
    if isinstance(reason, TimeoutError | ConnectionResetError):  # socket.timeout, RemoteDisconnected too
        return _Transient(NetworkError(f"{host} did not answer in time or dropped the connection ({reason}).", url))
    if isinstance(reason, socket.gaierror):
        what = f"cannot resolve {host}: no network or no DNS"
    elif isinstance(reason, ConnectionRefusedError):
        what = f"{host} refused the connection"
    elif isinstance(reason, ssl.SSLError):
        what = f"TLS with {host} failed ({reason})"
    else:
        what = f"cannot reach {host} ({reason})"
    proxy = urllib.request.getproxies().get(urlsplit(url).scheme)
    if proxy:
        what += f" through the proxy {proxy}"
    return NetworkError(
        f"{what}.\nCheck the connection (or proxy settings), or on a machine without internet fetch the file "
        f"elsewhere and place it in the directory `{dancecam('models', 'path')}` prints.",
        url,
    )


def _truncated(url: str, part: Path, have: int, total: int | None) -> TruncatedDownloadError:
    of = f" of {total}" if total is not None else ""
    return TruncatedDownloadError(
        f"the transfer from {url} kept stopping early (at byte {have}{of}).\nThe partial file is kept at "
        f"{part}: run the same command again to resume.",
        url,
    )


def _disk_full(entry: ModelEntry, part: Path, e: OSError) -> DiskFullError:
    what = "the file size limit (ulimit -f) was reached" if e.errno == errno.EFBIG else "no space left on device"
    return DiskFullError(
        f"cannot write {entry.file_name}: {what} in {part.parent}. Free space (or raise the limit) and run the "
        f"command again to resume from the partial file {part}, or choose another --model-dir.",
    )


def _check_space(directory: Path, needed: int, entry: ModelEntry, part: Path) -> None:
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise DiskFullError(
            f"{entry.file_name} needs {human_size(needed)} more but only {human_size(free)} is free in "
            f"{directory}. Free space or choose another --model-dir (or set DANCECAM_HOME)."
            + (f" The partial file {part} is kept for resume." if part.exists() else "")
        )


# --- small helpers ----------------------------------------------------------------------------------------


def _meta_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _resume_state(part: Path, url: str) -> tuple[int, str | None]:
    """Bytes already in `part` and the validator to send, if they came from this same URL; else start over."""
    if not part.exists():
        return 0, None
    try:
        meta = json.loads(_meta_path(part).read_text())
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict) or meta.get("url") != url:
        _discard(part)
        return 0, None
    return part.stat().st_size, meta.get("etag") or meta.get("last_modified")


def _save_meta(part: Path, url: str, headers: http.client.HTTPMessage) -> None:
    etag = headers.get("ETag")
    if etag and etag.startswith("W/"):
        etag = None  # weak validators are not allowed in If-Range
    meta = {"url": url, "etag": etag, "last_modified": headers.get("Last-Modified")}
    _meta_path(part).write_text(json.dumps(meta))


def _content_range(value: str | None) -> tuple[int, int | None]:
    # "bytes 100-199/200" or "bytes 100-199/*"
    try:
        _unit, rng = (value or "").split(" ", 1)
        span, total = rng.split("/", 1)
        start = int(span.split("-", 1)[0])
        return start, None if total.strip() == "*" else int(total)
    except ValueError:
        return -1, None


def _extract_member(archive: Path, member: str, out: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n == member or n.endswith("/" + member)]
            if not names:
                raise DownloadError(f"{archive.name} does not contain {member}; the source changed its archive.")
            with zf.open(names[0]) as src, out.open("wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
    except zipfile.BadZipFile as e:
        raise DownloadError(f"{archive.name} is not a valid zip archive ({e}); run the command again.") from e
    except OSError as e:
        if e.errno in _DISK_ERRNOS:
            raise DiskFullError(f"no space left to extract {member} into {out.parent}.") from e
        raise


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    _meta_path(part).unlink(missing_ok=True)


def _ensure_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(
            f"cannot create the model directory {path} ({e.strerror}); pass --model-dir or set DANCECAM_HOME"
        ) from e


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _lock(model_dir: Path, entry: ModelEntry) -> Iterator[None]:
    """One download at a time per model directory, so two processes never write the same `.part`."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(model_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise DownloadError(
                f"another DanceCam process is downloading into {model_dir}; wait for it, then run "
                f"`{dancecam('models', 'download', entry.name)}` again"
            ) from e
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def _progress(opts: DownloadOptions, console: Console) -> Iterator[Progress]:
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not opts.progress,
    )
    with progress:
        yield progress
