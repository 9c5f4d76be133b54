"""`dancecam` and `dancecam models ...` as a user runs them: exit codes, messages, never a traceback."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from engines import download as dl
from engines import registry, store
from engines.registry import ModelEntry, Source
from realtime.cli.main import main
from tests.fileserver import FileServer, Served

BIN = Path(sys.executable).parent


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*args], capture_output=True, text=True, timeout=120, check=False, env={**os.environ, **(env or {})}
    )


@pytest.fixture(autouse=True)
def model_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("DANCECAM_HOME", str(home))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    return home


# --- entry points -----------------------------------------------------------------------------------------


def test_console_script_and_module_both_show_help() -> None:
    for cmd in ([str(BIN / "dancecam"), "--help"], [sys.executable, "-m", "realtime", "--help"]):
        proc = run(*cmd)
        assert proc.returncode == 0, proc.stderr
        assert "models" in proc.stdout
        assert "Consent" in proc.stdout


def test_version() -> None:
    proc = run(str(BIN / "dancecam"), "--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("dancecam 0.")


def test_no_command_is_a_usage_error() -> None:
    proc = run(str(BIN / "dancecam"))
    assert proc.returncode == 2
    assert "required" in proc.stderr


def test_real_registry_without_network_fails_cleanly_in_a_real_process(tmp_path: Path) -> None:
    """The shipped registry, a proxy that refuses: one clear line per file, exit 1, no traceback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proxy = f"http://127.0.0.1:{port}"
    env = {"HTTPS_PROXY": proxy, "https_proxy": proxy, "DANCECAM_HOME": str(tmp_path / "m"), "NO_PROXY": ""}
    proc = run(str(BIN / "dancecam"), "models", "download", "arcface_r50", "--retries", "0", "--no-progress", env=env)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "refused the connection through the proxy" in proc.stderr
    assert "dancecam models path" in proc.stderr


# --- list / path / verify ---------------------------------------------------------------------------------


def test_models_list_shows_every_entry(capsys: pytest.CaptureFixture[str], model_home: Path) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    for m in registry.MODELS:
        assert m.file_name in out
    assert "gated" in out
    assert "trust on first use" in out
    assert str(model_home) in out


def test_models_list_json(capsys: pytest.CaptureFixture[str], model_home: Path) -> None:
    assert main(["models", "list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model_dir"] == str(model_home)
    by_name = {m["name"]: m for m in data["models"]}
    assert by_name["facedancer_c_hq"]["access"] == "gated"
    assert by_name["facedancer_c_hq"]["sha256_origin"] == "not-recorded"
    assert by_name["scrfd_10g"]["sha256_origin"] == "published"
    assert by_name["mtcnn_onet"]["state"] == "present"
    assert by_name["arcface_r50"]["state"] == "missing"


def test_models_path(capsys: pytest.CaptureFixture[str], model_home: Path, tmp_path: Path) -> None:
    assert main(["models", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(model_home)
    assert main(["models", "path", "ArcFace-Res50.h5", "facedancer_c_hq"]) == 0
    assert capsys.readouterr().out.split() == [
        str(model_home / "ArcFace-Res50.h5"),
        str(model_home / "FaceDancer_config_c_HQ.h5"),
    ]
    # --model-dir before or after the action
    assert main(["models", "--model-dir", str(tmp_path / "a"), "path"]) == 0
    assert main(["models", "path", "--model-dir", str(tmp_path / "b")]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert main(["models", "path", "mtcnn_pnet"]) == 0
    assert capsys.readouterr().out.strip().endswith("facenet_pytorch/data/pnet.pt")


def test_models_verify(capsys: pytest.CaptureFixture[str], model_home: Path) -> None:
    assert main(["models", "verify", "mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet"]) == 0
    assert capsys.readouterr().out.count("ok (pinned sha256)") == 3

    assert main(["models", "verify"]) == 1  # the downloadable files are not here
    out = capsys.readouterr().out
    assert "dancecam models download facedancer_c_hq" in out
    assert str(model_home / "ArcFace-Res50.h5") in out

    model_home.mkdir()
    (model_home / "det_10g.onnx").write_bytes(b"\0" * 16_923_827)  # right size, wrong bytes
    assert main(["models", "verify", "scrfd_10g", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["files"][0]["state"] == "mismatch"
    assert data["files"][0]["expected_sha256"] == registry.find("scrfd_10g").sha256


def test_unknown_model_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "download", "nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'nonexistent'" in err
    assert "facedancer_c_hq" in err


@pytest.mark.parametrize("argv", [["models", "download", "--retries", "-1"], ["models", "download", "--timeout", "0"]])
def test_bad_flags(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


# --- download through the CLI against a local server ------------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _install_entries(monkeypatch: pytest.MonkeyPatch, *entries: ModelEntry) -> None:
    monkeypatch.setattr(registry, "MODELS", tuple(entries))
    monkeypatch.setattr(dl.time, "sleep", lambda _s: None)  # retries without the real backoff


def _entry(name: str, url: str, data: bytes, *, gated: bool = False, sha: str | None = None) -> ModelEntry:
    return ModelEntry(
        name=name,
        file_name=f"{name}.bin",
        description="",
        used_by="tests",
        licence="test",
        size=len(data),
        size_exact=True,
        sha256=sha or _sha(data),
        sources=(Source(url, auth="huggingface" if gated else "none"),),
        gated=gated,
        access_url="https://huggingface.co/example/gated" if gated else None,
    )


def test_download_all_then_verify(
    file_server: FileServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], model_home: Path
) -> None:
    a, b = os.urandom(300_000), os.urandom(200_000)
    file_server.files["a"] = Served(a)
    file_server.files["b"] = Served(b)
    _install_entries(monkeypatch, _entry("one", file_server.url("a"), a), _entry("two", file_server.url("b"), b))
    assert main(["models", "download", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "✓ one: downloaded" in out
    assert "✓ two: downloaded" in out
    assert (model_home / "one.bin").read_bytes() == a
    assert main(["models", "download", "one", "--no-progress"]) == 0
    assert "already present" in capsys.readouterr().out
    assert main(["models", "verify"]) == 0


FAILURES = {
    # name: (how the server misbehaves, text the user must see)
    "gated": ({"token": "secret"}, "export HF_TOKEN="),
    "not-found": ({"missing": True}, "HTTP 404"),
    "checksum": ({"wrong_bytes": True}, "sha256 mismatch: expected"),
    "truncated": ({"stop_at": 1000}, "run the same command again to resume"),
    "server-error": ({"status": 500}, "HTTP 500"),
    "no-network": ({"closed_port": True}, "refused the connection"),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_download_failures_exit_1_with_a_clear_message(
    case: str,
    file_server: FileServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    model_home: Path,
) -> None:
    how, expected = FAILURES[case]
    data = os.urandom(50_000)
    served = Served(data if not how.get("wrong_bytes") else os.urandom(50_000))
    served.token = how.get("token")  # type: ignore[assignment]
    served.stop_at = how.get("stop_at")  # type: ignore[assignment]
    served.status = how.get("status")  # type: ignore[assignment]
    if not how.get("missing"):
        file_server.files["f"] = served
    url = file_server.url("f")
    if how.get("closed_port"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}/f"
    good = os.urandom(10_000)
    file_server.files["good"] = Served(good)
    _install_entries(
        monkeypatch,
        _entry("broken", url, data, gated=bool(how.get("token"))),
        _entry("fine", file_server.url("good"), good),
    )

    code = main(["models", "download", "--no-progress", "--retries", "1"])

    captured = capsys.readouterr()
    assert code == 1
    assert expected in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert "1 of 2 model files failed" in captured.err
    # one broken file does not stop the others
    assert "✓ fine: downloaded" in captured.out
    assert (model_home / "fine.bin").read_bytes() == good
    assert not (model_home / "broken.bin").exists()


def test_download_disk_full_through_the_cli(
    file_server: FileServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = os.urandom(50_000)
    file_server.files["f"] = Served(data)
    _install_entries(monkeypatch, _entry("big", file_server.url("f"), data))
    real = dl.shutil.disk_usage
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda p: real(p)._replace(free=10))
    assert main(["models", "download", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "only 10 B is free" in err
    assert "Traceback" not in err


def test_trust_on_first_use_shows_in_list(
    file_server: FileServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = os.urandom(40_000)
    file_server.files["f"] = Served(data)
    entry = _entry("tofu", file_server.url("f"), data)
    _install_entries(monkeypatch, dataclasses.replace(entry, sha256=None))
    assert main(["models", "list"]) == 0
    assert "not recorded yet" in capsys.readouterr().out
    assert main(["models", "download", "--no-progress"]) == 0
    assert "sha256 recorded (trust on first use)" in capsys.readouterr().out
    assert main(["models", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["models"][0]
    assert listed["sha256"] == _sha(data)
    assert listed["sha256_origin"] == "trust-on-first-use"
    assert store.TrustStore(store.resolve_model_dir()).get("tofu.bin") is not None


# --- convert ----------------------------------------------------------------------------------------------


def test_convert_through_the_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], model_home: Path
) -> None:
    import numpy as np

    from tests.engines.keras_files import build_facedancer, write_h5

    model_home.mkdir()
    b, out = build_facedancer(np.random.default_rng(0))
    path = write_h5(model_home / "FaceDancer_small.h5", b, out)
    data = path.read_bytes()
    entry = dataclasses.replace(
        registry.find("facedancer_c_hq"), file_name=path.name, size=len(data), size_exact=True, sha256=_sha(data)
    )
    monkeypatch.setattr(registry, "MODELS", (entry,))

    assert main(["models", "convert", "--no-progress"]) == 0
    assert "facedancer_c_hq: converted" in capsys.readouterr().out
    assert (model_home / "FaceDancer_small.safetensors").exists()
    assert main(["models", "convert", "facedancer_c_hq", "--no-progress"]) == 0
    assert "already converted" in capsys.readouterr().out


def test_convert_without_the_file_says_how_to_get_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "convert"]) == 1
    assert "dancecam models download facedancer_c_hq" in capsys.readouterr().err
    assert main(["models", "convert", "mtcnn_pnet"]) == 1
    assert "needs no conversion" in capsys.readouterr().err


def test_convert_arcface_through_the_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], model_home: Path
) -> None:
    import numpy as np

    from tests.engines.keras_files import build_arcface, write_h5

    model_home.mkdir()
    b, out = build_arcface(np.random.default_rng(0))
    path = write_h5(model_home / "ArcFace-small.h5", b, out)
    data = path.read_bytes()
    entry = dataclasses.replace(registry.find("arcface_r50"), file_name=path.name, size=len(data), size_exact=True)
    monkeypatch.setattr(registry, "MODELS", (entry,))
    assert main(["models", "convert", "arcface_r50", "--no-progress"]) == 0
    out_text = capsys.readouterr().out
    assert "arcface_r50: converted" in out_text
    # trust on first use recorded the file's hash on the way (no published hash for ArcFace-Res50.h5)
    assert store.TrustStore(model_home).get(path.name) is not None


# --- export ---------------------------------------------------------------------------------------------------


def test_export_writes_checked_onnx_graphs(
    capsys: pytest.CaptureFixture[str], model_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Converted FaceDancer and ArcFace → three standalone graphs that ONNX Runtime runs like PyTorch does: the
    generator and the mapping chained reproduce FaceDancer(target, mapping(z_id))."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from engines.facedancer import load_facedancer
    from tests.realtime.test_filemode import tiny_weights

    tiny_weights(model_home)
    out_dir = tmp_path / "onnx"
    assert main(["models", "export", "-o", str(out_dir)]) == 0
    text = capsys.readouterr().out
    files = sorted(p.name for p in out_dir.iterdir())
    assert files == ["arcface_r50.onnx", "facedancer_c_hq-mapping.onnx", "facedancer_c_hq.onnx"]
    assert "facedancer (target, w → swapped, batch 1..8)" in text
    assert "mapping (z_id → w, batch 1..8)" in text
    assert "arcface (face → embedding, batch 1..8)" in text
    errors = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if "max abs error" in line]
    assert len(errors) == 3
    assert max(errors) <= 1e-4

    model = load_facedancer(model_home / "FaceDancer_config_c_HQ.safetensors")
    z_id = torch.randn(1, 512) * 10
    target = torch.rand(3, 3, 256, 256) * 2 - 1
    mapping = ort.InferenceSession(str(out_dir / "facedancer_c_hq-mapping.onnx"))
    generator = ort.InferenceSession(str(out_dir / "facedancer_c_hq.onnx"))
    (w,) = mapping.run(None, {"z_id": z_id.numpy()})
    (swapped,) = generator.run(None, {"target": target.numpy(), "w": np.repeat(w, 3, axis=0)})
    with torch.no_grad():
        want = model(target, model.map_identity(z_id))
    assert np.abs(swapped - want.numpy()).max() <= 1e-4

    # by name, into the current folder by default
    monkeypatch.chdir(tmp_path)
    assert main(["models", "export", "arcface_r50", "--opset", "18"]) == 0
    assert (tmp_path / "arcface_r50.onnx").is_file()


def test_export_errors_are_clear(capsys: pytest.CaptureFixture[str], model_home: Path, tmp_path: Path) -> None:
    assert main(["models", "export"]) == 1
    err = capsys.readouterr().err
    assert "no converted network" in err
    assert "dancecam models download facedancer_c_hq" in err
    assert main(["models", "export", "facedancer_c_hq"]) == 1
    assert "dancecam models download facedancer_c_hq" in capsys.readouterr().err
    assert main(["models", "export", "mtcnn_pnet"]) == 1
    assert "not a network DanceCam exports" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["models", "export", "--opset", "9"])
    assert e.value.code == 2
    assert "opset must be an integer from 13 to 20" in capsys.readouterr().err

    from tests.realtime.test_filemode import tiny_weights

    tiny_weights(model_home)
    a_file = tmp_path / "taken"
    a_file.write_text("")
    assert main(["models", "export", "arcface_r50", "-o", str(a_file)]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err


# --- the shipped registry end to end, through HF_ENDPOINT ---------------------------------------------------


def test_ctrl_c_keeps_the_partial_file_and_the_next_run_resumes(file_server: FileServer, tmp_path: Path) -> None:
    """`dancecam models download arcface_r50` in a real process, its Hugging Face URL sent to a local mirror
    with HF_ENDPOINT: Ctrl-C mid-transfer exits 130 with the partial file kept; the next run asks for the rest."""
    import signal
    import time

    remote = "felixrosberg/ArcFace/resolve/main/ArcFace-Res50.h5"
    data = os.urandom(3_000_000)
    file_server.files[remote] = Served(data, delay=0.2)  # ~9 s in all: a loaded machine still signals mid-transfer
    home = tmp_path / "models"
    env = {**os.environ, "HF_ENDPOINT": file_server.base_url, "DANCECAM_HOME": str(home)}
    cmd = [str(BIN / "dancecam"), "models", "download", "arcface_r50", "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    part = home / "ArcFace-Res50.h5.part"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not part.exists() or part.stat().st_size < 200_000):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, out + err
    assert "interrupted" in err
    assert "Traceback" not in err
    kept = part.stat().st_size
    assert 0 < kept < len(data)

    file_server.files[remote].delay = 0.0
    again = run(*cmd, env=env)
    assert file_server.requests_for(remote)[-1].headers["Range"] == f"bytes={kept}-"
    # this stand-in is 3 MB, not the published ~162 MB: it is refused rather than trusted
    assert again.returncode == 1
    assert "not the published ~162.0 MB" in again.stderr
    assert not (home / "ArcFace-Res50.h5").exists()
