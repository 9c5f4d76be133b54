"""The package as a user installs it: a wheel built from this tree (via its sdist), installed into a fresh venv and
run from a folder outside the checkout. The page must come from the installed package, byte for byte the tree's
web/; `swap`, `bench`, `--help` and `models list` must run without the checkout on sys.path. The venv sees the test
environment's dependencies through a .pth line (no copy, no download), which does not run the editable install's
finder: only the wheel provides realtime and engines. Every subprocess is bounded in time; the server binds and
offers ICE on 127.0.0.1 only.
"""

from __future__ import annotations

import ast
import json
import os
import site
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import cv2
import pytest

from realtime.bench import faces

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "web"
STEP_TIMEOUT_S = 120  # any one command; the whole module takes ~30-60 s on 2 cores


@dataclass(frozen=True)
class Installed:
    venv: Path
    bin: Path
    site_packages: Path
    cwd: Path  # an empty folder outside the checkout: every command runs there
    env: dict[str, str]

    def run(self, *args: str, timeout: float = STEP_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _checked(args: list[str], cwd: Path) -> None:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=STEP_TIMEOUT_S, check=False)
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    top = tmp_path_factory.mktemp("wheel")
    dist, venv, cwd = top / "dist", top / "venv", top / "run"
    cwd.mkdir()
    # sdist first, then the wheel from it (what `python -m build` does): the wheel is built in a clean unpacked copy,
    # so nothing stale in the tree's build/ can slip in, and the sdist is shown to carry everything the wheel needs
    build_sdist = "import sys, setuptools.build_meta as b; b.build_sdist(sys.argv[1])"
    _checked([sys.executable, "-c", build_sdist, str(dist)], ROOT)
    [sdist] = dist.glob("dancecam-*.tar.gz")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _checked([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(sdist)], top)
    [wheel] = dist.glob("dancecam-*.whl")
    _checked([sys.executable, "-m", "venv", "--without-pip", str(venv)], top)
    python = venv / "bin" / "python"
    _checked([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], top)
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    # the dependencies, from this environment: a path line adds the folder but runs none of the .pth files in it
    # (the editable install's finder among them), and it comes after the venv's own site-packages
    ours = [p for p in [*site.getsitepackages(), sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    (Path(purelib) / "dancecam_test_deps.pth").write_text("".join(f"{p}\n" for p in dict.fromkeys(ours)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env |= {"PYTHONNOUSERSITE": "1", "DANCECAM_HOME": str(top / "models"), "PATH": f"{venv / 'bin'}:{env['PATH']}"}
    return Installed(venv, venv / "bin", Path(purelib), cwd, env)


def test_the_package_comes_from_the_wheel_not_the_tree(installed: Installed) -> None:
    probe = (
        "import json, sys, engines, realtime\n"
        "from realtime.live import server\n"
        "print(json.dumps({'realtime': realtime.__file__, 'engines': engines.__file__,"
        " 'web': str(server.WEB_DIR), 'path': sys.path, 'tests': 'tests' in sys.modules}))"
    )
    proc = installed.run("python", "-c", probe)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    for key in ("realtime", "engines", "web"):
        assert Path(found[key]).resolve().is_relative_to(installed.site_packages.resolve()), (key, found[key])
    paths = {Path(p or installed.cwd).resolve() for p in found["path"]}
    assert ROOT not in paths
    assert not found["tests"]


def page_files() -> list[str]:
    """Every file of the tree's web/, by its path there (the page's helpers may add files: no fixed list)."""
    return sorted(p.relative_to(WEB).as_posix() for p in WEB.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def test_the_wheel_carries_every_file_of_the_page(installed: Installed) -> None:
    installed_web = installed.site_packages / "realtime" / "web"
    for name in page_files():
        copy = installed_web / name
        assert copy.is_file(), f"web/{name} is not in the wheel"
        assert copy.read_bytes() == (WEB / name).read_bytes(), name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_serve_sends_the_page_from_the_installed_package(installed: Installed) -> None:
    port = _free_port()
    log = installed.cwd / "serve.log"
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--ice-address", "127.0.0.1", "--engine", "identity"]
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(installed.bin / "dancecam"), *args], cwd=installed.cwd, env=installed.env, stdout=out, stderr=out
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while True:
            assert server.poll() is None, f"serve exited {server.returncode}:\n{log.read_text()[-3000:]}"
            late = f"serve did not answer /healthz in {STEP_TIMEOUT_S} s"
            assert time.monotonic() < deadline, f"{late}:\n{log.read_text()[-3000:]}"
            try:
                if _get(f"{base}/healthz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        status, body = _get(f"{base}/")
        assert status == 200
        assert body == (WEB / "index.html").read_bytes()
        served = 0
        for name in page_files():
            status, body = _get(f"{base}/{name}")
            if name.endswith((".md", ".py")) or name.startswith(".") or "/." in name:
                assert status == 404, name  # notes beside the page are never served (server.load_page)
                continue
            assert status == 200, (name, status, body[:200])
            assert body == (WEB / name).read_bytes(), name
            served += 1
        assert served >= 3  # index.html, a script and the style sheet at least
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def test_swap_with_the_identity_engine(installed: Installed) -> None:
    source, target, output = (installed.cwd / n for n in ("source.png", "target.png", "swapped.png"))
    photo = faces.astronaut()[:, :, ::-1]  # BGR for OpenCV
    cv2.imwrite(str(source), photo)
    cv2.imwrite(str(target), photo)
    proc = installed.run(
        "dancecam", "swap", "-s", str(source), "-i", str(target), "-o", str(output), "--engine", "identity"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = cv2.imread(str(output))
    assert result is not None
    assert result.shape == photo.shape


def test_a_short_bench_with_random_weights(installed: Installed) -> None:
    out = installed.cwd / "bench"
    tiny = ["--frames", "2", "--warmup", "1", "--sizes", "160x120", "--faces", "1", "--device", "cpu"]
    proc = installed.run("dancecam", "bench", *tiny, "--random-weights", "--backend", "eager", "--out", str(out), "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [result] = out.glob("bench-*.json")
    assert json.loads(result.read_text())


def test_help_and_models_list(installed: Installed) -> None:
    proc = installed.run("dancecam", "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "serve" in proc.stdout
    assert "swap" in proc.stdout
    proc = installed.run("dancecam", "models", "list", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "facedancer" in proc.stdout.lower()


def test_the_product_never_imports_tests() -> None:
    """realtime/ and engines/ ship in the wheel; tests/ does not, so nothing there may import it."""
    offenders = []
    for file in sorted([*(ROOT / "realtime").rglob("*.py"), *(ROOT / "engines").rglob("*.py")]):
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{file.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "tests"]
    assert offenders == []
