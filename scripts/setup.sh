#!/usr/bin/env bash
# Creates (or updates) DanceCam's isolated environment in .venv and installs what this machine needs.
# Idempotent: when nothing that affects the install has changed, it returns in well under a second.
#
#   scripts/setup.sh          runtime only
#   scripts/setup.sh --dev    runtime + test tools (pytest, ruff, scikit-image, playwright, insightface, Ray) and,
#                             where apt-get can run as root, Debian's chromium for the browser tests and g++
#                             for the emulated CUDA kernel tests
#
# Environment:
#   DANCECAM_VENV           where the environment lives (default: <repo>/.venv)
#   DANCECAM_PYTHON         interpreter to build it with (default: the newest python3.x >= 3.10 on PATH)
#   DANCECAM_TORCH_VERSION  torch release to install (default below)
#   DANCECAM_TORCH_INDEX    package index for a CPU torch build (default: PyTorch's CPU index)
#   DANCECAM_DEVICE         cpu | cuda: override the NVIDIA GPU detection
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DANCECAM_VENV:-$ROOT/.venv}"
TORCH_VERSION="${DANCECAM_TORCH_VERSION:-2.13.0}"
FACENET_VERSION="2.6.0"
INSIGHTFACE_VERSION="2.1"

DEV=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    *) echo "setup.sh: unknown argument '$arg' (use --dev)" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1mdancecam setup:\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31mdancecam setup:\033[0m %s\n' "$*" >&2; exit 1; }

find_python() {
  if [ -n "${DANCECAM_PYTHON:-}" ]; then echo "$DANCECAM_PYTHON"; return; fi
  local c
  for c in python3.13 python3.12 python3.11 python3.10 python3; do
    if command -v "$c" >/dev/null 2>&1 &&
      "$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
      echo "$c"; return
    fi
  done
  die "no Python >= 3.10 found. Install one (Debian/Ubuntu: apt-get install python3 python3-venv) or set DANCECAM_PYTHON."
}

device() {
  if [ -n "${DANCECAM_DEVICE:-}" ]; then echo "$DANCECAM_DEVICE"; return; fi
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo cuda; else echo cpu; fi
}

DEVICE="$(device)"
case "$DEVICE" in cpu|cuda) ;; *) die "DANCECAM_DEVICE must be cpu or cuda, not '$DEVICE'" ;; esac

CHROMIUM=/usr/bin/chromium  # the browser tests (tests/web) drive this build with Playwright
have_chromium() { [ -x "$CHROMIUM" ]; }

have_gxx() { command -v g++ >/dev/null 2>&1; }

# A Debian package a group of tests needs: apt_install PACKAGE HAVE_CHECK WHAT [SIZE]; never fatal: without it
# those tests skip with a reason.
apt_install() {
  local package="$1" have="$2" what="$3" size="${4:-}"
  "$have" && return 0
  local sudo=()
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo=(sudo -n)
    else
      say "note: $package is missing and installing it needs root: $what will skip" \
        "(to run them: sudo apt-get install $package)"
      return 0
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    say "note: $package is missing and there is no apt-get: $what will skip (install $package)"
    return 0
  fi
  say "installing Debian's $package for $what${size:+ ($size)}"
  local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -y)
  # a fresh machine may have no package lists yet: update once, then try again
  if "${apt[@]}" install "$package" >/dev/null 2>&1 ||
    { "${apt[@]}" update >/dev/null 2>&1 && "${apt[@]}" install "$package" >/dev/null 2>&1; }; then
    "$have" || say "note: apt installed $package but it is not found: $what will skip"
  else
    say "note: 'apt-get install $package' failed: $what will skip (run it by hand to see why)"
  fi
}

# Everything that changes what gets installed goes into the stamp.
stamp_of() {
  {
    cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh"
    echo "device=$DEVICE dev=$1 torch=$TORCH_VERSION index=${DANCECAM_TORCH_INDEX:-}"
    [ "$1" = 1 ] && echo "chromium=$(have_chromium && echo yes || echo no) g++=$(have_gxx && echo yes || echo no)"
    "$VENV/bin/python" -c 'import sys; print(sys.version)' 2>/dev/null || echo "no-python"
  } | sha256sum | cut -d' ' -f1
}
STAMP_FILE="$VENV/.dancecam-setup"
up_to_date() { [ -f "$STAMP_FILE" ] && grep -qx "$(stamp_of "$1")" "$STAMP_FILE"; }
# A --dev environment also satisfies a runtime-only request.
if up_to_date "$DEV" || { [ "$DEV" = 0 ] && up_to_date 1; }; then exit 0; fi

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  PY="$(find_python)"
  say "creating the environment in $VENV with $("$PY" --version 2>&1)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV" ||
    die "'$PY -m venv' failed. On Debian/Ubuntu: apt-get install python3-venv (for your Python version)."
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

have_torch() { "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' and ((torch.version.cuda is not None) == ('$DEVICE' == 'cuda')) else 1)" 2>/dev/null; }

if have_torch; then
  :
elif [ "$DEVICE" = cuda ]; then
  say "NVIDIA GPU found: installing CUDA torch $TORCH_VERSION (large download)"
  "${PIP[@]}" install -q "torch==$TORCH_VERSION"
else
  say "no NVIDIA GPU: installing CPU torch $TORCH_VERSION"
  # 1) a CPU wheel this machine already has (pip's find-links), offline; its dependencies come in step 2
  # 2) else PyTorch's CPU index, which PyPI's default (CUDA) build would otherwise make several GB larger
  if "${PIP[@]}" install -q --no-index --no-deps "torch==$TORCH_VERSION" 2>/dev/null &&
    "$VENV/bin/python" -c 'import sys, importlib.metadata as m; sys.exit(0 if "+cpu" in m.version("torch") else 1)'; then
    "${PIP[@]}" install -q "torch==$TORCH_VERSION"
  else
    "${PIP[@]}" install -q "torch==$TORCH_VERSION" \
      --index-url "${DANCECAM_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" \
      --extra-index-url "https://pypi.org/simple" ||
      { say "the CPU index was not reachable: installing torch from the default index instead"
        "${PIP[@]}" install -q "torch==$TORCH_VERSION"; }
  fi
fi

EXTRAS=""
[ "$DEVICE" = cuda ] && EXTRAS="gpu"
# dev: the test tools, and Ray for the cluster tests (the `cluster` extra; ~80 MB wheel)
[ "$DEV" = 1 ] && EXTRAS="${EXTRAS:+$EXTRAS,}dev,cluster"
say "installing dancecam${EXTRAS:+ [$EXTRAS]} and its dependencies"
# torch stays as installed above: the constraint keeps pip from swapping in another build
CONSTRAINT="$(mktemp)"
trap 'rm -f "$CONSTRAINT"' EXIT
"$VENV/bin/python" -c 'import importlib.metadata as m; print("torch==" + m.version("torch"))' >"$CONSTRAINT"
"${PIP[@]}" install -q -c "$CONSTRAINT" -e "$ROOT${EXTRAS:+[$EXTRAS]}"

# Installed without their declared dependencies: their pins (torch<2.3, numpy<2, ...) are stale, and we use
# only files they ship (MTCNN weights; insightface as an independent reference in tests).
NODEPS=("facenet-pytorch==$FACENET_VERSION")
[ "$DEV" = 1 ] && NODEPS+=("insightface==$INSIGHTFACE_VERSION")
"${PIP[@]}" install -q --no-deps "${NODEPS[@]}"

if [ "$DEV" = 1 ]; then
  # Playwright's own browser download is not used (it needs a host this project's machines cannot reach)
  apt_install chromium have_chromium "the browser tests (tests/web)" "~480 MB"
  # g++ (with its ASan/UBSan runtimes) runs the CUDA kernels' source on the CPU: tests/realtime/kernel_host.py
  apt_install g++ have_gxx "the emulated CUDA kernel tests" "~60 MB"
fi

stamp_of "$DEV" >"$STAMP_FILE"
say "ready: $VENV ($DEVICE torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'))"
