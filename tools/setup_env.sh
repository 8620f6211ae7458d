#!/usr/bin/env bash
# Create (or reuse) the project environment and link it at <repo>/.venv.
#
#   bash tools/setup_env.sh              # CPU: mmcv with its CPU operators
#   FORCE_CUDA=1 bash tools/setup_env.sh # GPU: mmcv with its CUDA operators, built with
#                                        # NVIDIA's pip compiler (no system CUDA toolkit)
#   FORCE_CUDA=1 bash tools/setup_env.sh --dry-run   # print every step, change nothing
#
# The environment lives in a cache directory (default ~/.cache/vmamba_mm/venv,
# override with VMAMBA_MM_CACHE) because it is several GB; .venv is a link to it.
# Every step is idempotent: a complete environment is checked in seconds.
#
# The version pins live in requirements.txt (the CUDA compiler's in requirements-cuda.txt)
# only; this script takes them from there and installs them in the order that builds mmcv
# from source. With FORCE_CUDA=1 (the default where nvidia-smi sees a GPU; FORCE_CUDA=0
# builds the CPU operators only) tools/build_mmcv_cuda.py builds mmcv's CUDA operators for
# TORCH_CUDA_ARCH_LIST (default: the visible GPUs, else 8.0;9.0) and stops unless the
# result holds their device code; MAX_JOBS sets the compile jobs (default 2). A torch
# already installed in the environment that satisfies the pin (e.g. 2.13.0+cu126 from
# PyTorch's own index, for an older driver, with CUDA_HOME naming a CUDA 12 toolkit) is kept.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REQ=$ROOT/requirements.txt

# requirement NAME: the line of requirements.txt that names package NAME
# (case-insensitive; '-' and '_' alike); fails naming the file when it has none.
requirement() {
  local name line
  name=$(printf '%s' "$1" | tr '[:upper:]_' '[:lower:]-')
  while IFS= read -r line || [ -n "$line" ]; do
    line=${line%%#*}
    line=$(printf '%s' "$line" | tr -d '[:space:]')
    [ -n "$line" ] || continue
    if [ "$(printf '%s' "${line%%[<>=!~;[]*}" | tr '[:upper:]_' '[:lower:]-')" = "$name" ]; then
      printf '%s\n' "$line"
      return 0
    fi
  done < "$REQ"
  echo "[setup] $REQ has no requirement for '$1'" >&2
  return 1
}

# pinned_version NAME: the X of 'NAME==X' in requirements.txt; fails unless pinned exactly.
pinned_version() {
  local line
  line=$(requirement "$1") || return 1
  case $line in
    *==*) printf '%s\n' "${line#*==}" ;;
    *) echo "[setup] $REQ: '$line' is not an exact pin (NAME==VERSION)" >&2; return 1 ;;
  esac
}

# build_cpu_scan PYTHON: build (or find in its cache) the C++ CPU selective scan for this
# CPU's instruction set, so that the first scan does not wait for the compiler.
build_cpu_scan() {
  "$1" -m vmamba_mm.ops.selective_scan.cpu
}

# cuda_build: 1 when mmcv's CUDA operators are to be built (FORCE_CUDA, else a visible GPU).
cuda_build() {
  if [ -n "${FORCE_CUDA:-}" ]; then
    [ "$FORCE_CUDA" = 1 ] && echo 1 || echo 0
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    echo 1
  else
    echo 0
  fi
}

# step COMMAND...: run it, or with --dry-run print it.
step() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '[setup] step:'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

main() {
  local CACHE VENV PY VPY stamp want CUDA arg
  DRY_RUN=0
  for arg in "$@"; do
    case $arg in
      --dry-run) DRY_RUN=1 ;;
      *) echo "usage: [FORCE_CUDA=0|1] bash tools/setup_env.sh [--dry-run]" >&2; return 2 ;;
    esac
  done
  CACHE=${VMAMBA_MM_CACHE:-$HOME/.cache/vmamba_mm}
  VENV=$CACHE/venv
  PY=${PYTHON:-python3.11}
  command -v "$PY" >/dev/null || PY=python3
  CUDA=$(cuda_build)

  # Read every pin first: a broken requirements.txt stops here, before any install.
  local torch torchvision numpy opencv setuptools ninja mmengine mmcv_version
  torch=$(requirement torch)
  ninja=$(requirement ninja)
  torchvision=$(requirement torchvision)
  numpy=$(requirement numpy)
  opencv=$(requirement opencv-python)
  setuptools=$(requirement setuptools)
  mmengine=$(requirement mmengine)
  mmcv_version=$(pinned_version mmcv)
  if [ "$CUDA" = 1 ] && [ ! -f "$ROOT/requirements-cuda.txt" ]; then
    echo "[setup] $ROOT/requirements-cuda.txt is missing (the CUDA compiler's pins)" >&2
    return 1
  fi
  if [ "$DRY_RUN" = 1 ]; then
    echo "[setup] dry run: environment $VENV, mmcv $mmcv_version with $([ "$CUDA" = 1 ] && echo CUDA || echo CPU) operators"
  fi

  [ "$DRY_RUN" = 1 ] || mkdir -p "$CACHE"
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment at $VENV"
    step "$PY" -m venv "$VENV"
  fi
  if [ -e "$ROOT/.venv" ] && [ ! -L "$ROOT/.venv" ]; then
    echo "[setup] $ROOT/.venv exists and is not a link; using it as the environment"
    VENV=$ROOT/.venv
  else
    step ln -sfn "$VENV" "$ROOT/.venv"
  fi
  VPY=$VENV/bin/python
  # --isolated: take PyPI's builds (the machine's pip config points at a CPU-only
  # torch wheel that has no matching torchvision).
  local PIP=("$VPY" -m pip --isolated --disable-pip-version-check)
  # mmcv as this run wants it: with CUDA operators when CUDA=1.
  local mmcv_ok="import mmcv, mmcv.ops; assert mmcv.__version__ == '$mmcv_version'"
  if [ "$CUDA" = 1 ]; then
    mmcv_ok="$mmcv_ok; assert mmcv.ops.get_compiling_cuda_version() != 'not available'"
  fi

  stamp=$VENV/.vmamba_mm_stamp
  want=$(cat "$ROOT"/requirements*.txt "$ROOT/tools/setup_env.sh" | sha256sum | cut -c1-16)
  if [ "$DRY_RUN" = 0 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
      && "$VPY" -c "$mmcv_ok; import mmdet, mmseg, mmpretrain" 2>/dev/null; then
    # The environment may be shared by several checkouts: point the editable
    # install at this one.
    "${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"
    build_cpu_scan "$VPY"
    echo "[setup] environment up to date ($VENV)"
    return 0
  fi

  echo "[setup] $torch + $torchvision (matching pair) and build tools"
  step "${PIP[@]}" install -q "$torch" "$torchvision" "$numpy" "$setuptools" "$ninja" wheel
  step "${PIP[@]}" install -q "$mmengine" "$opencv" "$numpy"

  if [ "$CUDA" = 1 ]; then
    # NVIDIA's compiler wheels (requirements-cuda.txt) or CUDA_HOME; checked, built for
    # TORCH_CUDA_ARCH_LIST, verified with cuobjdump, installed (tools/build_mmcv_cuda.py).
    if [ "$DRY_RUN" = 1 ]; then
      # Its plan; without an environment yet, for the pinned torch (checked when it runs).
      echo "[setup] step: $VPY $ROOT/tools/build_mmcv_cuda.py build, with this plan:"
      if [ -x "$VPY" ]; then "$VPY" "$ROOT/tools/build_mmcv_cuda.py" plan; else "$PY" "$ROOT/tools/build_mmcv_cuda.py" plan; fi
    elif ! "$VPY" -c "$mmcv_ok" 2>/dev/null; then
      echo "[setup] building mmcv $mmcv_version with CUDA operators (about 35 minutes on 2 cores for two architectures; the wheel is kept)"
      "$VPY" "$ROOT/tools/build_mmcv_cuda.py" build
    fi
  elif [ "$DRY_RUN" = 1 ] || ! "$VPY" -c "$mmcv_ok" 2>/dev/null; then
    echo "[setup] building mmcv $mmcv_version with CPU ops from source (about 20 minutes on 2 cores; pip caches the wheel)"
    # No GPU in the build's view: mmcv compiles CUDA code whenever torch sees one.
    step env CUDA_VISIBLE_DEVICES= MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-2}" "${PIP[@]}" install --no-build-isolation "mmcv==$mmcv_version"
  fi

  echo "[setup] OpenMMLab task libraries and test tools"
  step "${PIP[@]}" install -q -r "$ROOT/requirements-dev.txt"
  step "${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"
  step build_cpu_scan "$VPY"
  [ "$DRY_RUN" = 1 ] && return 0
  "$VPY" -c "import mmcv.ops, mmdet, mmseg, mmpretrain, torchvision, vmamba_mm; print('[setup] ok: torch', __import__('torch').__version__, 'mmcv', mmcv.__version__, 'CUDA operators:', mmcv.ops.get_compiling_cuda_version())"
  echo "$want" > "$stamp"
}

# Sourced (tests read the pins through the functions above): define, run nothing.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  main "$@"
fi
