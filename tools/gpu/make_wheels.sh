#!/usr/bin/env bash
# Download the wheels the GPU machine needs (mmengine at the pin of requirements.txt,
# and what it imports: tools/gpu/requirements.txt) for its Python (CPython 3.12,
# x86-64 Linux by default) into OUTDIR (default .whl/gpu, git-ignored; the device
# tool carries it with carry=[".whl"]).
#
#   bash tools/gpu/make_wheels.sh [OUTDIR]              # for the GPU machine
#   PYVER=3.11 bash tools/gpu/make_wheels.sh /tmp/w311  # for a local dry run
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${1:-$ROOT/.whl/gpu}"
PYVER="${PYVER:-3.12}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
MMENGINE="$(grep -E '^mmengine==' "$ROOT/requirements.txt")"
mkdir -p "$OUT"
"$PYTHON" -m pip --isolated download --no-deps --only-binary=:all: \
    --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 \
    "$MMENGINE" -r "$ROOT/tools/gpu/requirements.txt" -d "$OUT"
du -sh "$OUT"
ls "$OUT"
