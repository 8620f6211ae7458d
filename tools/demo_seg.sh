#!/usr/bin/env bash
# Segmentation demo on CPU (a few minutes): generated ADE20K-format toy data, a small
# VMamba + UperNet trained from scratch, single-scale and multi-scale (--tta) mIoU,
# and a picture (image | ground truth | prediction).
#
#   bash tools/demo_seg.sh            # outputs under work_dirs/upernet_vmamba_toy/
#   WORK_DIR=work_dirs/seg2 SEED=3 bash tools/demo_seg.sh   # elsewhere, another seed (config: 0)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash tools/setup_env.sh
PY="$ROOT/.venv/bin/python"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
CFG=configs/demo/upernet_vmamba_toy.py
WORK=${WORK_DIR:-work_dirs/upernet_vmamba_toy}
DATA=data/toy_ade

if [ ! -d "$DATA/images/training" ]; then
  "$PY" tools/data/make_toy_ade20k.py --out "$DATA" --num-train 40 --num-val 10 --seed 0
fi
SEED_ARGS=()
if [ -n "${SEED:-}" ]; then SEED_ARGS=(--cfg-options "randomness.seed=$SEED"); fi
"$PY" tools/train.py "$CFG" --work-dir "$WORK" "${SEED_ARGS[@]}"
CKPT=$(cat "$WORK/last_checkpoint")
echo "[demo] single-scale evaluation"
"$PY" tools/test.py "$CFG" "$CKPT" --work-dir "$WORK/test_single_scale"
echo "[demo] multi-scale + flip evaluation (--tta)"
"$PY" tools/test.py "$CFG" "$CKPT" --tta --work-dir "$WORK/test_tta"
"$PY" tools/visualize_seg.py "$CFG" "$CKPT" --out "$WORK/toy_predictions.png" --num 4
echo "[demo] done: logs and metrics in $WORK/test_single_scale and $WORK/test_tta," \
  "picture $WORK/toy_predictions.png"
