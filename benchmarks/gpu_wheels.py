"""Which wheels the GPU suite needs beyond the device's own image, found from the imports of what it runs.

The GPU machine has no network: whatever it needs beyond its image (torch, CuPy, numpy, OpenCV; the lent H100 also
had Triton, ONNX Runtime, aiohttp and uvloop) must be carried there as wheels. The list is computed, not kept by
hand: the imports of the gpu-marked test files, `tests/conftest.py` and the suite itself, followed through this
repository's own modules (lazy imports inside functions included, imports guarded by `except ImportError` and
`if TYPE_CHECKING` left out), then mapped to their distributions at the versions installed here.
"""

from __future__ import annotations

import ast
import importlib.util
import shlex
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCAL_PACKAGES = ("engines", "realtime", "tests", "benchmarks")
# On the device's image already (../shared/TESTING.md): carrying them could replace a CUDA build with a CPU one.
IMAGE_MODULES = ("torch", "cupy", "numpy", "cv2", "triton", "onnxruntime", "aiohttp", "uvloop")
# Needed but never imported by name: a pytest plugin the config relies on, and the MTCNN weights' wheel.
EXTRA = {
    "pytest_asyncio": ("pytest-asyncio", "pytest plugin: the asyncio tests (pyproject asyncio_mode)"),
    "facenet_pytorch": ("facenet-pytorch", "MTCNN weights ship in it; install with --no-deps (stale pins)"),
}
NO_DEPS = ("facenet-pytorch",)
# Optional backends whose packages cannot come from a reachable index (TESTING.md): never listed.
NOT_CARRIED = ("tensorrt", "torch_tensorrt")
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64")  # pip does not widen one to the other
PYTHON = "3.12"


@dataclass(frozen=True, slots=True)
class Wheel:
    module: str
    distribution: str
    version: str | None  # installed here; None when it is not
    why: str  # the first file that imports it, or the reason it is needed
    importable: bool  # on this machine

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}" if self.version else self.distribution


def gpu_test_files(root: Path = ROOT) -> list[Path]:
    """The test files with gpu-marked tests."""
    return sorted(p for p in (root / "tests").rglob("test_*.py") if "pytest.mark.gpu" in p.read_text())


def _catches_import_error(handlers: list[ast.ExceptHandler]) -> bool:
    for h in handlers:
        if h.type is None:
            return True
        names = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
        if any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names):
            return True
    return False


def imported_names(path: Path, root: Path = ROOT) -> list[str]:
    """Dotted names `path` imports (each `from a import b` gives a and a.b: b may be a module)."""
    names: list[str] = []
    package = path.relative_to(root).with_suffix("").parts[:-1]

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.Try):
            inner = guarded or _catches_import_error(node.handlers)
            for child in node.body:
                visit(child, inner)
            for child in (*node.handlers, *node.orelse, *node.finalbody):
                visit(child, guarded)
            return
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child, guarded)
            return
        if not guarded and isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif not guarded and isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - node.level + 1]
                base = ".".join((*parent, *([node.module] if node.module else [])))
            names.append(base)
            names.extend(f"{base}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(ast.parse(path.read_text(), str(path)), False)
    return names


def _module_file(name: str, root: Path) -> Path | None:
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def third_party_imports(files: Iterable[Path], root: Path = ROOT) -> dict[str, str]:
    """Top-level third-party module → the first file (relative) that needs it, through local modules."""
    found: dict[str, str] = {}
    seen: set[Path] = set()
    todo = [Path(f).resolve() for f in files]
    while todo:
        path = todo.pop(0)
        if path in seen:
            continue
        seen.add(path)
        for name in imported_names(path, root):
            top = name.split(".")[0]
            if top in LOCAL_PACKAGES:
                parts = name.split(".")
                todo += [m for i in range(1, len(parts) + 1) if (m := _module_file(".".join(parts[:i]), root))]
            elif top and top not in sys.stdlib_module_names and top != "__future__":
                found.setdefault(top, str(path.relative_to(root)))
    return found


def _distribution(module: str) -> tuple[str, str | None]:
    dists = metadata.packages_distributions().get(module)
    if not dists:
        return module.replace("_", "-"), None
    name = dists[0]
    return name, metadata.version(name)


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def needed_wheels(extra_roots: Iterable[Path] = ()) -> list[Wheel]:
    """Every wheel the suite needs beyond the image, sorted by distribution."""
    roots = [*gpu_test_files(), ROOT / "tests" / "conftest.py", *extra_roots]
    modules = {m: f"imported by {f}" for m, f in third_party_imports(roots).items()}
    modules.update({m: why for m, (_, why) in EXTRA.items()})
    wheels = []
    for module, why in modules.items():
        if module in IMAGE_MODULES or module in NOT_CARRIED:
            continue
        dist, version = _distribution(module)
        if version is None and module in EXTRA:  # not installed here: its distribution name from the table
            dist = EXTRA[module][0]
        wheels.append(Wheel(module, dist, version, why, importable(module)))
    return sorted(wheels, key=lambda w: w.distribution.lower())


def download_command(wheels: list[Wheel], dest: str = "wheels") -> str:
    """One shell line that fetches them as binary wheels for the device's Python on another machine."""
    flags = ["--only-binary=:all:", "--python-version", PYTHON]
    for platform in PLATFORMS:
        flags += ["--platform", platform]
    flags += ["-d", dest]
    normal = [w.requirement for w in wheels if w.distribution not in NO_DEPS]
    no_deps = [w.requirement for w in wheels if w.distribution in NO_DEPS]
    parts = [shlex.join(["pip", "download", *flags, *normal])]
    if no_deps:
        parts.append(shlex.join(["pip", "download", "--no-deps", *flags, *no_deps]))
    return " && ".join(parts)


def install_command(wheels: list[Wheel], dest: str = "wheels") -> str:
    """The matching offline install on the device (facenet-pytorch without its stale pins)."""
    normal = [w.distribution for w in wheels if w.distribution not in NO_DEPS]
    no_deps = [w.distribution for w in wheels if w.distribution in NO_DEPS]
    parts = [shlex.join(["pip", "install", "--no-index", "--find-links", dest, *normal])]
    if no_deps:
        parts.append(shlex.join(["pip", "install", "--no-index", "--no-deps", "--find-links", dest, *no_deps]))
    return " && ".join(parts)


def missing_for(path: Path) -> list[str]:
    """Third-party modules a test file needs that this machine cannot import (the file is then left out)."""
    needs = third_party_imports([path, ROOT / "tests" / "conftest.py"])
    return sorted(m for m in needs if m not in NOT_CARRIED and not importable(m))
