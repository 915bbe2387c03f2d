"""edit-batch at scale through the real stack: PostgreSQL, a Prefect server on it, N process workers.

What runs: `pg_ctl` starts PostgreSQL 15 on a temporary data directory (as the `postgres` user
when run as root: initdb refuses root), `prefect server start` runs on it
(PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://...), the `gpu` process pool is created
and prefect.yaml deployed, and N `prefect worker start --pool gpu` processes serve the shard runs.
The coordinator (edit_batch, fan_out="deployment") runs in this process. The engine is the noop
engine with a stand-in GPU: it sleeps `--batch-s` per batch of `--batch-size`, so the time a GPU
would take is known exactly and everything else is orchestration.

Measured:
- cost per item vs job size (`--items`, shards = items / --items-per-shard, `--workers-orch`
  workers): orchestration ms per item = (wall - simulated GPU time / workers) / items, first run
  and resume (every item current, so all skipped);
- throughput with 1, 2, 4, 8 workers, each run a job of N x `--shards-per-worker` shards of
  `--shard-items` items (weak scaling: every worker has the same work as the one worker had):
  efficiency_N = throughput_N / (N x throughput_1). The stand-in GPU takes `--batch-s` per batch
  of `--batch-size` (default 25.6 s per 64: 0.4 s an edit, issue 14's target on one GPU), so a
  shard of 640 items is 256 s of GPU, still a tenth of a default 5,000-item shard. What does not
  scale on this machine is the CPU: N workers' shard processes share its 2 cores, where on N GPU
  machines each has its own;
- `--s3`: the largest job again with out_root on moto's S3 server on 127.0.0.1: every item's
  output object present once, results rows unique.

Prints one JSON object per measurement; the last line is the summary with `items`, `workers`,
`ms_per_item`, `ms_per_item_resume`, `scaling_efficiency`, `storage`.

    python bench/scale.py [--items 10000,100000] [--items-per-shard 5000] [--workers 1,2,4,8] [--s3]
                          [--shard-items 640] [--shards-per-worker 1] [--batch-s 25.6]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PREFECT = [sys.executable, "-m", "prefect"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_postgres(root: Path) -> tuple[str, callable]:
    """initdb + pg_ctl start on a temporary data dir; -> (SQLAlchemy URL of database `prefect`, stop)."""
    data, port = root / "pgdata", free_port()
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root.mkdir(parents=True, exist_ok=True)
    if as_pg:
        shutil.chown(root, "postgres")
    subprocess.run([*as_pg, "initdb", "-D", str(data), "-A", "trust", "-U", "postgres"], check=True, capture_output=True)
    subprocess.run([*as_pg, "pg_ctl", "-D", str(data), "-l", str(root / "pg.log"), "-w", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=300", "start"],
                   check=True, capture_output=True)
    subprocess.run([*as_pg, "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "prefect"], check=True)

    def stop() -> None:
        subprocess.run([*as_pg, "pg_ctl", "-D", str(data), "-m", "fast", "stop"], capture_output=True)
    return f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect", stop


def start_prefect(home: Path, db_url: str) -> tuple[dict, subprocess.Popen]:
    """A Prefect server on PostgreSQL at 127.0.0.1, the `gpu` pool, prefect.yaml deployed; -> (env, server)."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_WORKER_PREFETCH_SECONDS": "1", "PREFECT_LOGGING_LEVEL": "WARNING",
           "PREFECT_API_DATABASE_CONNECTION_URL": db_url}
    home.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env={k: v for k, v in env.items() if k != "PREFECT_API_URL"}, cwd=home,
                              stdout=open(home / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError((home / "server.log").read_text()[-3000:])
            time.sleep(0.5)
    for args in (["work-pool", "create", "gpu", "--type", "process"], ["--no-prompt", "deploy", "--all"]):
        subprocess.run([*PREFECT, *args], env=env, cwd=REPO, check=True, capture_output=True)
    return env, server


def stop(proc: subprocess.Popen, sig=signal.SIGINT, timeout: float = 30) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


class Workers:
    """N process workers on `gpu`, one flow run at a time each (`--limit 1`: one GPU per worker),
    each in its own session (so one signal stops it and its runs)."""

    def __init__(self, env: dict, n: int, logs: Path):
        logs.mkdir(parents=True, exist_ok=True)
        self.procs = [subprocess.Popen([*PREFECT, "worker", "start", "--pool", "gpu", "--type", "process",
                                        "--name", f"bench-{k}", "--limit", "1"], env=env, cwd=REPO,
                                       stdout=open(logs / f"worker-{k}.log", "a"), stderr=subprocess.STDOUT,
                                       start_new_session=True) for k in range(n)]
        time.sleep(3)  # workers register and start polling before the clock starts

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            stop(p)


def run_job(manifest: Path, out_root: str, params: Path, shards: int, batch_s: float) -> tuple[float, dict]:
    """One coordinator run (this process) -> (wall seconds, counts)."""
    from flows.edit_batch import edit_batch

    t0 = time.perf_counter()
    counts = edit_batch(str(manifest), out_root, str(params), num_shards=shards, fan_out="deployment",
                        engine="noop", concepts_root=None, masks_store=None, standin_batch_s=batch_s,
                        contact_sheet_rows=4)
    return time.perf_counter() - t0, counts


def measure(label: str, root: Path, items: int, shards: int, workers: int, env: dict, a, batch_s: float,
            out_root: str | None = None) -> dict:
    """First run and resume of one job with `workers` workers; prints and returns the record."""
    from bench.orchestration import make_job

    job = root / f"job-{label}"
    job.mkdir(parents=True, exist_ok=True)
    manifest, params = make_job(job, items)
    params.write_text(yaml.safe_dump({"edit": {"size": 64, "batch_size": a.batch_size}}))
    out_root = out_root or str(job / "out")
    batches = sum(-(-(((s + 1) * items // shards) - (s * items // shards)) // a.batch_size) for s in range(shards))
    gpu_s = batches * batch_s / min(workers, shards)  # the stand-in GPU time, spread ideally over the workers
    with Workers(env, workers, root / "logs" / label):
        first_s, first = run_job(manifest, out_root, params, shards, batch_s)
        resume_s, resume = run_job(manifest, out_root, params, shards, batch_s)
    assert first["edited"] == items and resume["skipped"] == items, (first, resume)
    rec = {"label": label, "items": items, "shards": shards, "workers": workers, "wall_s": round(first_s, 2),
           "simulated_gpu_s": round(gpu_s, 2), "resume_wall_s": round(resume_s, 2),
           "ms_per_item": round((first_s - gpu_s) * 1000 / items, 3),
           "ms_per_item_resume": round(resume_s * 1000 / items, 3),
           "items_per_s": round(items / first_s, 1)}
    print(json.dumps(rec), flush=True)
    return rec


def s3_server(env: dict) -> tuple[str, object]:
    """moto's S3 server on 127.0.0.1 and a bucket; credentials/endpoint only in the environment."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request otherwise

    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    srv.start()
    host, port = srv.get_host_and_port()
    creds = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
             "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    env.update(creds)
    os.environ.update(creds)
    import fsspec

    fsspec.filesystem("s3", skip_instance_cache=True).mkdir("lcd-bench")
    return "s3://lcd-bench/run", srv


SHARD_CODE = """
import json, sys, time
t = time.perf_counter()
from lcd.io.cache import STATS
from tasks.edit import edit_shard
c = edit_shard.fn(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], None, "diffusion",
                  sys.argv[6], None)
print("SHARD", json.dumps({**c, **STATS, "seconds": round(time.perf_counter() - t, 2)}))
"""


def cache_hits(root: Path, shards: int, items: int) -> dict:
    """A worker's shards, each in a fresh process as a process worker runs them, sharing the
    machine's LCD_CACHE: the tiny SD and a concept only in the bucket (moto on 127.0.0.1), inputs
    there too, the diffusion engine. -> per shard: objects fetched, bytes, cache hits, seconds."""
    import fsspec
    import torch

    from lcd.concepts.io import Concept, save_concept
    from lcd.models.tiny import write_tiny_models
    from tasks.edit import plan_manifest

    url, srv = s3_server({})
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    write_tiny_models(root / "tiny")
    fs.put(str(root / "tiny" / "sd") + "/", "lcd-bench/models/sd/", recursive=True)
    save_concept(Concept(["[P]"], torch.zeros(1, 32), "kv", {}), root / "dog")
    fs.put(str(root / "dog") + "/", "lcd-bench/concepts/dog/", recursive=True)
    for name in ("scenes/cat_00.jpg", "masks/cat_00.png"):
        fs.put_file(str(REPO / "samples" / name), f"lcd-bench/in/{name}")
    lines = [{"id": f"i{k:04d}", "image": "scenes/cat_00.jpg", "mask": "masks/cat_00.png", "concept": "dog",
              "prompt": "a photo of [P] dog", "seed": k} for k in range(items)]
    fs.pipe_file("lcd-bench/in/m.json", json.dumps(lines).encode())
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"models": {"sd": "s3://lcd-bench/models/sd"},
                                      "edit": {"steps": 2, "size": 64, "batch_size": 4}}))
    manifest, out = "s3://lcd-bench/in/m.json", f"{url}/cache"
    plan_manifest.fn(manifest, out, shards)
    env = {**os.environ, "LCD_CACHE": str(root / "lcd-cache"), "PYTHONPATH": str(REPO)}
    runs = []
    try:
        for i in range(shards):
            p = subprocess.run([sys.executable, "-c", SHARD_CODE, manifest, out, str(i), str(shards), str(params),
                                "s3://lcd-bench/concepts"], env=env, capture_output=True, text=True, timeout=600)
            assert p.returncode == 0, p.stderr[-3000:]
            runs.append(json.loads(p.stdout.rsplit("SHARD ", 1)[1].splitlines()[0]))
            print(json.dumps({"cache_shard": i, **runs[-1]}), flush=True)
    finally:
        srv.stop()
    return {"fetch_cache": {"shards": shards, "items_per_shard": items // shards,
                            "first": {k: runs[0].get(k, 0) for k in ("fetched", "bytes", "hits", "seconds")},
                            "later": [{k: r.get(k, 0) for k in ("fetched", "bytes", "hits", "seconds")} for r in runs[1:]]}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", default="10000,100000", help="job sizes for cost per item")
    ap.add_argument("--items-per-shard", type=int, default=5000)
    ap.add_argument("--workers-orch", type=int, default=4, help="workers for the cost-per-item runs")
    ap.add_argument("--workers", default="1,2,4,8", help="worker counts for the scaling runs")
    ap.add_argument("--shard-items", type=int, default=640, help="items per shard, scaling runs")
    ap.add_argument("--shards-per-worker", type=int, default=1, help="scaling run of N workers: N x this many shards")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batch-s", type=float, default=25.6, help="stand-in GPU seconds per batch, scaling runs")
    ap.add_argument("--orch-batch-s", type=float, default=0.1, help="stand-in GPU seconds per batch, cost-per-item runs")
    ap.add_argument("--s3", action="store_true", help="also run a job with out_root on S3 (moto, in this process)")
    ap.add_argument("--s3-items", type=int, default=0, help="items of the S3 job (default: the largest --items)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (outputs, logs) at the end")
    ap.add_argument("--cache", type=int, default=0, metavar="SHARDS",
                    help="only measure the fetch cache: SHARDS shards on one worker, weights and a concept in the bucket")
    a = ap.parse_args()
    if a.cache:
        root = Path(tempfile.mkdtemp(prefix="lcd-bench-cache-"))
        try:
            print(json.dumps(cache_hits(root, a.cache, 4 * a.cache)), flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed bench still stops its server and database
    root = Path(tempfile.mkdtemp(prefix="lcd-bench-scale-"))
    os.chmod(root, 0o755)
    db_url, pg_stop = start_postgres(root / "pg")
    env, server = start_prefect(root / "prefect-home", db_url)
    os.environ.update({k: env[k] for k in ("PREFECT_HOME", "PREFECT_API_URL", "PREFECT_LOGGING_LEVEL",
                                           "PREFECT_SERVER_ANALYTICS_ENABLED")})
    try:
        sizes = [int(x) for x in a.items.split(",")]
        orch = [measure(f"orch-{n}", root, n, max(1, n // a.items_per_shard), a.workers_orch, env, a, a.orch_batch_s)
                for n in sizes]
        k = a.shards_per_worker
        scaling = [measure(f"scale-{w}", root, w * k * a.shard_items, w * k, w, env, a, a.batch_s)
                   for w in (int(x) for x in a.workers.split(",") if x)]  # --workers "": no scaling runs
        # from items / wall (items_per_s is rounded to 0.1: at 2.5 items/s that alone moved 8 workers' 0.951 to 0.935)
        one = scaling[0]["items"] / scaling[0]["wall_s"] / scaling[0]["workers"] if scaling else 0
        eff = {str(r["workers"]): round(r["items"] / r["wall_s"] / (r["workers"] * one), 3) for r in scaling}
        storage = "local"
        if a.s3:
            url, srv = s3_server(env)
            n = a.s3_items or sizes[-1]
            rec = measure(f"s3-{n}", root, n, max(1, n // a.items_per_shard), a.workers_orch, env, a, a.orch_batch_s,
                          out_root=url)
            import fsspec

            keys = fsspec.filesystem("s3", skip_instance_cache=True).find("lcd-bench/run/edits")
            rec["objects"], rec["unique_ids"] = len(keys), len({k.rsplit("/", 1)[-1] for k in keys})
            print(json.dumps({"s3_check": rec}), flush=True)
            assert rec["objects"] == rec["unique_ids"] == n, rec
            storage = "local+s3"
            srv.stop()
        big, small = orch[-1], orch[0]
        print(json.dumps({
            "items": big["items"], "workers": a.workers_orch, "shards": big["shards"],
            "ms_per_item": big["ms_per_item"], "ms_per_item_resume": big["ms_per_item_resume"],
            "ms_per_item_ratio_largest_to_smallest": round(big["ms_per_item"] / small["ms_per_item"], 3),
            "scaling_efficiency": eff, "scaling_shard_items": a.shard_items, "scaling_shards_per_worker": k,
            "standin_batch_s": a.batch_s, "orch_standin_batch_s": a.orch_batch_s, "batch_size": a.batch_size, "storage": storage,
            "database": "postgresql", "by_size": {str(r["items"]): r["ms_per_item"] for r in orch},
        }), flush=True)
    finally:
        stop(server)
        pg_stop()
        if a.keep:
            print(f"kept {root}", file=sys.stderr)
        else:  # a 1M-item job leaves ~20 GB of outputs
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
