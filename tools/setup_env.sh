#!/usr/bin/env bash
# Create (or reuse) the project environment and link it at <repo>/.venv.
#
# The environment lives in a cache directory (default ~/.cache/vmamba_mm/venv,
# override with VMAMBA_MM_CACHE) because it is several GB; .venv is a link to it.
# Every step is idempotent: a complete environment is checked in seconds.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${VMAMBA_MM_CACHE:-$HOME/.cache/vmamba_mm}
VENV=$CACHE/venv
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

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
PIP=("$VPY" -m pip --isolated --disable-pip-version-check)

stamp=$VENV/.vmamba_mm_stamp
want=$(cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" "$ROOT/tools/setup_env.sh" | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VPY" -c "import mmcv.ops, mmdet, mmseg, mmpretrain" 2>/dev/null; then
  # The environment may be shared by several checkouts: point the editable
  # install at this one.
  "${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"
  echo "[setup] environment up to date ($VENV)"
  exit 0
fi

echo "[setup] torch + torchvision (matching pair) and build tools"
"${PIP[@]}" install -q "torch==2.13.0" "torchvision==0.28.0" "numpy>=1.24,<2" \
  "setuptools>=77.0.3,<81" wheel ninja
"${PIP[@]}" install -q "mmengine==0.10.7" "opencv-python<4.12" "numpy>=1.24,<2"

if ! "$VPY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'" 2>/dev/null; then
  echo "[setup] building mmcv 2.1.0 with CPU ops from source (about 20 minutes on 2 cores; pip caches the wheel)"
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} "${PIP[@]}" install --no-build-isolation "mmcv==2.1.0"
fi

echo "[setup] OpenMMLab task libraries and test tools"
"${PIP[@]}" install -q -r "$ROOT/requirements-dev.txt"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"
"$VPY" -c "import mmcv.ops, mmdet, mmseg, mmpretrain, torchvision, vmamba_mm; print('[setup] ok: torch', __import__('torch').__version__, 'mmcv', mmcv.__version__)"
echo "$want" > "$stamp"
