"""The families of hostile input that issue 27 named, as children of bench/reliability.py.

Each `child_*` runs in its own process (reliability.py gives it a timeout and reads its peak RSS)
and returns one dict with the counters the summary adds up: `inputs`, `good_items`,
`good_items_lost`, `unaccounted` (an input with no row, or a broken one recorded as good),
`escaped` (an exception out of a job), and family-specific figures:

- network: every misbehaving-server mode of tests/hostile_http.py as an image URL of a shard,
  beside a good item, under short deadlines (`io` section); `max_item_wait_s` is the longest a
  shard with one bad URL took, `deadline_s` the total deadline it ran under.
- outputs: a finished job whose outputs are then broken (dangling link, 0 bytes, cut short, a
  link to another output, another item's image): a re-run must redo exactly those.
- concepts: concept files whose metadata or tensors lie (a numeric `tokens`, a 0-d embedding, a
  lora_A without its lora_B, ranks that differ, NaN and 1e308 scales, NaN weights, shapes of
  another base, integer tensors) through the diffusion engine on the tiny models.
- masks store: rows that claim 10^9 x 10^9 or 40,000 x 40,000 pixels, sizes that are not the
  image's, RLE counts that do not add up, and 10^5 tiny masks for one image selected `largest`.

The model-folder and CLI-depth families are CLI cases (`model_folder_files`, `depth_files`,
`hostile_cli_cases`); whether a model folder's code ran is read from the marker its payload
writes (`code_marker`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

BOX = "box:0,0,8,8"
CODE_MARKER = "CODE_RAN"  # written (appended) under the cwd by every payload below, if it ever runs
PAYLOAD = "import os\nopen(os.path.join(os.getcwd(), 'CODE_RAN'), 'a').write(__name__ + '\\n')\n"


# --- model folders that try to run code -------------------------------------------------------

def model_folder_files(root: Path) -> list[str]:
    """Model folders under `root/models` whose configs point at code in the folder itself, the way
    an attacker ships them: diffusers imports a dotted `library` from sys.path (the cwd for
    `python -m`), transformers follows `auto_map`, diffusers loads a pipeline `.py`. -> their names."""
    models = root / "models"

    def folder(name: str, index: dict, extra: dict[str, str]) -> None:
        d = models / name
        for rel, text in {"model_index.json": json.dumps(index), **extra}.items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_text(text)

    base = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.39.0",
            "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"], "safety_checker": [None, None], "feature_extractor": [None, None]}
    unet_cfg = json.dumps({"_class_name": "UNet2DConditionModel", "in_channels": 4})
    folder("dotted", base | {"unet": ["models.dotted.unet.payload", "UNet2DConditionModel"]},
           {"unet/config.json": unet_cfg, "unet/payload.py": PAYLOAD})
    folder("automap", base, {"unet/config.json": unet_cfg, "text_encoder/modeling_evil.py": PAYLOAD,
                             "text_encoder/config.json": json.dumps({
                                 "architectures": ["EvilModel"], "model_type": "clip_text_model",
                                 "auto_map": {"AutoModel": "modeling_evil.EvilModel"}})})
    folder("pipeline-py", base | {"_class_name": ["pipeline", "EvilPipeline"]},
           {"unet/config.json": unet_cfg, "pipeline.py": PAYLOAD})
    folder("class-name", base, {"unet/config.json": json.dumps({"_class_name": "models.class-name.evil.Evil"}),
                                "evil.py": PAYLOAD})
    return ["dotted", "automap", "pipeline-py", "class-name"]


def code_marker(root: Path) -> int:
    """How many times a payload ran (lines of the marker)."""
    m = root / CODE_MARKER
    return len(m.read_text().splitlines()) if m.exists() else 0


# --- files too deep, too repetitive or not text for the CLI -----------------------------------

def depth_files(root: Path) -> None:
    """Params and edits files that used to give a traceback, a multi-line error or a silent default."""
    (root / "deep.yaml").write_text("[" * 100_000)
    (root / "deep-map.yaml").write_text("".join(f"{' ' * k}k{k}:\n" for k in range(3000)))
    (root / "dup.yaml").write_text("edit:\n  steps: 2\nmodels:\n  device: cpu\nedit:\n  steps: 3\n")
    (root / "dup-nested.yaml").write_text("edit:\n  steps: 2\n  steps: 3\n")
    laughs = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]"
                                                     for p, c in zip("abcdefgh", "bcdefghi")]
    (root / "laughs.yaml").write_text("\n".join(laughs) + "\n")
    (root / "binary.yaml").write_bytes(bytes(range(256)) * 16)
    (root / "utf16.yaml").write_bytes("edit:\n  steps: 2\n".encode("utf-16"))
    (root / "edits-binary.json").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    (root / "edits-int.json").write_text('[{"image": 5}]')
    (root / "edits-dict.json").write_text('{"a": 1}')
    (root / "edits-deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (root / "scenes-binary.csv").write_bytes(b"image\n" + bytes(range(1, 256)) * 8 + b"\n")
    (root / "scenes-nul.csv").write_bytes(b"image\ns0\x00.png\n")


def hostile_cli_cases(root: Path, quick: bool) -> list[tuple[str, list[str], dict]]:
    """(name, argv after `python -m lcd` or a full argv, options) that must exit 2 in one line and
    run no code. options: {"argv0": "lcd" | "flows"} picks the entry point (default `python -m lcd`)."""
    r = str(root)
    edit = ["edit", "--image", f"{r}/s0.png", "--mask", f"{r}/m.png", "--prompt", "a dog", "--out", f"{r}/o.png"]
    cases = []
    for name in ("dotted", "automap", "pipeline-py", "class-name"):  # cwd is root: models/<name> is importable
        cases.append((f"model folder {name} (python -m lcd)", edit + ["--model", f"models/{name}"], {}))
    cases.append(("model folder dotted (lcd script, PYTHONPATH=.)", edit + ["--model", "models/dotted"],
                  {"argv0": "lcd"}))
    cases += [
        ("params 100k nested [", ["--params", f"{r}/deep.yaml"] + edit, {}),
        ("params deep mapping", ["--params", f"{r}/deep-map.yaml"] + edit, {}),
        ("params duplicate edit:", ["--params", f"{r}/dup.yaml"] + edit, {}),
        ("params duplicate nested key", ["--params", f"{r}/dup-nested.yaml"] + edit, {}),
        ("params billion laughs", ["--params", f"{r}/laughs.yaml"] + edit, {}),
        ("params binary", ["--params", f"{r}/binary.yaml"] + edit, {}),
        ("params utf-16", ["--params", f"{r}/utf16.yaml"] + edit, {}),
        ("demo --edits binary", ["demo", "--edits", f"{r}/edits-binary.json", "--out", f"{r}/demo"], {}),
        ("demo --edits [{image: 5}]", ["demo", "--edits", f"{r}/edits-int.json", "--out", f"{r}/demo"], {}),
        ("demo --edits a mapping", ["demo", "--edits", f"{r}/edits-dict.json", "--out", f"{r}/demo"], {}),
        ("demo --edits 100k nested [", ["demo", "--edits", f"{r}/edits-deep.json", "--out", f"{r}/demo"], {}),
        ("masks compute binary csv", ["masks", "compute", f"{r}/scenes-binary.csv", "--out", f"{r}/mo"], {}),
    ]
    if not quick:
        cases.append(("model folder dotted (python -m flows edit)",
                      ["edit", "--params", f"{r}/evil-flow.yaml", "--manifest", f"{r}/evil-flow.jsonl",
                       "--out", f"{r}/evil-flow-out"], {"argv0": "flows"}))
    return cases


def flow_files(root: Path) -> None:
    """`python -m flows edit` on the dotted model folder: a params file and a two-item manifest."""
    import yaml

    (root / "evil-flow.yaml").write_text(yaml.safe_dump({"models": {"sd": "models/dotted"},
                                                         "edit": {"size": 64, "steps": 1}}))
    (root / "evil-flow.jsonl").write_text("".join(json.dumps({"id": f"e{k}", "image": f"{root}/s{k}.png",
                                                              "select": BOX, "prompt": "a dog"}) + "\n"
                                                  for k in range(2)))


# --- network deadlines -----------------------------------------------------------------------

NETWORK_MODES = ("never", "stall", "slow", "endless", "huge", "short", "second", "404", "loop")


def child_network(files: Path, root: Path) -> dict:
    """Each misbehaving mode as the image of a two-item shard (the good item a local file), the
    shards run at once against one server: every bad URL a failure row naming it, every good item
    edited, and no shard longer than the deadline allows."""
    import sys
    from concurrent.futures import ThreadPoolExecutor

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.hostile_http import HostileServer

    from lcd.config import EditConfig, ModelsConfig
    from lcd.io.config import IoConfig
    from lcd.jobs.editing import run_edit_shard
    from lcd.jobs.manifest import ManifestItem

    limits = IoConfig(http_connect_timeout_s=2, http_first_byte_timeout_s=2, http_total_timeout_s=4,
                      http_max_bytes=50_000_000)
    res = {"inputs": 0, "good_items": 0, "good_items_lost": 0, "unaccounted": 0, "escaped": 0,
           "deadline_s": limits.http_total_timeout_s, "max_item_wait_s": 0.0, "modes": {}}

    def shard(mode: str, url: str) -> tuple[str, float, dict]:
        items = [ManifestItem(id="good", image=str(files / "s0.png"), prompt="a dog", select=BOX),
                 ManifestItem(id="bad", image=url, prompt="a dog", select=BOX)]
        t0 = time.monotonic()
        try:
            rep = run_edit_shard(items, out_root=root / f"out-{mode}", cfg=EditConfig(size=64), models=ModelsConfig(),
                                 engine="noop", io_cfg=limits)
        except Exception as e:  # noqa: BLE001 - an exception out of a shard is what this counts
            return mode, time.monotonic() - t0, {"escaped": f"{type(e).__name__}: {e}"}
        return mode, time.monotonic() - t0, {"edited": [r["id"] for r in rep.results if r["status"] == "edited"],
                                             "failed": {f["id"]: f["message"] for f in rep.failures}}

    with HostileServer() as srv, ThreadPoolExecutor(len(NETWORK_MODES)) as pool:
        done = list(pool.map(lambda m: shard(m, srv.url(f"{m}/scene.png")), NETWORK_MODES))
    for mode, wait, got in done:
        res["inputs"] += 1
        res["good_items"] += 1
        res["max_item_wait_s"] = max(res["max_item_wait_s"], round(wait, 2))
        if "escaped" in got:
            res["escaped"] += 1
            res["good_items_lost"] += 1
        else:
            res["good_items_lost"] += got["edited"] != ["good"]
            res["unaccounted"] += "bad" not in got["failed"] or "127.0.0.1" not in got["failed"]["bad"]
        res["modes"][mode] = {"wait_s": round(wait, 2), **{k: (v if k != "failed" else {i: m[:140] for i, m in v.items()})
                                                           for k, v in got.items()}}
    return res


# --- outputs broken after a finished run ------------------------------------------------------

def child_outputs(files: Path, root: Path) -> dict:
    """A finished 8-item job; five outputs are then broken in five ways. The re-run must redo those
    five (status edited, a whole PNG again) and skip the other three untouched (same mtime)."""
    import os

    from lcd.config import EditConfig, ModelsConfig
    from lcd.io.images import load_image
    from lcd.jobs.editing import run_edit_shard
    from lcd.jobs.manifest import ManifestItem

    items = [ManifestItem(id=f"o{k}", image=str(files / f"s{k % 4}.png"), prompt="a dog", select=BOX, seed=k)
             for k in range(8)]
    out = root / "out-outputs"
    kw = dict(out_root=out, cfg=EditConfig(size=64), models=ModelsConfig(), engine="noop")
    first = run_edit_shard(items, **kw)
    edits = out / "edits"
    good = [f"o{k}" for k in range(8)]
    res = {"inputs": 5, "good_items": len(good), "good_items_lost": 0, "unaccounted": 0, "escaped": 0, "broken": {}}
    res["good_items_lost"] += sum(r["status"] != "edited" for r in first.results) + len(first.failures)
    whole = (edits / "o7.png").read_bytes()
    breaks = {
        "o0": lambda p: (p.unlink(), os.symlink(edits / "gone.png", p)),  # dangling link
        "o1": lambda p: p.write_bytes(b""),  # 0 bytes
        "o2": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),  # cut short
        "o3": lambda p: (p.unlink(), os.symlink(edits / "o6.png", p)),  # a link to another output
        "o4": lambda p: p.write_bytes(whole),  # another item's image, whole
    }
    for i, brk in breaks.items():
        brk(edits / f"{i}.png")
    kept = {f"o{k}": (edits / f"o{k}.png").stat().st_mtime_ns for k in (5, 6, 7)}
    again = run_edit_shard(items, **kw)
    status = {r["id"]: r["status"] for r in again.results}
    for i in breaks:
        p = edits / f"{i}.png"
        ok = status.get(i) == "edited" and p.is_file() and not p.is_symlink()
        try:
            load_image(str(p))
        except Exception:  # noqa: BLE001 - a broken output left behind counts
            ok = False
        res["broken"][i] = status.get(i)
        res["unaccounted"] += not ok
    for i, mt in kept.items():
        res["good_items_lost"] += status.get(i) != "skipped" or (edits / f"{i}.png").stat().st_mtime_ns != mt
    res["unaccounted"] += len(again.failures)
    return res


# --- concepts whose files lie -----------------------------------------------------------------

def _concept_files(cdir: Path) -> dict[str, str]:
    """Concept folders written straight through safetensors (so they can hold any defect) for the
    tiny SD (text width 32; attn2 K/V of down_blocks.1 are (64, 32)); -> {name: the defect}."""
    import torch
    from safetensors.torch import save_file

    d, m = 32, "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    a, b = f"unet.{m}.lora_A", f"unet.{m}.lora_B"
    g = torch.Generator().manual_seed(0)
    lora = {"text.embeddings": torch.randn(1, d, generator=g) * 0.01, a: torch.randn(2, d, generator=g) * 0.01,
            b: torch.randn(64, 2, generator=g) * 0.01}
    meta = {"tokens": '["[P]"]', "method": "lora", "layout": "lowrank", "lora_scale": "0.5"}
    cases = {
        "good-lora": (lora, meta, "none (edited)"),
        "tokens-number": (lora, meta | {"tokens": "5"}, "tokens metadata a number"),
        "embeddings-0d": (lora | {"text.embeddings": torch.tensor(1.0)}, meta, "text.embeddings 0-d"),
        "lora-a-alone": ({k: v for k, v in lora.items() if k != b}, meta, "lora_A without its lora_B"),
        "rank-mismatch": (lora | {b: torch.zeros(64, 3)}, meta, "lora_A rank 2, lora_B rank 3"),
        "scale-nan": (lora, meta | {"lora_scale": "nan"}, "lora_scale NaN"),
        "scale-1e308": (lora, meta | {"lora_scale": "1e308"}, "lora_scale 1e308"),
        "weights-nan": (lora | {b: torch.full((64, 2), float("nan"))}, meta, "NaN weights"),
        "other-base": (lora | {a: torch.zeros(2, 768), "text.embeddings": torch.zeros(1, 768)}, meta,
                       "shapes of SD1.5, not the tiny base"),
        "int-tensor": (lora | {a: torch.zeros(2, d, dtype=torch.int64)}, meta, "integer tensor"),
    }
    for name, (tensors, md, _) in cases.items():
        (cdir / name).mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(cdir / name / "concept.safetensors"), metadata=md)
    return {name: why for name, (_, _, why) in cases.items()}


def child_concepts(files: Path, root: Path) -> dict:
    """Good items (no concept, a good LoRA concept) beside one item per broken concept, in one
    shard on the tiny SD (diffusion engine): each broken one a failure row naming its file, the
    good ones edited; a re-run keeps the good ones current and fails the broken ones again."""
    import yaml

    from lcd.models.tiny import write_tiny_sd
    from tasks.edit import edit_shard, merge_shard_tables, plan_manifest

    sd = write_tiny_sd(root / "sd")
    why = _concept_files(root / "concepts")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"models": {"sd": str(sd)}, "edit": {"size": 64, "steps": 2, "batch_size": 2}}))
    good = ["plain0", "c-good-lora", "plain1"]
    entries = [{"id": "plain0", "image": str(files / "s0.png"), "select": BOX, "prompt": "a dog"}]
    entries += [{"id": f"c-{c}", "image": str(files / "s1.png"), "select": BOX, "prompt": "a [P] dog", "concept": c}
                for c in why]
    entries.append({"id": "plain1", "image": str(files / "s2.png"), "select": BOX, "prompt": "a dog"})
    manifest = root / "concepts.jsonl"
    manifest.write_text("".join(json.dumps(e) + "\n" for e in entries))
    out = root / "out"
    res = {"inputs": len(why) - 1, "good_items": len(good), "good_items_lost": 0, "unaccounted": 0, "escaped": 0,
           "failures": {}}
    for run, want in (("first", "edited"), ("again", "skipped")):
        try:
            plan_manifest.fn(str(manifest), str(out), 1)
            edit_shard.fn(str(manifest), str(out), 0, 1, str(params), None, "diffusion", str(root / "concepts"))
            merge_shard_tables.fn(str(out), 1)
        except Exception as e:  # noqa: BLE001 - an exception out of the job is what this counts
            res["escaped"] += 1
            res["failures"][run] = f"{type(e).__name__}: {e}"[:300]
            continue
        import pyarrow.parquet as pq

        rows = {r["id"]: r["status"] for r in pq.read_table(out / "results.parquet").to_pylist()}
        fails = {r["id"]: r["message"] for r in pq.read_table(out / "failures.parquet").to_pylist()}
        res["good_items_lost"] += sum(rows.get(g) != want for g in good)
        bad = [f"c-{c}" for c in why if c != "good-lora"]
        res["unaccounted"] += sum(i not in fails or i in rows for i in bad)
        res["failures"][run] = {i: m[:200] for i, m in fails.items()}  # the start names the file
    return res


# --- coordinators and their servers -----------------------------------------------------------

def _flows_edit(root: Path, files: Path, n: int, out: Path, tag: str):
    """A `python -m flows edit` (noop engine, no PREFECT_API_URL: its own temporary server) on an
    n-item manifest under `root`, started and returned (Popen, log path)."""
    import os
    import subprocess
    import sys

    import yaml

    manifest = root / f"edits-{n}.jsonl"
    if not manifest.exists():
        manifest.write_text("".join(json.dumps({"id": f"i{k:05d}", "image": str(files / f"s{k % 4}.png"),
                                                "select": BOX, "prompt": "a dog", "seed": k}) + "\n" for k in range(n)))
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"models": {"sd": "/unused/in/noop"}, "edit": {"size": 64, "batch_size": 8}}))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(root / f"prefect-{tag}"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    log = root / f"flows-{tag}.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "flows", "edit", "--engine", "noop", "--params", str(params),
                                 "--manifest", str(manifest), "--out", str(out)], cwd=root, env=env, stdout=f,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return proc, log


def child_coordinators(files: Path, root: Path) -> dict:
    """Two `python -m flows edit` started together on one manifest and out_root: between them
    every item is edited exactly once (the second waits for or refuses the first, naming it, or
    finds everything current), and results.parquet has each id once."""
    import pyarrow.parquet as pq

    n, out = 200, root / "out"
    procs = [_flows_edit(root, files, n, out, tag) for tag in ("a", "b")]
    res = {"inputs": 1, "good_items": n, "good_items_lost": 0, "unaccounted": 0, "escaped": 0, "runs": []}
    edited = 0
    for proc, log in procs:
        try:
            rc = proc.wait(600)
        except Exception:  # noqa: BLE001 - a coordinator that never ends
            proc.kill()
            rc = None
        text = log.read_text(errors="replace")
        got = [ln for ln in text.splitlines() if "'edited':" in ln]
        k = int(got[-1].split("'edited':")[1].split(",")[0]) if got else 0
        edited += k
        refusal = [ln for ln in text.splitlines() if "error:" in ln]
        res["runs"].append({"rc": rc, "edited": k, "refusal": refusal[-1][-200:] if refusal else None})
        res["escaped"] += "Traceback" in text or rc not in (0, 2)
    res["edits_total"] = edited
    res["unaccounted"] += edited != n  # twice the GPU time (or lost items) if not exactly n
    rows = pq.read_table(out / "edit" / "results.parquet", columns=["id"]).column("id").to_pylist()
    res["good_items_lost"] += len(set(rows)) != n
    res["unaccounted"] += len(rows) != n
    return res


def child_orphans(files: Path, root: Path) -> dict:
    """`python -m flows edit` SIGKILLed mid-run (outputs being written): every process it started,
    its temporary Prefect server among them, is gone within 10 s; then a re-run finishes the job
    without redoing what the killed run wrote."""
    import signal
    import time

    import psutil

    n, out = 2000, root / "out"
    proc, log = _flows_edit(root, files, n, out, "killed")
    edits = out / "edit" / "edits"
    res = {"inputs": 1, "good_items": n, "good_items_lost": 0, "unaccounted": 0, "escaped": 0}
    deadline = time.monotonic() + 300
    while not (edits.exists() and any(edits.iterdir())) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    children = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
    res["servers_seen"] = sum("create_app" in " ".join(c.cmdline()) for c in children)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    end = time.monotonic() + 10
    alive = children
    while alive and time.monotonic() < end:
        alive = [c for c in alive if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.2)
    res["orphaned_processes"] = len(alive)
    for c in alive:  # leave nothing behind on the bench machine either
        c.kill()
    res["unaccounted"] += len(alive) + (res["servers_seen"] != 1)
    before = {p.name: p.stat().st_mtime_ns for p in edits.glob("*.png")}
    proc, log = _flows_edit(root, files, n, out, "rerun")
    rc = proc.wait(900)
    text = log.read_text(errors="replace")
    res["rerun_rc"] = rc
    res["escaped"] += rc != 0 or "Traceback" in text
    after = {p.name: p.stat().st_mtime_ns for p in edits.glob("*.png")}
    res["outputs_before_kill"] = len(before)
    res["rewritten_after_resume"] = sum(after.get(k) != v for k, v in before.items())
    res["good_items_lost"] += n - len(after)
    res["unaccounted"] += res["rewritten_after_resume"]
    return res


# --- masks-store rows that lie ----------------------------------------------------------------

def _store_row(image_id: str, h: int, w: int, counts: str, area: int, bbox: list[int], mask_id: int = 0) -> dict:
    """One row of lcd.masks.store.MASK_SCHEMA, written as another tool (or an attacker) could."""
    return {"image_id": image_id, "image": f"{image_id}.png", "image_sha256": "ab" * 32, "width": w, "height": h,
            "mask_id": mask_id, "source": "auto", "prompt_index": None, "multimask_index": None, "prompt": None,
            "rle": {"size": [h, w], "counts": counts}, "bbox": bbox, "area": area, "predicted_iou": 0.9,
            "stability_score": 0.95, "model": {"type": "vit_tiny", "ref": "r", "sha256": "s", "revision": None}}


def child_masks(files: Path, root: Path) -> dict:
    """A masks store holding good rows for three scenes, rows that claim 10^9 x 10^9 and 40,000 x
    40,000 pixels, a size other than the image's, counts that do not sum or run negative, and
    10^5 tiny masks for one more scene; one noop shard selects `sam:largest` for each: the bad
    ones fail naming the store, the good ones (the 10^5-mask scene among them) are edited, and
    the child's peak RSS (reliability.py's peak_rss_mb) stays small."""
    import numpy as np
    from PIL import Image

    from lcd.config import EditConfig, ModelsConfig
    from lcd.jobs.editing import run_edit_shard
    from lcd.jobs.manifest import ManifestItem
    from lcd.masks.rle import counts_to_string, encode_rle
    from lcd.masks.store import write_part

    h, w = 32, 32
    scenes = root / "scenes"
    scenes.mkdir()
    rows = []
    sq = np.zeros((h, w), bool)
    sq[8:24, 8:24] = True
    good = ["good0", "good1", "good2", "many"]
    for g in good[:3]:
        rows.append(_store_row(g, h, w, encode_rle(sq)["counts"], int(sq.sum()), [8, 8, 16, 16]))
    for k in range(100_000):  # 10^5 one-pixel masks (and one 16x16) for one image
        y, x = divmod(k % (h * w), w)
        rows.append(_store_row("many", h, w, counts_to_string(np.array([y * w + x, 1, h * w - y * w - x - 1])),
                               1, [x, y, 1, 1], k))
    rows.append(_store_row("many", h, w, encode_rle(sq)["counts"], int(sq.sum()), [8, 8, 16, 16], 100_000))
    bad = {
        "giant": _store_row("giant", 10**9, 10**9, "0", 0, [0, 0, 1, 1]),
        "big40k": _store_row("big40k", 40_000, 40_000, counts_to_string(np.array([40_000**2 - 100, 100])), 100,
                             [0, 0, 1, 1]),
        "othersize": _store_row("othersize", 16, 16, encode_rle(sq[:16, :16])["counts"], 64, [8, 8, 8, 8]),
        "short": _store_row("short", h, w, counts_to_string(np.array([h * w - 1])), 0, [0, 0, 0, 0]),
        "negative": _store_row("negative", h, w, counts_to_string(np.array([h * w + 5, -5])), 0, [0, 0, 0, 0]),
    }
    rows += list(bad.values())
    ids = list(dict.fromkeys(r["image_id"] for r in rows))
    n_masks = {i: sum(r["image_id"] == i for r in rows) for i in ids}
    listing = [{"image_id": i, "image_sha256": "ab" * 32, "width": w, "height": h, "n_masks": n_masks[i],
                "settings": "k"} for i in ids]
    store = root / "store"
    write_part(store, rows, listing, {}, 4096, codec="zstd", level=1)
    del rows
    rng = np.random.default_rng(0)
    for i in ids:
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(scenes / f"{i}.png")
    items = [ManifestItem(id=f"e-{i}", image=str(scenes / f"{i}.png"), select="sam:largest", prompt="a dog")
             for i in ids]
    res = {"inputs": len(bad), "good_items": len(good), "good_items_lost": 0, "unaccounted": 0, "escaped": 0}
    try:
        rep = run_edit_shard(items, out_root=root / "out", cfg=EditConfig(size=64), models=ModelsConfig(),
                             engine="noop", masks_store=store)
    except Exception as e:  # noqa: BLE001 - an exception out of the shard is what this counts
        res.update(escaped=1, good_items_lost=len(good), error=f"{type(e).__name__}: {e}"[:300])
        return res
    edited = {r["id"] for r in rep.results if r["status"] == "edited"}
    failed = {f["id"]: f["message"] for f in rep.failures}
    res["good_items_lost"] = sum(f"e-{g}" not in edited for g in good)
    res["unaccounted"] = sum(f"e-{b}" not in failed or str(store) not in failed[f"e-{b}"] for b in bad)
    res["failures"] = {i: m[-150:] for i, m in failed.items()}
    return res
