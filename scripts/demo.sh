#!/usr/bin/env bash
# One command, fresh machine -> the embedded default, end to end:
#   install; Prefect server on 127.0.0.1 (own SQLite under .prefect/); a process worker on the
#   `gpu` pool; deploy prefect.yaml; run the pipeline on the bundled samples with the tiny models;
#   print the UI address and where the outputs are. Server and worker keep running afterwards so
#   `prefect deployment run edit-batch/default -p ...` works; `scripts/demo.sh stop` stops them.
# LCD_PYTHON=/path/to/python uses an existing environment instead of installing .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PORT=${LCD_PREFECT_PORT:-4200}
export PREFECT_HOME=$ROOT/.prefect
mkdir -p "$PREFECT_HOME"

stop() {  # worker before server (a worker whose server vanished may hang)
  for name in worker server; do
    f=$PREFECT_HOME/$name.pid
    if [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then
      kill -INT "$(cat "$f")"
      for _ in $(seq 40); do kill -0 "$(cat "$f")" 2>/dev/null || break; sleep 0.5; done
      kill -0 "$(cat "$f")" 2>/dev/null && kill -KILL "$(cat "$f")"
    fi
    rm -f "$f"
  done
}
if [ "${1:-}" = stop ]; then stop; echo "stopped"; exit 0; fi

# 1. install (once; re-runs are instant)
if [ -z "${LCD_PYTHON:-}" ]; then bash scripts/install.sh; PY=$ROOT/.venv/bin/python; else PY=$LCD_PYTHON; fi
source scripts/env.sh
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
BIN=$(dirname "$PY")
export PATH=$BIN:$PATH
PREFECT="$PY -m prefect"

# 2. tiny models and the DVC-tracked data/ (same bytes as data.dvc; cached locally for dvc)
{ [ -f models/tiny/sd/model_index.json ] && [ -d models/tiny/dino ] && [ -d models/tiny/open_clip ]; } ||
  "$PY" -m lcd models tiny models/tiny >/dev/null
"$PY" -m lcd data init
"$PY" -m dvc commit -q --force data.dvc 2>/dev/null || echo "note: dvc commit skipped (not a git checkout?)"

# 3. Prefect server on loopback, its own SQLite in .prefect/
$PREFECT config set PREFECT_API_URL="http://127.0.0.1:$PORT/api" PREFECT_SERVER_ANALYTICS_ENABLED=false >/dev/null
if ! curl -sf "http://127.0.0.1:$PORT/api/health" >/dev/null 2>&1; then
  nohup $PREFECT server start --host 127.0.0.1 --port "$PORT" >"$PREFECT_HOME/server.log" 2>&1 &
  echo $! >"$PREFECT_HOME/server.pid"
  for _ in $(seq 240); do curl -sf "http://127.0.0.1:$PORT/api/health" >/dev/null 2>&1 && break; sleep 0.5; done
  curl -sf "http://127.0.0.1:$PORT/api/health" >/dev/null || { tail -30 "$PREFECT_HOME/server.log"; exit 1; }
fi

# 4. the `gpu` pool, one worker, the deployments of prefect.yaml
$PREFECT work-pool inspect gpu >/dev/null 2>&1 || $PREFECT work-pool create gpu --type process >/dev/null
if ! { [ -f "$PREFECT_HOME/worker.pid" ] && kill -0 "$(cat "$PREFECT_HOME/worker.pid")" 2>/dev/null; }; then
  PREFECT_WORKER_QUERY_SECONDS=${PREFECT_WORKER_QUERY_SECONDS:-2} \
    nohup $PREFECT worker start --pool gpu --type process >"$PREFECT_HOME/worker.log" 2>&1 &
  echo $! >"$PREFECT_HOME/worker.pid"
fi
$PREFECT --no-prompt deploy --all >"$PREFECT_HOME/deploy.log" 2>&1 || { tail -30 "$PREFECT_HOME/deploy.log"; exit 1; }

# 5. the pipeline on the bundled samples with params.yaml (tiny models, few steps;
#    LCD_DEMO_PARAMS=params.sd15.yaml for the paper's settings on real weights). regset reads the bundled LAION-style
#    shard (data/laion-meta, dead links on purpose) and generates its shortfall with the base model.
PARAMS=${LCD_DEMO_PARAMS:-params.yaml}
STAGES=${LCD_DEMO_STAGES:-'["regset", "train", "masks", "edit", "evaluate"]'}
$PREFECT deployment run lcd-pipeline/default -p "params_path=$PARAMS" -p "stages=$STAGES" \
  --watch --watch-interval 2

echo
echo "Prefect UI:   http://127.0.0.1:$PORT   (server + worker keep running; 'scripts/demo.sh stop' stops them)"
echo "Outputs:      $ROOT/outputs   (concepts/, edit/edits/, edit/results.parquet + failures.parquet, edit/contact_sheet.png, evaluate/ with metrics.json + report.html; no tracked file changes)"
echo "Next:         export PREFECT_HOME=$PREFECT_HOME; prefect deployment run edit-batch/default -p manifest=data/manifests/edits.jsonl -p out_root=outputs/edit-2 -p params_path=$PARAMS --watch"
