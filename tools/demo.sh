#!/usr/bin/env bash
# README command 1: Mask R-CNN with a small VMamba backbone, end to end on CPU.
#   1. set up (or reuse) the environment (.venv, tools/setup_env.sh)
#   2. generate the toy COCO dataset (data/toy_coco) if it is missing
#   3. train configs/demo/mask_rcnn_vmamba_toy.py (a few minutes on 2 CPU cores)
#   4. evaluate the last checkpoint (COCO bbox + segm mAP) and draw the predictions
# Everything goes to work_dirs/demo/ (override with WORK_DIR=...). The config fixes seed 0;
# SEED=N trains with another seed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CONFIG=configs/demo/mask_rcnn_vmamba_toy.py
DATA=data/toy_coco
WORK=${WORK_DIR:-work_dirs/demo}
SEED_ARGS=()
if [ -n "${SEED:-}" ]; then SEED_ARGS=(--cfg-options "randomness.seed=$SEED"); fi

bash tools/setup_env.sh
PY="$ROOT/.venv/bin/python"

if [ ! -f "$DATA/annotations/instances_val2017.json" ]; then
  echo "[demo] generating the toy COCO dataset in $DATA"
  "$PY" tools/data/make_toy_coco.py --out "$DATA" --num-train 48 --num-val 16 --seed 0
fi

echo "[demo] training $CONFIG -> $WORK"
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK" "${SEED_ARGS[@]}"
CKPT=$(cat "$WORK/last_checkpoint")

echo "[demo] evaluating $CKPT"
rm -rf "$WORK/vis"
"$PY" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK" --show-dir "$ROOT/$WORK/vis" \
  --out "$WORK/predictions.pkl" 2>&1 | tee "$WORK/test.log"

# One picture: the first 8 validation images, ground truth (left) | prediction (right).
"$PY" - "$WORK" <<'PYEOF'
import glob, os.path as osp, sys
import cv2, numpy as np
work = sys.argv[1]
files = sorted(glob.glob(osp.join(work, 'vis', '**', '*.jpg'), recursive=True))[:8]
if not files:
    sys.exit(f'no pictures were written under {work}/vis')
tiles = [cv2.imread(f) for f in files]
h = max(t.shape[0] for t in tiles)
w = max(t.shape[1] for t in tiles)
tiles = [cv2.copyMakeBorder(t, 0, h - t.shape[0] + 12, 0, w - t.shape[1] + 12,
                            cv2.BORDER_CONSTANT, value=(255, 255, 255)) for t in tiles]
tiles += [np.full_like(tiles[0], 255)] * (-len(tiles) % 2)
rows = [np.concatenate(tiles[i:i + 2], 1) for i in range(0, len(tiles), 2)]
cv2.imwrite(osp.join(work, 'predictions.png'), np.concatenate(rows, 0))
PYEOF

echo
echo "[demo] done."
echo "  metrics:     $(grep -h 'coco/bbox_mAP' "$WORK/test.log" | tail -1 | sed 's/.*coco\/bbox_mAP:/coco\/bbox_mAP:/')"
echo "  metrics log: $(ls -t "$WORK"/*/*.json 2>/dev/null | head -1)"
echo "  checkpoint:  $CKPT"
echo "  predictions: $WORK/predictions.pkl"
echo "  picture:     $WORK/predictions.png (ground truth | prediction; all in $WORK/vis/)"
