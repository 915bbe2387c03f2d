"""Machines that share nothing but a bucket and the Prefect API (issue 30), on one box.

Two GPU "machines" and a coordinator, each in its own mount namespace (`unshare --mount`): a
private tmpfs lies over the other machines' folders and over pytest's temp root (the tiny models,
the server's home), so a path that leaks from one machine to another is not there and fails.
Each machine has its own copy of the project at a different path (LCD_PROJECT_DIR, the prefect.yaml
pull step), its own HOME, TMPDIR and fetch cache (LCD_CACHE); the virtualenv is shared read-only
(the package installed). The manifest, images, masks and model weights live only in the bucket
(moto's S3 server on 127.0.0.1); the Prefect server is the session's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.flows.conftest import REPO, SAMPLES, kill_tree
from tests.flows.test_edit_batch_deployment import _api, _flow_run_of

pytestmark = [pytest.mark.server, pytest.mark.slow]
BUCKET = "lcd-share"
PARAMS = "params.bucket.yaml"  # the same file in every machine's copy of the project
HIDE = 'for d in $LCD_TEST_HIDE; do mount -t tmpfs -o size=1m lcd-hidden "$d"; done; exec "$@"'


def _copy_project(dst: Path) -> None:
    """What a clone of this checkout holds (tracked and new, not ignored, files), no git metadata."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        if (REPO / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dst / rel)


class Machine:
    """One machine: a folder holding its project copy (at `project`), HOME, TMPDIR and cache;
    processes started in a mount namespace where every folder in `hide` is an empty tmpfs."""

    def __init__(self, root: Path, project: str, base_env: dict[str, str], hide: list[Path]):
        self.root, self.project = root, root / project
        self.home, self.cache, self.tmp = root / "home", root / "cache", root / "tmp"
        for d in (self.home, self.cache, self.tmp):
            d.mkdir(parents=True)
        self.hide = hide
        self.env = {**base_env, "HOME": str(self.home), "PREFECT_HOME": str(self.home / ".prefect"),
                    "LCD_CACHE": str(self.cache), "TMPDIR": str(self.tmp), "LCD_PROJECT_DIR": str(self.project),
                    "LCD_TEST_HIDE": " ".join(map(str, hide))}

    def popen(self, argv: list[str], log: Path, **kw) -> subprocess.Popen:
        return subprocess.Popen(["unshare", "--mount", "--", "bash", "-c", HIDE, "hide", *argv], env=self.env,
                                cwd=self.project, stdout=open(log, "a"), stderr=subprocess.STDOUT,
                                start_new_session=True, **kw)

    def run(self, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["unshare", "--mount", "--", "bash", "-c", HIDE, "hide", *argv], env=self.env,
                              cwd=self.project, capture_output=True, text=True, timeout=timeout)

    def worker(self, name: str) -> subprocess.Popen:
        return self.popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "gpu", "--type", "process",
                           "--name", name, "--limit", "1"], self.root / f"{name}.log")


@pytest.fixture
def bucket(monkeypatch):
    """moto's S3 server on 127.0.0.1 with BUCKET; -> (s3fs filesystem, AWS_* environment)."""
    import fsspec
    from moto.server import ThreadedMotoServer

    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    srv.start()
    host, port = srv.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    for k, v in env.items():  # this process (the test's own look at the bucket) too
        monkeypatch.setenv(k, v)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.makedirs(BUCKET, exist_ok=True)
    yield fs, env
    fsspec.filesystem("s3").clear_instance_cache()
    srv.stop()


@pytest.fixture
def world(prefect_server, bucket, tiny_dir, tmp_path_factory):
    """Bucket filled (tiny SD, scenes, masks, a Parquet manifest of 24 items), two machines and a
    coordinator under one fresh folder outside pytest's temp root."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lcd.config import ModelsConfig
    from lcd.jobs.masking import precompute_masks
    from lcd.masks.config import MasksConfig

    fs, aws = bucket
    fs.put(str(tiny_dir / "sd") + "/", f"{BUCKET}/models/sd/", recursive=True)
    scenes = ["cat_00", "backpack_00", "teapot_00"]
    for s in scenes:
        fs.put_file(str(SAMPLES / "scenes" / f"{s}.jpg"), f"{BUCKET}/in/scenes/{s}.jpg")
        fs.put_file(str(SAMPLES / "masks" / f"{s}.png"), f"{BUCKET}/in/masks/{s}.png")
    for p in sorted((SAMPLES / "concepts" / "dog").iterdir())[:3]:
        fs.put_file(str(p), f"{BUCKET}/photos/dog/{p.name}")
    # the masks stage's store (tiny SAM, computed here once), then only in the bucket
    work = tmp_path_factory.mktemp("share-inputs")
    cfg = MasksConfig.model_validate({"auto": {"points_per_side": 2, "pred_iou_thresh": 0.0,
                                               "stability_score_thresh": 0.0}})
    precompute_masks([SAMPLES / "scenes" / f"{s}.jpg" for s in scenes], work / "masks", cfg,
                     ModelsConfig(sam=str(tiny_dir / "sam" / "sam_vit_tiny.pth"), sam_type="vit_tiny"))
    fs.put(str(work / "masks") + "/", f"{BUCKET}/masks/", recursive=True)
    rows = [{"id": f"item{i:03d}", "image": f"scenes/{scenes[i % 3]}.jpg", "prompt": "a photo of a dog", "seed": i}
            | ({"select": "sam:largest", "mask": None} if i % 4 == 3 else {"select": None, "mask": f"masks/{scenes[i % 3]}.png"})
            for i in range(24)]  # every key in every row: from_pylist takes the columns of the first
    rows2 = [{"id": f"dog{i}", "image": f"scenes/{scenes[i % 3]}.jpg", "mask": f"masks/{scenes[i % 3]}.png",
              "concept": "dog", "prompt": "a photo of [P] dog", "seed": i} for i in range(3)]
    for name, r in (("edits", rows), ("dogs", rows2)):
        pq.write_table(pa.Table.from_pylist(r), work / f"{name}.parquet")
        fs.put_file(str(work / f"{name}.parquet"), f"{BUCKET}/in/{name}.parquet")
    top = Path(tempfile.mkdtemp(prefix="lcd-share-"))
    roots = {n: top / n for n in ("machine-a", "machine-b", "coordinator")}
    for r in roots.values():
        r.mkdir()
    base = {k: v for k, v in prefect_server.env.items() if not k.startswith(("PREFECT_HOME", "PYTHONPATH"))}
    base.update(aws)
    hidden = [tmp_path_factory.getbasetemp()]  # tiny models, the server's home, every test's tmp_path
    projects = {"machine-a": "srv/lcdiffusion", "machine-b": "home/ops/work/lcd", "coordinator": "opt/lcd-coord"}
    machines = {n: Machine(r, projects[n], base, hidden + [o for m, o in roots.items() if m != n])
                for n, r in roots.items()}
    params = yaml.safe_load((REPO / "params.yaml").read_text())  # the tiny-model defaults
    params["models"] = {"sd": f"s3://{BUCKET}/models/sd"}  # weights only in the bucket
    params["edit"].update(steps=8, size=64, batch_size=1)
    params["train"].update(steps=2)
    for m in machines.values():
        _copy_project(m.project)
        (m.project / PARAMS).write_text(yaml.safe_dump(params))
    try:
        yield fs, machines, top
    finally:
        shutil.rmtree(top, ignore_errors=True)


COORDINATE = ("import sys, json; from flows.edit_batch import edit_batch; "
              "r = edit_batch(sys.argv[1], sys.argv[2], sys.argv[3], num_shards=int(sys.argv[4]), shard_heartbeat_s=30, "
              f"shard_silent_after_s=45, concepts_root='s3://{BUCKET}/concepts', masks_store='s3://{BUCKET}/masks'); "
              "print('RESULT', json.dumps(r if isinstance(r, dict) else str(r)))")


def _outputs(fs, out: str) -> dict[str, str]:
    """{item id: ETag} of the edits in the bucket."""
    fs.invalidate_cache()
    try:
        listing = fs.ls(f"{out}/edits", detail=True, refresh=True)
    except FileNotFoundError:
        return {}
    return {Path(e["name"]).stem: e["ETag"] for e in listing if e["name"].endswith(".png")}


def test_two_machines_share_only_the_bucket_and_the_api(prefect_server, world):
    fs, machines, top = world
    a, b, coord = machines["machine-a"], machines["machine-b"], machines["coordinator"]
    # 1. the namespaces hold: each machine sees its own folder, nothing of the others or of pytest's temp root
    probe = a.run(["bash", "-c", f"ls -A {b.root} {coord.root}; ls -A {b.hide[0]}; ls {a.project / PARAMS}"])
    assert probe.returncode == 0 and sorted(probe.stdout.split()) == sorted([f"{b.root}:", f"{coord.root}:",
                                                                             str(a.project / PARAMS)]), \
        probe.stdout + probe.stderr
    manifest, out = f"s3://{BUCKET}/in/edits.parquet", f"s3://{BUCKET}/runs/job-1"
    workers = {"machine-a": a.worker("worker-a"), "machine-b": b.worker("worker-b")}
    t0 = time.monotonic()
    coordinator = coord.popen([sys.executable, "-c", COORDINATE, manifest, out, PARAMS, "2"], coord.root / "coord-1.log")
    n = 24
    try:
        # 2. the machine whose shard has written 3 outputs dies mid-shard: worker and flow-run process
        victim = _kill_mid_shard(prefect_server, fs, out, workers, coordinator, n, coord.root / "coord-1.log")
        t_kill = time.monotonic() - t0
        first = {k: v for k, v in _outputs(fs, out).items() if k in victim["ids"]}
        assert 3 <= len(first) < len(victim["ids"]), f"the kill came too late ({len(first)} of {len(victim['ids'])})"
        assert coordinator.wait(timeout=900) == 0, (coord.root / "coord-1.log").read_text()[-4000:]
    finally:
        for p in workers.values():
            if p.poll() is None:
                prefect_server.stop_worker(p)
        if coordinator.poll() is None:
            kill_tree(coordinator)
        for f in sorted(top.glob("*/*.log")):  # kept beside pytest's report when something fails
            shutil.copy(f, Path(os.environ.get("LCD_TEST_LOGS", tempfile.gettempdir())) / f"share-nothing-{f.name}")
    print(f"job 1 done at {time.monotonic() - t0:.1f} s (kill at {t_kill:.1f} s)")
    log = (coord.root / "coord-1.log").read_text()
    assert "starting it again (try 2 of 3)" in log, log[-3000:]
    result = json.loads(log.rsplit("RESULT ", 1)[1].splitlines()[0])
    assert (result["edited"] + result["skipped"], result["failed"]) == (n, 0), result
    # 3. every item once, the dead machine's finished outputs kept as they were
    import pyarrow.parquet as pq

    fs.invalidate_cache()
    with fs.open(f"{out}/results.parquet") as f:
        rows = pq.read_table(f).to_pylist()
    assert sorted(r["id"] for r in rows) == [f"item{i:03d}" for i in range(n)]
    assert {r["id"] for r in rows if r["status"] == "skipped"} >= set(first)
    assert all(_outputs(fs, out)[k] == v for k, v in first.items())
    assert all(r["output"].startswith(f"s3://{BUCKET}/") and r["image"].startswith(f"s3://{BUCKET}/") for r in rows)
    _assert_no_local_paths(prefect_server, fs, out, top)
    # 4. a resume from the coordinator's folder: every shard current from the bucket alone, no shard run
    since = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - 1))
    again = coord.run([sys.executable, "-c", COORDINATE, manifest, out, PARAMS, "2"], timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert json.loads(again.stdout.rsplit("RESULT ", 1)[1].splitlines()[0])["skipped"] == n
    names = [r["name"] for r in _api(prefect_server, "flow_runs/filter", {"flow_runs": {"start_time": {"after_": since}}})]
    assert not [x for x in names if x.startswith("shard-")], names
    print(f"resume done at {time.monotonic() - t0:.1f} s")
    # 5. the survivor's second shard (the dead machine's, started again) fetched nothing: weights cached
    survivor = machines["machine-b" if victim["machine"] == "machine-a" else "machine-a"]
    fetches = re.findall(r"fetch cache (\d+) objects fetched", _logs(survivor))
    assert len(fetches) == 2 and int(fetches[0]) > 0 and fetches[1] == "0", fetches
    # 6. nightly on the machine that died (its worker back), training into the bucket; then the
    #    other machine's edit-batch run uses that concept
    _nightly_then_edit_elsewhere(prefect_server, fs, machines[victim["machine"]], survivor, coord, top)
    print(f"nightly + concept job done at {time.monotonic() - t0:.1f} s")


def _logs(m: Machine) -> str:
    return "\n".join(f.read_text() for f in sorted(m.root.glob("*.log")))


def _nightly_then_edit_elsewhere(pe, fs, trainer: Machine, editor: Machine, coord: Machine, top: Path) -> None:
    import pyarrow.parquet as pq

    w = trainer.worker("worker-nightly")
    try:
        res = pe.cli("deployment", "run", "nightly-concepts/nightly", "-p", f"concepts_root=s3://{BUCKET}/photos",
                     "-p", f"weights_root=s3://{BUCKET}/concepts", "-p", "regset_root=null", "-p", f"params_path={PARAMS}",
                     "--watch", "--watch-interval", "1", check=False, timeout=600)
    finally:
        pe.stop_worker(w)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:] + _logs(trainer)[-3000:]
    fs.invalidate_cache()
    assert fs.exists(f"{BUCKET}/concepts/dog/concept.safetensors") and fs.exists(f"{BUCKET}/concepts/dog/fingerprint.json")
    assert "nightly-concepts" in _logs(trainer)
    w = editor.worker("worker-edit")
    out = f"s3://{BUCKET}/runs/dogs"
    try:
        done = coord.run([sys.executable, "-c", COORDINATE, f"s3://{BUCKET}/in/dogs.parquet", out, PARAMS, "1"],
                         timeout=600)
    finally:
        pe.stop_worker(w)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + _logs(editor)[-3000:]
    assert json.loads(done.stdout.rsplit("RESULT ", 1)[1].splitlines()[0]) == {"edited": 3, "skipped": 0, "failed": 0}
    assert "shard-00000-of-00001" in _logs(editor)
    fs.invalidate_cache()
    with fs.open(f"{out}/results.parquet") as f:
        assert {r["concept"] for r in pq.read_table(f).to_pylist()} == {"dog"}
    with fs.open(f"{out}/tables/deps-00000-of-00001.parquet") as f:
        assert f"s3://{BUCKET}/concepts/dog" in pq.read_table(f).column("ref").to_pylist()  # the trained concept
    _assert_no_local_paths(pe, fs, out, top)


def _kill_mid_shard(pe, fs, out, workers, coordinator, n, log) -> dict:
    """Wait until a worker's shard has written 3 of its outputs, then SIGKILL that worker with its
    flow-run process (the machine dies); -> {"machine", "ids" of its shard, "run"}."""
    deadline = time.time() + 240
    while True:
        assert time.time() < deadline and coordinator.poll() is None, log.read_text()[-3000:]
        done = _outputs(fs, out)
        for name, w in workers.items():
            run = _flow_run_of(pe, w)
            if run and run["name"].startswith("shard-"):
                s = int(run["name"].split("-")[1])
                ids = [f"item{i:03d}" for i in range(s * n // 2, (s + 1) * n // 2)]
                if sum(i in done for i in ids) >= 3:
                    kill_tree(w)
                    return {"machine": name, "ids": ids, "run": run}
        time.sleep(0.1)


def _assert_no_local_paths(pe, fs, out: str, top: Path) -> None:
    """No machine's folder is named where another machine would read it: in any flow run's
    parameters, or in the job's shared tables (results, failures, deps: every dep a URL)."""
    import pyarrow.parquet as pq

    fs.invalidate_cache()
    runs = _api(pe, "flow_runs/filter", {"limit": 200})
    params = json.dumps([r["parameters"] for r in runs])
    assert str(top) not in params, re.findall(rf"{re.escape(str(top))}[^\"]*", params)[:5]
    for key in fs.find(f"{out}/tables"):
        if re.search(r"/(results|failures|deps)-", key):
            with fs.open(key) as f:
                text = json.dumps(pq.read_table(f).to_pylist())
            assert str(top) not in text, (key, text[:2000])
            if "/deps-" in key:
                with fs.open(key) as f:
                    refs = pq.read_table(f).column("ref").to_pylist()
                assert all(r == "settings" or r.startswith(f"s3://{BUCKET}/") for r in refs), refs
