"""The downloader against a real HTTP server on 127.0.0.1: success, resume, every failure mode, trust on first use."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from rich.console import Console

from engines import download as dl
from engines.errors import (
    AccessDeniedError,
    ChecksumMismatchError,
    DiskFullError,
    DownloadError,
    GatedModelError,
    NetworkError,
    RemoteFileNotFoundError,
    TruncatedDownloadError,
)
from engines.registry import ModelEntry, Source
from engines.store import TRUST_FILE, TrustStore
from tests.fileserver import FileServer, Served, ServerThread

pytestmark = pytest.mark.network

SIZE = 1_500_000


def payload(seed: int = 0, size: int = SIZE) -> bytes:
    return (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry_for(
    urls: list[str] | list[Source],
    data: bytes,
    *,
    pinned: bool = True,
    gated: bool = False,
    file_name: str = "model.bin",
    size_exact: bool = True,
) -> ModelEntry:
    sources = tuple(u if isinstance(u, Source) else Source(u, auth="huggingface" if gated else "none") for u in urls)
    return ModelEntry(
        name="test_model",
        file_name=file_name,
        description="test",
        used_by="tests",
        licence="test",
        size=len(data),
        size_exact=size_exact,
        sha256=sha(data) if pinned else None,
        sources=sources,
        gated=gated,
        access_url="https://huggingface.co/example/gated-model" if gated else None,
    )


def opts(**kw: object) -> dl.DownloadOptions:
    base: dict[str, object] = {
        "retries": 2,
        "backoff": 0.0,
        "timeout": 5.0,
        "progress": False,
        "hf_token": None,
    }
    base.update(kw)
    return dl.DownloadOptions(**base)  # type: ignore[arg-type]


def quiet() -> Console:
    return Console(file=io.StringIO())


def leftovers(model_dir: Path) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir() if p.name.endswith((".part", ".part.json")))


# --- success ----------------------------------------------------------------------------------------------


def test_download_success_is_verified_and_atomic(file_server: FileServer, tmp_path: Path) -> None:
    data = payload()
    file_server.files["model.bin"] = Served(data)
    entry = entry_for([file_server.url("model.bin")], data)

    result = dl.download(entry, tmp_path, opts(), quiet())

    assert result.path == tmp_path / "model.bin"
    assert result.path.read_bytes() == data
    assert result.sha256 == sha(data)
    assert result.trust == "pinned"
    assert result.url == file_server.url("model.bin")
    assert leftovers(tmp_path) == []

    # a second run finds the verified file and asks nothing of the server
    before = len(file_server.requests)
    again = dl.download(entry, tmp_path, opts(), quiet())
    assert again.url is None
    assert len(file_server.requests) == before


def test_progress_bar_shows_the_transfer(file_server: FileServer, tmp_path: Path) -> None:
    data = payload()
    file_server.files["model.bin"] = Served(data)
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    dl.download(entry_for([file_server.url("model.bin")], data), tmp_path, opts(progress=True), console)
    out = buf.getvalue()
    assert "model.bin" in out
    assert "1.5" in out  # "1.5 MB" of the download column


# --- resume -----------------------------------------------------------------------------------------------


def test_resume_after_a_cut_connection(file_server: FileServer, tmp_path: Path) -> None:
    data = payload(1)
    cut = 600_000
    file_server.files["model.bin"] = Served(data, cut_after=cut)
    entry = entry_for([file_server.url("model.bin")], data)

    result = dl.download(entry, tmp_path, opts(), quiet())

    assert result.path.read_bytes() == data
    reqs = file_server.requests_for("model.bin")
    assert len(reqs) == 2
    assert "Range" not in reqs[0].headers
    # the retry asks only for the rest, and only if the file is still the same one
    start = int(reqs[1].headers["Range"].removeprefix("bytes=").rstrip("-"))
    assert cut - 200_000 <= start <= cut  # socket buffering may lose the last chunks in flight, never more
    assert reqs[1].headers["If-Range"] == file_server.files["model.bin"].etag
    assert leftovers(tmp_path) == []


def test_truncated_body_fails_clearly_keeps_the_part_and_resumes_next_run(
    file_server: FileServer, tmp_path: Path
) -> None:
    data = payload(2)
    file_server.files["model.bin"] = Served(data, stop_at=900_000)  # a broken upstream: always ends there
    entry = entry_for([file_server.url("model.bin")], data)

    with pytest.raises(TruncatedDownloadError) as info:
        dl.download(entry, tmp_path, opts(retries=2), quiet())
    msg = str(info.value)
    assert f"of {len(data)}" in msg
    assert "run the same command again to resume" in msg
    part = tmp_path / "model.bin.part"
    assert part.exists()
    assert 0 < part.stat().st_size <= 900_000
    assert not (tmp_path / "model.bin").exists()
    assert len(file_server.requests_for("model.bin")) == 3  # first try + 2 retries

    # the upstream is fixed: the next run resumes from the kept bytes instead of starting over
    file_server.files["model.bin"].stop_at = None
    have = part.stat().st_size
    result = dl.download(entry, tmp_path, opts(), quiet())
    assert result.path.read_bytes() == data
    assert file_server.requests_for("model.bin")[-1].headers["Range"] == f"bytes={have}-"


def test_changed_file_on_the_server_restarts_instead_of_mixing(file_server: FileServer, tmp_path: Path) -> None:
    old, new = payload(3), payload(4)
    file_server.files["model.bin"] = Served(old, stop_at=500_000)
    with pytest.raises(TruncatedDownloadError):
        dl.download(entry_for([file_server.url("model.bin")], new), tmp_path, opts(retries=0), quiet())
    # the server now has a new release with another ETag: If-Range makes it send the whole new file
    file_server.files["model.bin"] = Served(new)
    result = dl.download(entry_for([file_server.url("model.bin")], new), tmp_path, opts(), quiet())
    assert result.path.read_bytes() == new
    last = file_server.requests_for("model.bin")[-1]
    assert "Range" in last.headers  # it asked to resume...
    assert last.headers["If-Range"] != file_server.files["model.bin"].etag  # ...and the changed ETag said no


def test_server_that_ignores_range_gets_a_clean_restart(file_server: FileServer, tmp_path: Path) -> None:
    data = payload(5)
    file_server.files["model.bin"] = Served(data, cut_after=400_000, ignore_range=True)
    result = dl.download(entry_for([file_server.url("model.bin")], data), tmp_path, opts(), quiet())
    assert result.path.read_bytes() == data


# --- checksum ---------------------------------------------------------------------------------------------


def test_wrong_hash_deletes_the_file_and_names_both_hashes(file_server: FileServer, tmp_path: Path) -> None:
    data, other = payload(6), payload(7)
    file_server.files["model.bin"] = Served(data)
    entry = entry_for([file_server.url("model.bin")], other)  # pins the hash of different bytes

    with pytest.raises(ChecksumMismatchError) as info:
        dl.download(entry, tmp_path, opts(), quiet())
    msg = str(info.value)
    assert sha(other) in msg  # expected
    assert sha(data) in msg  # actual
    assert "deleted" in msg
    assert not (tmp_path / "model.bin").exists()
    assert leftovers(tmp_path) == []


def test_a_bad_mirror_falls_through_to_a_good_one(file_server: FileServer, tmp_path: Path) -> None:
    data = payload(8)
    file_server.files["bad.bin"] = Served(payload(9))
    file_server.files["good.bin"] = Served(data)
    entry = entry_for([file_server.url("missing.bin"), file_server.url("bad.bin"), file_server.url("good.bin")], data)
    result = dl.download(entry, tmp_path, opts(), quiet())
    assert result.url == file_server.url("good.bin")
    assert result.path.read_bytes() == data


# --- HTTP errors ------------------------------------------------------------------------------------------


def test_401_on_a_gated_file_says_how_to_get_access(file_server: FileServer, tmp_path: Path) -> None:
    data = payload(10)
    file_server.files["gated.bin"] = Served(data, token="hf_secret")
    entry = entry_for([file_server.url("gated.bin")], data, gated=True)

    with pytest.raises(GatedModelError) as info:
        dl.download(entry, tmp_path, opts(hf_token=None), quiet())
    msg = str(info.value)
    assert "HTTP 401" in msg
    assert "No HF_TOKEN is set" in msg
    assert "https://huggingface.co/example/gated-model" in msg  # where to request access
    assert "export HF_TOKEN=" in msg
    assert "https://huggingface.co/settings/tokens" in msg
    assert "dancecam models path" in msg  # the offline alternative

    with pytest.raises(GatedModelError, match="HF_TOKEN is set but was refused"):
        dl.download(entry, tmp_path, opts(hf_token="hf_wrong"), quiet())

    result = dl.download(entry, tmp_path, opts(hf_token="hf_secret"), quiet())
    assert result.path.read_bytes() == data
    assert file_server.requests_for("gated.bin")[-1].headers["Authorization"] == "Bearer hf_secret"


def test_403_on_an_open_file_is_access_denied(file_server: FileServer, tmp_path: Path) -> None:
    data = payload(11)
    file_server.files["model.bin"] = Served(data, status=403)
    with pytest.raises(AccessDeniedError, match=r"HTTP 403") as info:
        dl.download(entry_for([file_server.url("model.bin")], data), tmp_path, opts(), quiet())
    assert not isinstance(info.value, GatedModelError)


def test_404_names_the_url_and_what_to_do(file_server: FileServer, tmp_path: Path) -> None:
    data = payload(12)
    url = file_server.url("gone.bin")
    with pytest.raises(RemoteFileNotFoundError) as info:
        dl.download(entry_for([url], data), tmp_path, opts(), quiet())
    assert url in str(info.value)
    assert "HTTP 404" in str(info.value)
    assert leftovers(tmp_path) == []


def test_all_sources_failing_reports_each(file_server: FileServer, tmp_path: Path) -> None:
    data = payload(13)
    file_server.files["gated.bin"] = Served(data, token="t")
    entry = entry_for([file_server.url("gated.bin"), file_server.url("nowhere.bin")], data, gated=True)
    with pytest.raises(GatedModelError) as info:
        dl.download(entry, tmp_path, opts(), quiet())
    msg = str(info.value)
    assert "Other sources tried" in msg
    assert file_server.url("nowhere.bin") in msg
    assert "HTTP 404" in msg


def test_server_errors_are_retried_then_reported(file_server: FileServer, tmp_path: Path) -> None:
    data = payload(14)
    file_server.files["model.bin"] = Served(data, status=503)
    with pytest.raises(DownloadError, match="HTTP 503"):
        dl.download(entry_for([file_server.url("model.bin")], data), tmp_path, opts(retries=2), quiet())
    assert len(file_server.requests_for("model.bin")) == 3


# --- no network -------------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_network_is_a_clear_error(tmp_path: Path) -> None:
    data = payload(15)
    url = f"http://127.0.0.1:{_closed_port()}/model.bin"
    with pytest.raises(NetworkError) as info:
        dl.download(entry_for([url], data), tmp_path, opts(), quiet())
    msg = str(info.value)
    assert "refused the connection" in msg
    assert "dancecam models path" in msg
    assert not (tmp_path / "model.bin").exists()


# --- disk full --------------------------------------------------------------------------------------------


def test_disk_full_before_the_transfer(
    file_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload(16)
    file_server.files["model.bin"] = Served(data)
    real = shutil.disk_usage

    def nearly_full(path: os.PathLike[str] | str) -> object:
        return real(path)._replace(free=1000)

    monkeypatch.setattr(dl.shutil, "disk_usage", nearly_full)
    with pytest.raises(DiskFullError) as info:
        dl.download(entry_for([file_server.url("model.bin")], data), tmp_path, opts(), quiet())
    assert "needs 1.5 MB more but only 1.0 kB is free" in str(info.value)
    assert "--model-dir" in str(info.value)


def test_disk_full_during_the_transfer_keeps_the_part(file_server: FileServer, tmp_path: Path) -> None:
    """A real write failure from the kernel: the child process may write at most 700 kB per file."""
    data = payload(17)
    file_server.files["model.bin"] = Served(data)
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        from pathlib import Path
        from engines import download as dl
        from engines.errors import DiskFullError
        from engines.registry import ModelEntry, Source
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write() instead of a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (700_000, 700_000))
        entry = ModelEntry(name="m", file_name="model.bin", description="", used_by="", licence="",
                           size={len(data)}, size_exact=True, sha256="{sha(data)}",
                           sources=(Source("{file_server.url("model.bin")}"),))
        try:
            dl.download(entry, Path(sys.argv[1]), dl.DownloadOptions(retries=0, progress=False))
        except DiskFullError as e:
            print(e)
            sys.exit(3)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "file size limit" in proc.stdout
    assert "resume" in proc.stdout
    assert (tmp_path / "model.bin.part").exists()  # nothing fetched is lost
    assert not (tmp_path / "model.bin").exists()


# --- trust on first use -----------------------------------------------------------------------------------


def test_first_download_records_the_hash_and_later_ones_are_held_to_it(file_server: FileServer, tmp_path: Path) -> None:
    data = payload(18)
    file_server.files["model.bin"] = Served(data)
    entry = entry_for([file_server.url("model.bin")], data, pinned=False)

    result = dl.download(entry, tmp_path, opts(), quiet())
    assert result.trust == "recorded"
    record = TrustStore(tmp_path).get("model.bin")
    assert record is not None
    assert record.sha256 == sha(data)
    assert record.source == file_server.url("model.bin")
    assert json.loads((tmp_path / TRUST_FILE).read_text())["model.bin"]["size"] == len(data)

    # the source now serves different bytes of the same size: held against the recorded hash
    file_server.files["model.bin"] = Served(payload(19))
    with pytest.raises(ChecksumMismatchError) as info:
        dl.download(entry, tmp_path, opts(force=True), quiet())
    assert sha(data) in str(info.value)
    assert TRUST_FILE in str(info.value)
    assert f"models forget {entry.name}`" in str(info.value)  # how to reset the record
    assert (tmp_path / "model.bin").read_bytes() == data  # the verified copy is untouched


def test_an_error_page_is_never_trusted(file_server: FileServer, tmp_path: Path) -> None:
    data = payload(20)
    file_server.files["model.bin"] = Served(b"<html>please log in</html>")
    entry = entry_for([file_server.url("model.bin")], data, pinned=False, size_exact=False)
    with pytest.raises(DownloadError, match="not the published"):
        dl.download(entry, tmp_path, opts(), quiet())
    assert TrustStore(tmp_path).get("model.bin") is None
    assert not (tmp_path / "model.bin").exists()


# --- archives, redirects ----------------------------------------------------------------------------------


def _zip_with(member: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("README.txt", "pack")
        zf.writestr(member, data)
    return buf.getvalue()


def test_file_inside_an_official_zip(file_server: FileServer, tmp_path: Path) -> None:
    data = payload(21)
    archive = _zip_with("det_10g.onnx", data)
    file_server.files["buffalo_l.zip"] = Served(archive)
    src = Source(file_server.url("buffalo_l.zip"), member="det_10g.onnx", archive_sha256=sha(archive))
    result = dl.download(entry_for([src], data, file_name="det_10g.onnx"), tmp_path, opts(), quiet())
    assert result.path == tmp_path / "det_10g.onnx"
    assert result.path.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det_10g.onnx"]  # archive removed


def test_corrupt_archive_is_deleted(file_server: FileServer, tmp_path: Path) -> None:
    data = payload(22)
    archive = _zip_with("det_10g.onnx", data)
    file_server.files["buffalo_l.zip"] = Served(archive)
    src = Source(file_server.url("buffalo_l.zip"), member="det_10g.onnx", archive_sha256="0" * 64)
    with pytest.raises(ChecksumMismatchError, match=r"buffalo_l\.zip"):
        dl.download(entry_for([src], data, file_name="det_10g.onnx"), tmp_path, opts(), quiet())
    assert list(tmp_path.iterdir()) == []


def test_token_follows_same_host_redirects_only(file_server: FileServer, tmp_path: Path) -> None:
    data = payload(23)
    other = ServerThread(host="localhost")  # another host name: a CDN, as far as the client can tell
    cdn = other.start()
    try:
        cdn.files["blob.bin"] = Served(data)
        file_server.files["blob.bin"] = Served(data, token="hf_secret")
        file_server.files["moved.bin"] = Served(b"", redirect="/blob.bin")
        file_server.files["to-cdn.bin"] = Served(b"", redirect=cdn.url("blob.bin"))

        same = entry_for([file_server.url("moved.bin")], data, gated=True)
        assert dl.download(same, tmp_path / "a", opts(hf_token="hf_secret"), quiet()).path.read_bytes() == data

        cross = entry_for([file_server.url("to-cdn.bin")], data, gated=True)
        assert dl.download(cross, tmp_path / "b", opts(hf_token="hf_secret"), quiet()).path.read_bytes() == data
        assert all("Authorization" not in r.headers for r in cdn.requests)
    finally:
        other.stop()


def test_unwritable_model_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DownloadError, match="cannot create the model directory"):
        dl.download(entry_for(["http://127.0.0.1:9/x"], b"x"), blocker / "models", opts(), quiet())


def test_hf_endpoint_redirects_only_hugging_face_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.local:8080/")
    assert (
        dl.resolve_url("https://huggingface.co/a/b/resolve/main/f.h5")
        == "http://mirror.local:8080/a/b/resolve/main/f.h5"
    )
    assert dl.resolve_url("https://github.com/x/y.zip") == "https://github.com/x/y.zip"
    monkeypatch.delenv("HF_ENDPOINT")
    assert dl.resolve_url("https://huggingface.co/a") == "https://huggingface.co/a"
