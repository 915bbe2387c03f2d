#!/usr/bin/env bash
# Install (once) and run the whole test suite. `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
source scripts/env.sh
# two workers, a test file per worker at a time (a file's tests share their servers): the slow
# tests wait on servers and subprocesses, so two of them overlap well on 2 cores (789 s against
# about 950 s serial). LCD_TEST_WORKERS=0 runs serially.
exec .venv/bin/python -m pytest -q -n "${LCD_TEST_WORKERS:-2}" --dist loadfile "$@"
