#!/usr/bin/env bash
# On the GPU machine: make the carried wheels (.whl/gpu) importable next to the
# system's torch / triton / timm (a wheel whose distribution is already installed
# is left out, so the system's versions win), then run the GPU check.
#
#   bash tools/gpu/run_check.sh OUTDIR [gpu_check.py options, e.g. --only bench_scan]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${1:?usage: run_check.sh OUTDIR [gpu_check.py options]}"
shift
PYTHON="${PYTHON:-python3}"
SITE="${VMAMBA_MM_GPU_SITE:-/tmp/vmamba_mm_gpu_site}"
# A wheel is a zip of its files laid out for site-packages: unpacking is installing
# (no pip or index needed).
"$PYTHON" - "$SITE" "$ROOT"/.whl/gpu/*.whl <<'PY'
import importlib.metadata as md, os, sys, zipfile
site, wheels = sys.argv[1], sys.argv[2:]
if not wheels or not os.path.exists(wheels[0]):
    sys.exit('no wheels in .whl/gpu: run tools/gpu/make_wheels.sh and carry .whl')
os.makedirs(site, exist_ok=True)
for whl in wheels:
    name = os.path.basename(whl).split('-')[0]
    try:
        print(f'{name}: system {md.version(name)}')
    except md.PackageNotFoundError:
        zipfile.ZipFile(whl).extractall(site)
        print(f'{name}: from {os.path.basename(whl)}')
PY
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null || true
exec "$PYTHON" "$ROOT/tools/gpu_check.py" --out "$OUT" "$@"
