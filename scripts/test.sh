#!/usr/bin/env bash
# Install (once) and run the whole test suite. `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
source scripts/env.sh
exec .venv/bin/python -m pytest -q "$@"
