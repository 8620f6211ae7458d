#!/usr/bin/env bash
# Create (or reuse) the project environment and link it at <repo>/.venv.
#
# The environment lives in a cache directory (default ~/.cache/vmamba_mm/venv,
# override with VMAMBA_MM_CACHE) because it is several GB; .venv is a link to it.
# Every step is idempotent: a complete environment is checked in seconds.
#
# The version pins live in requirements.txt only; this script takes them from
# there and installs them in the order that builds mmcv from source (always with
# its ops; FORCE_CUDA=1 in the environment builds the CUDA ops too, which needs
# nvcc; MAX_JOBS sets the compile jobs, default 2). A torch already installed in the
# environment that satisfies the pin (e.g. 2.13.0+cu126 from PyTorch's own index,
# for an older driver) is kept.
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

main() {
  local CACHE VENV PY VPY stamp want
  CACHE=${VMAMBA_MM_CACHE:-$HOME/.cache/vmamba_mm}
  VENV=$CACHE/venv
  PY=${PYTHON:-python3.11}
  command -v "$PY" >/dev/null || PY=python3

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

  mkdir -p "$CACHE"
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment at $VENV"
    "$PY" -m venv "$VENV"
  fi
  if [ -e "$ROOT/.venv" ] && [ ! -L "$ROOT/.venv" ]; then
    echo "[setup] $ROOT/.venv exists and is not a link; using it as the environment"
    VENV=$ROOT/.venv
  else
    ln -sfn "$VENV" "$ROOT/.venv"
  fi
  VPY=$VENV/bin/python
  # --isolated: take PyPI's builds (the machine's pip config points at a CPU-only
  # torch wheel that has no matching torchvision).
  local PIP=("$VPY" -m pip --isolated --disable-pip-version-check)

  stamp=$VENV/.vmamba_mm_stamp
  want=$(cat "$ROOT"/requirements*.txt "$ROOT/tools/setup_env.sh" | sha256sum | cut -c1-16)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VPY" -c "import mmcv.ops, mmdet, mmseg, mmpretrain" 2>/dev/null; then
    # The environment may be shared by several checkouts: point the editable
    # install at this one.
    "${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"
    build_cpu_scan "$VPY"
    echo "[setup] environment up to date ($VENV)"
    return 0
  fi

  echo "[setup] $torch + $torchvision (matching pair) and build tools"
  "${PIP[@]}" install -q "$torch" "$torchvision" "$numpy" "$setuptools" "$ninja" wheel
  "${PIP[@]}" install -q "$mmengine" "$opencv" "$numpy"

  if ! "$VPY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$mmcv_version'" 2>/dev/null; then
    echo "[setup] building mmcv $mmcv_version with CPU ops from source (about 20 minutes on 2 cores; pip caches the wheel)"
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} "${PIP[@]}" install --no-build-isolation "mmcv==$mmcv_version"
  fi

  echo "[setup] OpenMMLab task libraries and test tools"
  "${PIP[@]}" install -q -r "$ROOT/requirements-dev.txt"
  "${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"
  build_cpu_scan "$VPY"
  "$VPY" -c "import mmcv.ops, mmdet, mmseg, mmpretrain, torchvision, vmamba_mm; print('[setup] ok: torch', __import__('torch').__version__, 'mmcv', mmcv.__version__)"
  echo "$want" > "$stamp"
}

# Sourced (tests read the pins through the functions above): define, run nothing.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  main "$@"
fi
