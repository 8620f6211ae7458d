#!/usr/bin/env bash
# README command 2: set up (or reuse) the environment, then run the test suite.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash tools/setup_env.sh
exec .venv/bin/python -m pytest "$@"
