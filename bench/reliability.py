"""Reliability: adversarial inputs through edit-batch and bad invocations of the CLI, as one suite.

Every bad input must become a named failure row (edit-batch) or a one-line error with exit 2
(CLI); no good item of the same manifest may be lost or recorded twice, nothing may hang, no
traceback may reach a user. Each part runs in its own child process under a timeout, so a hang
is counted, not waited for; each child's peak RSS comes from os.wait4 (Linux starts a child's peak
at its parent's, so this parent imports neither torch nor numpy; the fixtures are written by a
child first):

- batch: one manifest of good items interleaved with bad entries (malformed lines, bad seeds,
  ids, NUL bytes, FIFOs, devices, directories, 625 MP 1-bit PNG bombs, corrupt and 0-byte
  files, bad boxes, concept paths like /dev), planned into 2 shards and run through the edit-batch
  tasks' bodies with the noop engine, then re-run (resume); then a second manifest on the same
  out_root (refused), a UTF-16 manifest, num_shards 0. Without --quick also the diffusion
  engine on the tiny models, for concepts that only fail when loaded (NaN weights, a bad
  card.json, a method that does not match the tensors).
- bomb: the 25000x25000 1-bit PNG as image and as mask of a batch, alone (its peak RSS).
- cli: `python -m lcd ...` with bad values, files and paths; without --quick also `lcd masks
  compute` on the tiny SAM over one good image and four bad ones (the bomb, a FIFO, a folder,
  0 bytes), which must exit 0 with the good image done and four failure rows.

    python bench/reliability.py [--quick] [--timeout 120] [--keep]

Prints JSON; the last line is one object with `inputs_tried`, `good_items`, `good_items_lost`,
`hangs`, `tracebacks`, `peak_rss_mb` (the largest peak of the children fed the bomb), `not_exit_2`,
`multi_line` (CLI cases whose stderr is not exactly one line), `unaccounted` (manifest entries
with no row or two), `escaped` (exceptions out of a batch job).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
import hostile  # noqa: E402 - the families of issue 27, beside this file
BOX = "box:0,0,8,8"


# --- fixtures ---------------------------------------------------------------------------------

def make_files(root: Path) -> None:
    """Scenes, masks and every kind of bad file the cases point at."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for k in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / f"s{k}.png")
    m = np.zeros((32, 32), np.uint8)
    m[8:24, 8:24] = 255
    Image.fromarray(m).save(root / "m.png")
    Image.fromarray(m[:16]).save(root / "small.png")
    Image.new("1", (25_000, 25_000)).save(root / "bomb.png")  # ~76 KB on disk, 625 MP decoded
    (root / "empty.png").write_bytes(b"")
    (root / "corrupt.png").write_bytes(rng.integers(0, 255, 4096, dtype=np.uint8).tobytes())
    (root / "truncated.png").write_bytes((root / "s0.png").read_bytes()[:200])
    os.mkfifo(root / "fifo.png")
    (root / "dir.png").mkdir()
    (root / "photos").mkdir()
    Image.fromarray(m).convert("RGB").save(root / "photos" / "p.png")
    if not (root / "loop.png").is_symlink():
        os.symlink("loop.png", root / "loop.png")
    (root / "bad.yaml").write_text("edit: [unclosed\n")
    (root / "scenes.csv").write_text("image\ns0.png\n")


def bad_entries(root: Path) -> list:
    """Manifest entries that must each become one failure row (dicts, or raw lines as str/bytes)."""
    def it(i, **kw):
        region = {} if "mask" in kw or "select" in kw else {"select": BOX}
        return {"id": i, "image": "s0.png", "prompt": "a dog", **region, **kw}

    return [
        "{not json", b"\xff\xfe{\"id\": \"x\"}", "[1, 2]", "null",
        it("newline\n"), it("../escape"), it("seed-big", seed=2**70), it("seed-u64", seed=2**64 - 1),
        it("seed-str", seed="x"), {"id": "noprompt", "image": "s0.png", "select": BOX},
        it("empty-prompt", prompt=""), it("both", mask="m.png", select=BOX), {"id": "noregion", "image": "s0.png",
                                                                                 "prompt": "x"},
        it("unknown-key", colour="red"), it("nul", image="s\u0000.png"), it("nul-concept", concept="a\u0000"),
        it("missing", image="nope.png"), it("zero-bytes", image="empty.png"), it("corrupt", image="corrupt.png"),
        it("truncated", image="truncated.png"), it("fifo", image="fifo.png"), it("fifo-mask", mask="fifo.png"),
        it("dev-zero", image="/dev/zero"), it("dev-null-mask", mask="/dev/null"), it("dir", image="dir.png"),
        it("dir-mask", mask="dir.png"), it("bomb", image="bomb.png"), it("bomb-mask", mask="bomb.png"),
        it("mask-size", mask="small.png"), it("box-outside", select="box:40,40,50,50"), it("box-bad", select="box:a,b"),
        it("sam-nostore", select="sam:largest"), it("rule-bad", select="lasso:1"), it("loop", image="loop.png"),
        it("long-name", image="x" * 4000 + ".png"), it("url-refused", image="http://127.0.0.1:9/x.png"),
        it("concept-dev", concept="/dev"), it("concept-devnull", concept="/dev/null"),
        it("concept-file", concept=str(root / "s0.png")), it("concept-photos", concept=str(root / "photos")),
        it("concept-missing", concept="nope"), it("surrogate", image="s\udcff.png"),
        it("surrogate-prompt", prompt="a \ud800 dog"),
    ]


def write_manifest(path: Path, entries: list) -> None:
    with open(path, "wb") as f:
        for e in entries:
            f.write(e if isinstance(e, bytes) else (e if isinstance(e, str) else json.dumps(e)).encode())
            f.write(b"\n")


# --- children ---------------------------------------------------------------------------------

def _edit_batch(manifest: Path, out: Path, params: Path, engine: str, shards: int, concepts: Path | None) -> dict:
    """The coordinator's steps (plan, every shard, merge) through the tasks' bodies, no server."""
    from tasks.edit import edit_shard, merge_shard_tables, plan_manifest

    plan_manifest.fn(str(manifest), str(out), shards)
    for i in range(shards):
        edit_shard.fn(str(manifest), str(out), i, shards, str(params), None, engine, str(concepts) if concepts else None)
    return merge_shard_tables.fn(str(out), shards)


def _check_job(out: Path, good: list[str], status: str) -> dict:
    """How many good ids are not in results.parquet exactly once with `status` (and their PNG)."""
    import pyarrow.parquet as pq

    t = pq.read_table(out / "results.parquet", columns=["id", "status"]).to_pylist()
    rows = {}
    for r in t:
        rows.setdefault(r["id"], []).append(r["status"])
    lost = [g for g in good if rows.get(g) != [status] or not (out / "edits" / f"{g}.png").is_file()]
    return {"good": len(good), "lost": lost}


def child_batch(files: Path, root: Path, quick: bool) -> dict:
    """Run the batch jobs on the fixtures in `files`, writing under `root`; -> {inputs, good_items,
    good_items_lost, unaccounted, escaped, notes}."""
    import traceback

    import yaml

    from lcd.errors import LcdError

    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"models": {"sd": "/unused/in/noop"}, "edit": {"size": 64, "batch_size": 4}}))
    n_good = 4 if quick else 20
    good = [f"good{k:02d}" for k in range(n_good)]
    bad = bad_entries(files)
    entries = []
    for k, g in enumerate(good):  # good items interleaved with the bad ones, one duplicate of a good id
        entries.append({"id": g, "image": f"s{k % 4}.png", "mask" if k % 2 else "select": "m.png" if k % 2 else BOX,
                        "prompt": "a dog", "seed": k})
        entries += bad[k * len(bad) // n_good:(k + 1) * len(bad) // n_good]
    entries.append(entries[0])  # a duplicate id: the first entry is edited, the second fails
    manifest = files / "edits.jsonl"  # paths are relative to it
    write_manifest(manifest, entries)
    res = {"inputs": len(bad) + 1, "good_items": 0, "good_items_lost": 0, "unaccounted": 0, "escaped": 0, "notes": {}}

    def job(name, fn):
        try:
            res["notes"][name] = fn()
        except Exception as e:  # noqa: BLE001 - an exception out of a job is what this counts
            res["escaped"] += 1
            res["notes"][name] = {"escaped": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-800:]}

    out = root / "out"

    def first():
        merged = _edit_batch(manifest, out, params, "noop", 2, root / "concepts")
        c = _check_job(out, good, "edited")
        res["good_items"] += c["good"]
        res["good_items_lost"] += len(c["lost"])
        res["unaccounted"] += merged["n_missing"] + merged["duplicated"]
        expected_failures = len(bad) + 1
        res["unaccounted"] += abs(merged["failed"] - expected_failures)
        return {"edited": merged["edited"], "failed": merged["failed"], "expected_failures": expected_failures,
                "lost": c["lost"]}

    def resume():
        merged = _edit_batch(manifest, out, params, "noop", 2, root / "concepts")
        c = _check_job(out, good, "skipped")
        res["good_items_lost"] += len(c["lost"])
        return {"skipped": merged["skipped"], "lost": c["lost"]}

    def second_manifest():  # another job on the same out_root: refused, the first job's rows intact
        other = root / "b" / "edits.jsonl"
        other.parent.mkdir()
        write_manifest(other, [{"id": "other", "image": str(files / "s0.png"), "select": BOX, "prompt": "x"}])
        res["inputs"] += 1
        try:
            _edit_batch(other, out, params, "noop", 2, None)
            outcome = "accepted"
        except LcdError as e:
            outcome = f"refused: {str(e)[:160]}"
        c = _check_job(out, good, "skipped")
        res["good_items_lost"] += len(c["lost"])
        return {"outcome": outcome, "lost": c["lost"]}

    def refused(fn):
        res["inputs"] += 1
        try:
            fn()
        except LcdError as e:
            return f"LcdError: {str(e)[:160]}"
        return "accepted"

    job("first run", first)
    job("resume", resume)
    job("second manifest, same out_root", second_manifest)
    (root / "u16.jsonl").write_bytes(json.dumps({"id": "u", "image": "s0.png", "select": BOX, "prompt": "x"}).encode("utf-16"))
    job("utf-16 manifest", lambda: refused(lambda: _edit_batch(root / "u16.jsonl", root / "out-u16", params,
                                                                        "noop", 1, None)))
    job("num_shards 0", lambda: refused(lambda: _edit_batch(manifest, root / "out-0", params, "noop", 0, None)))
    if not quick:
        job("concepts on the tiny models", lambda: _concept_job(files, root, res))
    return res


def _concept_job(files: Path, root: Path, res: dict) -> dict:
    """Concepts that only fail when loaded: the diffusion engine on the tiny models (files/tiny)."""
    import torch
    import yaml

    from lcd.concepts.io import Concept, save_concept

    cdir = root / "concepts"
    save_concept(Concept(["[P]"], torch.full((1, 32), float("nan")), "kv", {}), cdir / "nan")
    save_concept(Concept(["[P]"], torch.zeros(1, 32), "kv", {}), cdir / "card")
    (cdir / "card" / "card.json").write_text("{not json")
    save_concept(Concept(["[P]"], torch.zeros(1, 32), "kv", {}), cdir / "cardtype")
    (cdir / "cardtype" / "card.json").write_text('{"base": "sd15"}')
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q.weight"
    save_concept(Concept(["[P]"], torch.zeros(1, 32), "kv", {key: torch.zeros(4, 4)}), cdir / "method")
    params = root / "params-tiny.yaml"
    params.write_text(yaml.safe_dump({"models": {"sd": str(files / "tiny" / "sd")},
                                      "edit": {"size": 64, "steps": 2, "batch_size": 2}}))
    bad = [{"id": f"c-{c}", "image": str(files / "s0.png"), "select": BOX, "prompt": "a [P] dog", "concept": c}
           for c in ("nan", "card", "cardtype", "method")]
    good = ["tiny0", "tiny1"]
    entries = [{"id": g, "image": str(files / f"s{k}.png"), "select": BOX, "prompt": "a dog"} for k, g in enumerate(good)]
    write_manifest(root / "c.jsonl", entries[:1] + bad + entries[1:])
    merged = _edit_batch(root / "c.jsonl", root / "out-c", params, "diffusion", 1, cdir)
    c = _check_job(root / "out-c", good, "edited")
    res["inputs"] += len(bad)
    res["good_items"] += c["good"]
    res["good_items_lost"] += len(c["lost"])
    res["unaccounted"] += merged["n_missing"] + merged["duplicated"] + abs(merged["failed"] - len(bad))
    return {"edited": merged["edited"], "failed": merged["failed"], "lost": c["lost"]}


def child_bomb(files: Path, root: Path) -> dict:
    """The 625 MP 1-bit PNG as image and as mask of one batch, beside one good item."""
    from lcd.config import EditConfig, ModelsConfig
    from lcd.jobs.editing import run_edit_shard
    from lcd.jobs.manifest import read_manifest

    write_manifest(files / "bomb.jsonl", [
        {"id": "ok", "image": "s0.png", "select": BOX, "prompt": "a dog"},
        {"id": "bomb", "image": "bomb.png", "select": BOX, "prompt": "a dog"},
        {"id": "bomb-mask", "image": "s0.png", "mask": "bomb.png", "prompt": "a dog"}])
    items = read_manifest(files / "bomb.jsonl")[0]
    rep = run_edit_shard(items, out_root=root / "out-bomb", cfg=EditConfig(size=64), models=ModelsConfig(), engine="noop")
    return {"edited": [r["id"] for r in rep.results], "failed": {f["id"]: f["message"][-80:] for f in rep.failures}}


FAMILIES = {"network": hostile.child_network, "outputs": hostile.child_outputs, "concepts": hostile.child_concepts,
            "masks": hostile.child_masks, "coordinators": hostile.child_coordinators, "orphans": hostile.child_orphans}
FULL_ONLY = {"coordinators", "orphans"}  # each starts Prefect servers: a minute or two apiece on 2 cores


# --- the CLI cases ----------------------------------------------------------------------------

def cli_cases(root: Path, quick: bool) -> list[tuple[str, list[str], bool]]:
    """(name, argv after `python -m lcd`, is a bomb case) of invocations that must exit 2 in one line."""
    r = str(root)
    edit = ["edit", "--image", f"{r}/s0.png", "--mask", f"{r}/m.png", "--prompt", "a dog", "--out", f"{r}/o.png"]

    def with_(*kv):
        return edit + list(kv)

    def swap(flag, value):
        a = list(edit)
        a[a.index(flag) + 1] = value
        return a

    corrupt_token, card = f"{r}/cd", f"{r}/cc"  # written by child_fixtures
    cases = [
        ("edit image bomb", swap("--image", f"{r}/bomb.png"), True),
        ("edit mask bomb", swap("--mask", f"{r}/bomb.png"), True),
        ("edit image fifo", swap("--image", f"{r}/fifo.png"), False),
        ("edit concept /dev", with_("--concept", "/dev"), False),
        ("masks points-per-side 0", ["masks", "compute", f"{r}/scenes.csv", "--out", f"{r}/mo", "--points-per-side", "0"], False),
        ("concept import corrupt token", ["concept", "import", corrupt_token, "--out", f"{r}/imp"], False),
    ]
    if quick:
        return cases
    return cases + [
        ("edit image /dev/zero", swap("--image", "/dev/zero"), False),
        ("edit mask fifo", swap("--mask", f"{r}/fifo.png"), False),
        ("edit mask dir", swap("--mask", f"{r}/dir.png"), False),
        ("edit image corrupt", swap("--image", f"{r}/corrupt.png"), False),
        ("edit image 0 bytes", swap("--image", f"{r}/empty.png"), False),
        ("edit mask size", swap("--mask", f"{r}/small.png"), False),
        ("edit concept file", with_("--concept", f"{r}/s0.png"), False),
        ("edit steps 0", with_("--steps", "0"), False),
        ("edit size 100", with_("--size", "100"), False),
        ("edit guidance -1", with_("--guidance", "-1"), False),
        ("edit dilate -5", with_("--dilate", "-5"), False),
        ("edit seed 2**70", with_("--seed", str(2**70)), False),
        ("edit out folder", swap("--out", f"{r}/dir.png"), False),
        ("edit out under a file", swap("--out", f"{r}/s0.png/o.png"), False),
        ("edit device bogus", with_("--device", "bogus"), False),
        ("edit bad yaml", ["--params", f"{r}/bad.yaml"] + edit, False),
        ("edit missing params", ["--params", f"{r}/nope.yaml"] + edit, False),
        ("masks points-per-side -1", ["masks", "compute", f"{r}/scenes.csv", "--out", f"{r}/mo", "--points-per-side", "-1"], False),
        ("masks missing manifest", ["masks", "compute", f"{r}/nope.csv", "--out", f"{r}/mo"], False),
        ("evaluate n-prompts 0", ["evaluate", "dreambench", "--out", f"{r}/ev", "--n-prompts", "0"], False),
        ("train steps 0", ["train", "--photos", f"{r}/photos", "--class-word", "dog", "--out", f"{r}/c", "--steps", "0"], False),
        ("train lr -1", ["train", "--photos", f"{r}/photos", "--class-word", "dog", "--out", f"{r}/c", "--lr", "-1"], False),
        ("concept export bad card", ["concept", "export", card, "--out", f"{r}/exp"], False),
        ("concept show bad card", ["concept", "show", card], False),
        ("concept show /dev", ["concept", "show", "/dev"], False),
        ("masks compute bad images",  # exit 0: each bad image is a failure row, the good one is done
         ["--params", f"{r}/masks.yaml", "masks", "compute", f"{r}/masks.csv", "--out", f"{r}/mrun"], True),
    ]


def child_fixtures(root: Path, quick: bool) -> dict:
    """The files every case reads, written once before the cases run (in a child: the parent
    stays small, since a child's peak RSS starts at its parent's and survives exec)."""
    import torch
    import yaml
    from safetensors.torch import save_file

    from lcd.concepts.io import Concept, save_concept

    make_files(root)
    hostile.model_folder_files(root)
    hostile.depth_files(root)
    (root / "cd").mkdir()  # diffusers Custom Diffusion weights beside a token file that is no tensor file
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_custom_diffusion.weight"
    save_file({key: torch.zeros(4, 4)}, str(root / "cd" / "pytorch_custom_diffusion_weights.safetensors"))
    (root / "cd" / "<new1>.bin").write_bytes(b"\x80\x02not a pickle")
    save_concept(Concept(["[P]"], torch.zeros(1, 32), "kv", {}), root / "cc")  # a card whose base is a string
    (root / "cc" / "card.json").write_text('{"base": "sd15"}')
    if quick:
        return {}
    hostile.flow_files(root)
    from lcd.models.tiny import TINY_SAM_FILE, write_tiny_models

    write_tiny_models(root / "tiny")
    (root / "masks.csv").write_text("image\n" + "\n".join(f"{root}/{n}" for n in
                                    ("s0.png", "bomb.png", "fifo.png", "dir.png", "empty.png")) + "\n")
    (root / "masks.yaml").write_text(yaml.safe_dump({
        "models": {"sam": str(root / "tiny" / "sam" / TINY_SAM_FILE), "sam_type": "vit_tiny",
                   "clip": str(root / "tiny" / "clip")},
        "masks": {"auto": {"points_per_side": 2}}}))
    return {}


# --- running children -------------------------------------------------------------------------

def run_child(argv: list[str], cwd: Path, timeout: float, log: Path, env: dict | None = None) -> dict:
    """Run `argv` in its own session; -> {rc, stdout, stderr, hung, rss_mb}. The child's own
    peak RSS comes from wait4; on timeout its whole group is killed and the run counts as a hang."""
    import subprocess

    with open(log.with_suffix(".out"), "wb") as out, open(log.with_suffix(".err"), "wb") as err:
        p = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True,
                             env=env)
        deadline, hung = time.monotonic() + timeout, False
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                hung = True
                os.killpg(p.pid, signal.SIGKILL)
                _, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.05)
        p.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    return {"rc": p.returncode, "hung": hung, "rss_mb": round(ru.ru_maxrss / 1024, 1),
            "stdout": log.with_suffix(".out").read_text(errors="replace"),
            "stderr": log.with_suffix(".err").read_text(errors="replace")}


def _last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer good items and CLI cases, no diffusion part")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per child before it counts as a hang")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (fixtures, outputs, child logs)")
    ap.add_argument("--child", choices=["fixtures", "batch", "bomb", *FAMILIES], help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:  # inside a child: one JSON line
        root = Path(a.root)
        files = Path(a.files or a.root)
        got = {"fixtures": lambda: child_fixtures(root, a.quick), "bomb": lambda: child_bomb(files, root),
               "batch": lambda: child_batch(files, root, a.quick),
               **{name: (lambda fn=fn: fn(files, root)) for name, fn in FAMILIES.items()}}[a.child]()
        print(json.dumps(got))
        return
    # the parent imports no torch/numpy: each child's peak RSS starts at the parent's
    t0 = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="lcd-bench-rel-"))
    env_root, logs = root / "files", root / "logs"
    env_root.mkdir(), logs.mkdir()
    me = [sys.executable, str(Path(__file__).resolve())]
    q = ["--quick"] if a.quick else []
    fx = run_child(me + ["--child", "fixtures", "--root", str(env_root)] + q, env_root, a.timeout, logs / "fixtures")
    if fx["rc"] != 0:
        raise SystemExit(f"writing the fixtures failed:\n{fx['stderr'][-2000:]}")
    children = [("batch", me + ["--child", "batch", "--files", str(env_root), "--root", str(root / "batch")] + q, False),
                ("bomb batch", me + ["--child", "bomb", "--files", str(env_root), "--root", str(root / "bomb")], True)]
    for name in FAMILIES:
        if a.quick and name in FULL_ONLY:
            continue
        children.append((name, me + ["--child", name, "--files", str(env_root), "--root", str(root / name)], False))
        (root / name).mkdir()
    (root / "batch").mkdir(), (root / "bomb").mkdir()
    cases = [(n, [sys.executable, "-m", "lcd", *argv], bomb) for n, argv, bomb in cli_cases(env_root, a.quick)]
    entry = {"lcd": [str(Path(sys.executable).with_name("lcd"))], "flows": [sys.executable, "-m", "flows"]}
    exits = {}
    for n, argv, opt in hostile.hostile_cli_cases(env_root, a.quick):
        cases.append((n, entry.get(opt.get("argv0"), [sys.executable, "-m", "lcd"]) + argv, False))
        exits[n] = opt.get("exit", 2)
    env = dict(os.environ, PYTHONPATH=str(env_root))  # what an attacker hopes for: the cwd importable

    def one(k_case):
        k, (name, argv, bomb) = k_case
        return name, bomb, run_child(argv, env_root, a.timeout, logs / f"{k:03d}", env)

    with ThreadPoolExecutor(2) as pool:  # 2 cores: two children at a time
        done = list(pool.map(one, enumerate(children + cases)))
    summary = {"inputs_tried": 0, "good_items": 0, "good_items_lost": 0, "hangs": 0, "tracebacks": 0,
               "peak_rss_mb": 0.0, "not_exit_2": 0, "multi_line": 0, "unaccounted": 0, "escaped": 0,
               "code_executed": 0, "max_item_wait_s": 0.0, "deadline_s": None}
    for name, bomb, r in done:
        summary["hangs"] += r["hung"]
        summary["tracebacks"] += r["stderr"].count("Traceback") + r["stdout"].count("Traceback")
        if bomb:
            summary["peak_rss_mb"] = max(summary["peak_rss_mb"], r["rss_mb"])
        row = {"case": name, "rc": r["rc"], "hung": r["hung"], "rss_mb": r["rss_mb"]}
        if name == "batch":
            got = _last_json(r["stdout"]) or {}
            for k in ("good_items", "good_items_lost", "unaccounted", "escaped"):
                summary[k] += got.get(k, 0)
            summary["inputs_tried"] += got.get("inputs", 0)
            if not got:  # the child died: every good item it held is lost
                summary["good_items_lost"] += 1
            row["notes"] = got.get("notes") or r["stderr"][-800:]
        elif name == "bomb batch":
            got = _last_json(r["stdout"]) or {}
            summary["inputs_tried"] += 2
            summary["good_items"] += 1
            summary["good_items_lost"] += got.get("edited") != ["ok"]
            row["notes"] = got or r["stderr"][-800:]
        elif name in FAMILIES:
            got = _last_json(r["stdout"]) or {}
            for k in ("good_items", "good_items_lost", "unaccounted", "escaped"):
                summary[k] += got.get(k, 0)
            summary["inputs_tried"] += got.get("inputs", 0)
            summary["good_items_lost"] += not got  # the child died
            if "max_item_wait_s" in got:
                summary["max_item_wait_s"] = max(summary["max_item_wait_s"], got["max_item_wait_s"])
                summary["deadline_s"] = got["deadline_s"]
            if name == "masks":
                summary["peak_rss_mb"] = max(summary["peak_rss_mb"], r["rss_mb"])
            if name == "orphans":
                summary["orphaned_processes"] = got.get("orphaned_processes", 1)
            if name == "coordinators":
                summary["two_coordinators_edits"] = f"{got.get('edits_total')} of {got.get('good_items')}"
            row["notes"] = got or r["stderr"][-800:]
        elif exits.get(name, 2) != 2:  # an entry point that ends a job (its items fail), not a CLI error
            summary["inputs_tried"] += 1
            summary["not_exit_2"] += r["rc"] != exits[name]
            row["stderr"] = r["stderr"].strip()[-300:]
        elif name == "masks compute bad images":  # 1 good image, 4 bad ones
            got = _last_json(r["stdout"]) or {}
            summary["inputs_tried"] += 4
            summary["good_items"] += 1
            summary["good_items_lost"] += got.get("done") != 1
            summary["unaccounted"] += got.get("failed") != 4
            row["notes"] = got or r["stderr"][-800:]
        else:
            summary["inputs_tried"] += 1
            lines = r["stderr"].strip().splitlines()
            summary["not_exit_2"] += r["rc"] != 2
            summary["multi_line"] += len(lines) != 1
            row["stderr"] = r["stderr"].strip()[-300:]
        print(json.dumps(row))
    summary["code_executed"] = hostile.code_marker(env_root)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    summary["quick"] = a.quick
    if a.keep:
        summary["work"] = str(root)
    else:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
