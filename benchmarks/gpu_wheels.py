"""Which wheels the GPU suite needs beyond the device's own image, found from the imports of what it runs.

The GPU machine has no network: whatever it needs beyond its image (torch, CuPy, numpy, OpenCV; the lent H100 also
had Triton, ONNX Runtime, aiohttp and uvloop) must be carried there as wheels. The list is computed, not kept by
hand: the imports of the gpu-marked test files, `tests/conftest.py` and the suite itself, followed through this
repository's own modules (lazy imports inside functions included, imports guarded by `except ImportError` and
`if TYPE_CHECKING` left out), then mapped to their distributions at the versions installed here.

The carry (`python -m benchmarks.gpu_suite --prepare-carry`): the device tool takes at most 64 MiB along (working
tree and carried paths together), and the full set is about 147 MB. So the wheels are fetched one by one
(`--no-deps`) for the needed distributions and what they require beyond the image, resolved from the metadata
installed here (the image's packages and their requirements are never fetched nor followed), and when the total is
over the budget whole packages are dropped in DROP_ORDER, each taking out the gpu test files that import it.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cache
from importlib import metadata
from pathlib import Path

from realtime.bench.faces import ASTRONAUT_ENV

ROOT = Path(__file__).resolve().parents[1]
LOCAL_PACKAGES = ("engines", "realtime", "tests", "benchmarks")
# On the lent H200's image already (/work/.library/device/KINDS.md, as read 2026-11-17): never carried (carrying
# torch or cupy could replace a CUDA build with a CPU one). Not there: av, aiortc, pytest-asyncio, facenet-pytorch.
IMAGE_MODULES = (
    "torch",
    "cupy",
    "numpy",
    "cv2",
    "triton",
    "onnxruntime",
    "aiohttp",
    "uvloop",
    "h5py",
    "matplotlib",
    "onnx",
    "pytest",
    "rich",
    "safetensors",
    "skimage",
    "scipy",
    "prometheus_client",
)
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
# The device's Python and platform, for the environment markers of requirements.
DEVICE_MARKERS = {
    "python_version": PYTHON,
    "python_full_version": f"{PYTHON}.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}


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


@cache
def _packages_distributions() -> Mapping[str, list[str]]:
    return metadata.packages_distributions()  # scans every installed distribution: once


def _distribution(module: str) -> tuple[str, str | None]:
    dists = _packages_distributions().get(module)
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
    image = image_distributions()
    for module, why in modules.items():
        if module in IMAGE_MODULES or module in NOT_CARRIED:
            continue
        dist, version = _distribution(module)
        if canonical(dist) in image:  # a requirement of the image's own packages (packaging, yarl, sympy, ...)
            continue
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


# --- the carry: the wheels and the astronaut photo, within what the device tool takes along -----------------------

CARRY_DIR = ".carry"
CARRY_BUDGET_MIB = 60.0
TRAVEL_LIMIT_MIB = 64.0  # the device tool's limit for the working tree and the carried paths together
MIB = 1 << 20
README_RESERVE = 16 * 1024  # README.txt is written after the plan: kept free for it
# When the carry is over its budget, whole packages go in this order (a module and what only it requires), each
# taking out the gpu test files that import it (printed; the suite leaves those out and names what they lack).
# A needed module not named here is never dropped: pytest and pytest-asyncio (no tests without them), rich and
# safetensors (the suite imports them), facenet-pytorch (the MTCNN weights, 2 MB).
DROP_ORDER: tuple[tuple[str, str], ...] = (
    ("matplotlib", "only realtime/bench/run.py's plots import it, and the suite draws none"),
    (
        "skimage",
        "scikit-image with scipy: astronaut.png stands in for it in tests/faces.py, so only the test files that "
        "import skimage themselves go",
    ),
    ("aiortc", "WebRTC (and cryptography): the server tests alone"),
    ("av", "video frames (FFmpeg inside): the colour, pipeline (yuv420p) and server tests"),
    ("prometheus_client", "the server's metrics"),
    ("onnx", "the ONNX export: the runner, SCRFD and server tests"),
    ("h5py", "Keras .h5 conversion, reached from the imports of most engine tests"),
)


def canonical(name: str) -> str:
    """A distribution's name as pip compares it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(roots: Iterable[str], stop: Collection[str] = ()) -> dict[str, str | None]:
    """Canonical name → version installed here (None: not installed here) of `roots` and everything they require on
    the device (markers for its Python and platform, extras followed); `stop` and what only it requires left out."""
    from packaging.requirements import Requirement

    found: dict[str, str | None] = {}
    todo: list[tuple[str, frozenset[str]]] = [(r, frozenset()) for r in roots]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        key = canonical(name)
        if key in stop or (key, extras) in done:
            continue
        done.add((key, extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            found.setdefault(key, None)
            continue
        found[key] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({**DEVICE_MARKERS, "extra": e}) for e in ("", *extras)):
                todo.append((req.name, frozenset(req.extras)))
    return found


@cache
def image_distributions() -> frozenset[str]:
    """The device image's distributions: those of IMAGE_MODULES installed here and everything they require."""
    by_module = _packages_distributions()
    return frozenset(requirement_closure(d for m in IMAGE_MODULES for d in by_module.get(m, ())))


def carry_sets(wheels: Iterable[Wheel]) -> dict[str, dict[str, str | None]]:
    """Needed module → the distributions to carry for it (canonical name → version): its own and what it requires
    beyond the image; facenet-pytorch alone (installed with --no-deps)."""
    image = image_distributions()
    sets = {}
    for w in wheels:
        if w.distribution in NO_DEPS:
            sets[w.module] = {canonical(w.distribution): w.version}
        else:
            sets[w.module] = requirement_closure([w.distribution], image)
    return sets


@dataclass(frozen=True, slots=True)
class CarryPlan:
    kept: tuple[str, ...]  # needed modules whose wheels are carried
    dropped: tuple[str, ...]  # in the order they were dropped
    distributions: tuple[str, ...]  # canonical names of the wheels carried, sorted
    size: int  # their bytes
    budget: int  # bytes the wheels could have

    @property
    def fits(self) -> bool:
        return self.size <= self.budget


def fit_budget(
    sets: Mapping[str, Collection[str]],
    sizes: Mapping[str, int],
    budget: int,
    order: Sequence[str] = tuple(m for m, _ in DROP_ORDER),
) -> CarryPlan:
    """Drop whole modules in `order` (a wheel goes once no kept module needs it) until the wheels fit `budget`."""

    def carried(modules: Iterable[str]) -> set[str]:
        return {d for m in modules for d in sets[m]}

    kept, dropped = list(sets), []
    for module in order:
        if sum(sizes[d] for d in carried(kept)) <= budget:
            break
        if module in kept:
            kept.remove(module)
            dropped.append(module)
    dists = carried(kept)
    return CarryPlan(tuple(kept), tuple(dropped), tuple(sorted(dists)), sum(sizes[d] for d in dists), budget)


def file_needs(files: Iterable[Path] | None = None) -> dict[str, list[str]]:
    """Each gpu test file (relative) → the third-party modules it needs beyond the image."""
    image = image_distributions()
    needs = {}
    for path in gpu_test_files() if files is None else files:
        found = third_party_imports([path, ROOT / "tests" / "conftest.py"])
        skip = (*IMAGE_MODULES, *NOT_CARRIED)
        needs[str(path.relative_to(ROOT))] = sorted(
            m for m in found if m not in skip and canonical(_distribution(m)[0]) not in image
        )
    return needs


def left_out(needs: Mapping[str, Collection[str]], carried: Collection[str]) -> dict[str, list[str]]:
    """The test files that need a module not carried, with what they lack."""
    return {f: missing for f, n in needs.items() if (missing := sorted(set(n) - set(carried)))}


def carry_download_command(requirements: Iterable[str], dest: str | Path) -> list[str]:
    """pip download of exactly these wheels (no dependency resolution: the list is complete) for the device."""
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", PYTHON]
    cmd += ["--implementation", "cp"]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    return [*cmd, "-d", str(dest), *requirements]


def device_command(carry: str, distributions: Iterable[str]) -> str:
    """What to run on the device, from the checkout's root, with `carry` carried.

    Every wheel with --no-deps (the carry holds every requirement beyond the image; facenet-pytorch's stale pins are
    never looked at), by name, unpinned, into the image's own environment: a package the image already has stays as
    it is. Where that environment cannot be written, into /tmp/site on PYTHONPATH instead (the device notes' way).
    The suite runs even if both fail (it names the test files it then leaves out); its results go to $OUT, which
    the device tool brings back (benchmarks/results elsewhere).
    """
    pip = ["python3", "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir"]
    pip += ["--find-links", f"{carry}/wheels"]
    names = sorted(distributions)
    into_image = shlex.join([*pip, *names])
    into_tmp = shlex.join([*pip, "--target", "/tmp/site", *names])
    photo = shlex.quote(f"{carry}/astronaut.png")
    suite = f'{ASTRONAUT_ENV}={photo} python3 -m benchmarks.gpu_suite --out "${{OUT:-benchmarks/results}}"'
    return f"{into_image} || {{ {into_tmp} && export PYTHONPATH=/tmp/site; }}; {suite}"


def _mib(n: float) -> str:
    return f"{n / MIB:.1f} MiB"


def carry_report(
    carry: str,
    plan: CarryPlan,
    sets: Mapping[str, Mapping[str, str | None]],
    sizes: Mapping[str, int],
    needs: Mapping[str, Collection[str]],
    photo_bytes: int,
    made: str = "",
) -> str:
    """README.txt of the carry: what is in it, what was dropped and why, which gpu test files run, the command."""
    versions = {d: v for s in sets.values() for d, v in s.items()}
    why = dict(DROP_ORDER)
    out = left_out(needs, plan.kept)
    lines = [
        f"GPU suite carry: wheels beyond the device image, and the astronaut photo ({made or 'made here'}).",
        "",
        "Carry it with the device tool's run: carry=" + f'["{carry}"]',
        "and run, from the checkout's root:",
        "",
        "    " + device_command(carry, plan.distributions),
        "",
        f"Size: wheels {_mib(plan.size)} + astronaut.png {_mib(photo_bytes)} (budget {_mib(plan.budget)} for the "
        "wheels); the device tool takes 64 MiB in all, working tree included.",
        f"The image is assumed to hold: {', '.join(IMAGE_MODULES)} and what they require (never carried).",
        "",
        "Wheels (for the modules the gpu test files and the suite import):",
    ]
    for module in plan.kept:
        mine = sorted(sets[module])
        lines.append(f"  {module}: " + ", ".join(f"{d}=={versions[d]} ({_mib(sizes[d])})" for d in mine))
    if plan.dropped:
        lines += ["", "Dropped to fit, in this order (DROP_ORDER in benchmarks/gpu_wheels.py), with what each freed:"]
        for i, module in enumerate(plan.dropped):
            before = {d for m in (*plan.kept, *plan.dropped[i:]) for d in sets[m]}
            after = {d for m in (*plan.kept, *plan.dropped[i + 1 :]) for d in sets[m]}
            freed = sorted(before - after)
            size = _mib(sum(sizes[d] for d in freed))
            lines.append(f"  {module} ({', '.join(freed) or 'nothing of its own'}; {size}): {why.get(module, '')}")
    lines += ["", f"gpu test files that run ({len(needs) - len(out)} of {len(needs)}):"]
    lines += [f"  {f}" for f in needs if f not in out]
    if out:
        lines += ["", "gpu test files the suite leaves out (a module they import is not carried):"]
        lines += [f"  {f}: needs {', '.join(m)}" for f, m in out.items()]
    lines += [
        "",
        f"Without scikit-image on the device, tests/faces.py reads the photo from ${ASTRONAUT_ENV} (this PNG, written "
        "losslessly from skimage.data.astronaut(): the same pixels).",
    ]
    return "\n".join(lines) + "\n"


def working_tree_bytes(root: Path = ROOT) -> int | None:
    """What the device tool sends besides the carry: tracked and untracked-not-ignored files (None without git)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    paths = (root / p for p in listed.decode().split("\0") if p)
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())


def write_astronaut(path: Path) -> int:
    """skimage's astronaut as a lossless PNG, read back and compared; its size in bytes."""
    import cv2
    import numpy as np
    from skimage import data

    from realtime.bench.faces import astronaut_png

    rgb = np.ascontiguousarray(data.astronaut())
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), rgb[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"could not write {path}")
    if not np.array_equal(astronaut_png(path), rgb):
        raise OSError(f"{path} does not read back as skimage's astronaut")
    return path.stat().st_size


def _wheel_distribution(path: Path) -> str:
    return canonical(path.name.split("-")[0])


def pip_download(requirements: Sequence[str], dest: Path) -> bool:
    """Fetch exactly these wheels for the device into `dest` (network: the package registries)."""
    return subprocess.run(carry_download_command(requirements, dest)).returncode == 0


def prepare_carry(
    dest: Path,
    budget_mib: float = CARRY_BUDGET_MIB,
    extra_roots: Iterable[Path] = (),
    download: Callable[[Sequence[str], Path], bool] = pip_download,
) -> int:
    """Fetch the wheels and write the photo and README.txt into `dest`, within `budget_mib`; print the command."""
    dest = (dest if dest.is_absolute() else Path.cwd() / dest).resolve()
    inside = dest.is_relative_to(ROOT)
    carry = str(dest.relative_to(ROOT)) if inside else str(dest)
    if not importable("skimage"):
        print("writing astronaut.png needs scikit-image here (pip install scikit-image)", file=sys.stderr)
        return 2
    wheels = needed_wheels(extra_roots)
    sets = carry_sets(wheels)
    versions = {d: v for s in sets.values() for d, v in s.items()}
    requirements = sorted(f"{d}=={v}" if v else d for d, v in versions.items())
    print(f"fetching {len(requirements)} wheels for Python {PYTHON} ({', '.join(PLATFORMS)}), no dependencies ...")
    with tempfile.TemporaryDirectory(prefix="dancecam-wheels-") as tmp:
        if not download(requirements, Path(tmp)):
            print("pip download failed (see above)", file=sys.stderr)
            return 1
        files = {_wheel_distribution(p): p for p in Path(tmp).glob("*.whl")}
        if missing := sorted(set(versions) - set(files)):
            print(f"no wheel came for {', '.join(missing)}", file=sys.stderr)
            return 1
        sizes = {d: p.stat().st_size for d, p in files.items()}
        photo_bytes = write_astronaut(dest / "astronaut.png")
        budget = int(budget_mib * MIB) - photo_bytes - README_RESERVE
        plan = fit_budget(sets, sizes, budget)
        if not plan.fits:
            print(
                f"even without {', '.join(plan.dropped)} the wheels take {_mib(plan.size)}, over {_mib(budget)}: "
                "raise --carry-budget",
                file=sys.stderr,
            )
            return 1
        wheel_dir = dest / "wheels"
        if wheel_dir.exists():
            shutil.rmtree(wheel_dir)
        wheel_dir.mkdir(parents=True)
        for d in plan.distributions:
            shutil.copy2(files[d], wheel_dir / files[d].name)
    made = f"python -m benchmarks.gpu_suite --prepare-carry {carry}, {datetime.now(timezone.utc):%Y-%m-%d}"
    readme = carry_report(carry, plan, sets, sizes, file_needs(), photo_bytes, made)
    (dest / "README.txt").write_text(readme)
    total = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(readme)
    print(f"{carry}: {_mib(total)} in all (budget {budget_mib:g} MiB)")
    tree = working_tree_bytes()
    if tree is not None:
        over = " -- OVER the device tool's limit" if tree + total > TRAVEL_LIMIT_MIB * MIB else ""
        print(f"with the working tree ({_mib(tree)}): {_mib(tree + total)} of {TRAVEL_LIMIT_MIB:g} MiB{over}")
    if not inside:
        print(f"warning: {carry} is outside the checkout ({ROOT}): the device tool carries none of it", file=sys.stderr)
    elif subprocess.run(["git", "check-ignore", "-q", carry], cwd=ROOT).returncode != 0:
        print(f"warning: {carry} is not ignored by git: the device tool carries only ignored paths", file=sys.stderr)
    print(f'\ndevice tool: run(command=<the command above>, carry=["{carry}"], timeout_s=600)')
    return 0
