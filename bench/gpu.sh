#!/usr/bin/env bash
# Issue 14's GPU benchmark (bench/gpu.py); `bash bench/gpu.sh --smoke` checks it on CPU in seconds.
# The last line printed is one JSON object.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -f scripts/env.sh ]; then
  source scripts/env.sh
fi
if [ -x .venv/bin/python ]; then
  exec .venv/bin/python bench/gpu.py "$@"
fi
exec python3 bench/gpu.py "$@"
