#!/usr/bin/env bash
# Distributed training with torchrun (one process per GPU; gloo over CPU processes
# on a machine without CUDA).
#   bash tools/dist_train.sh CONFIG GPUS [train.py args...]
# GPUS is the number of processes on THIS machine (torchrun's --nproc_per_node).
# Environment: PYTHON (default python), NNODES (1), NODE_RANK (0),
# MASTER_ADDR (127.0.0.1), PORT (29500).
# Several machines: run it on each, same NNODES / MASTER_ADDR (the rank-0 machine's
# address, reachable from the others) / PORT, NODE_RANK 0..NNODES-1, e.g. 2 x 8 GPUs:
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 PORT=29500 bash tools/dist_train.sh CONFIG 8
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 PORT=29500 bash tools/dist_train.sh CONFIG 8
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG GPUS [train.py args...]" >&2
  exit 2
fi
CONFIG=$1
GPUS=$2
shift 2
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python}" -m torch.distributed.run \
  --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}" \
  --master_port="${PORT:-29500}" --nproc_per_node="$GPUS" \
  "$ROOT/tools/train.py" "$CONFIG" --launcher pytorch "$@"
