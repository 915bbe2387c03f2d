#!/usr/bin/env bash
# Fresh machine -> installed, tiny models written, bundled samples edited.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
source scripts/env.sh
.venv/bin/lcd demo
