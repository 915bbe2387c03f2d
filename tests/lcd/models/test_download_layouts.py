"""Every layout users download of a diffusers SD model loads through `lcd edit --model` with the
plain layout's pixels: fp16-variant files only (`huggingface-cli download --include
"*.fp16.safetensors"`), `.bin` pickles only, safetensors with `.bin` beside, a component of each,
sharded weights, two variants side by side chosen by models.variant / --variant, and the hub
cache (blobs, refs/main, snapshots of symlinks) given as a hub id offline, as the snapshot or as
the cache's repository folder. The pin hashes the files read and nothing beside them, and the
trust checks refuse hostile folders in each layout."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lcd.cli import main
from lcd.errors import ModelLoadError
from lcd.io.hashing import sha256_tree
from lcd.io.images import load_image, read_png_meta
from lcd.models.loader import load_sd_pipeline
from lcd.models.sources import local_source

from tests.conftest import REPO, SAMPLES

REPO_ID = "someone/tiny-sd"
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
FP16 = ("text_encoder/model.fp16.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors")


def _weights_only(folder: Path, keep) -> None:
    """Remove every weights file of `folder` whose name `keep` refuses."""
    for f in folder.rglob("*"):
        if f.suffix in (".safetensors", ".bin") and not keep(f.name):
            f.unlink()


@pytest.fixture(scope="module")
def layouts(tiny_dir, tmp_path_factory) -> dict[str, Path]:
    """The tiny SD with fp16-rounded weights in every layout, plus `other`: a second model
    (seed 1) standing in for the non_ema weights of SD1.5's repository."""
    root = tmp_path_factory.mktemp("layouts")
    pipe = load_sd_pipeline(tiny_dir / "sd").pipe
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):  # the values fp16 files can hold exactly
        m.to(torch.float16).to(torch.float32)
    out = {k: root / k for k in ("plain", "fp16", "bin", "bin16", "other", "full", "two", "fp16dl", "shard")}
    pipe.save_pretrained(out["plain"])
    pipe.save_pretrained(out["bin"], safe_serialization=False)
    pipe.save_pretrained(out["shard"], max_shard_size="40KB")
    pipe.to(torch.float16).save_pretrained(out["fp16"], variant="fp16")
    pipe.save_pretrained(out["bin16"], variant="fp16", safe_serialization=False)
    pipe.to(torch.float32)
    other = load_sd_pipeline(write_other(root / "other-src")).pipe
    other.save_pretrained(out["other"])
    other.save_pretrained(root / "non_ema", variant="non_ema")
    other.save_pretrained(root / "other-bin", safe_serialization=False)
    # SD1.5's repository: one set of configs; plain, fp16 and non_ema weights side by side (and
    # here .bin files of other weights too)
    shutil.copytree(out["plain"], out["full"])
    for src in (out["fp16"], root / "non_ema", root / "other-bin"):
        for f in src.rglob("*"):
            if f.suffix in (".safetensors", ".bin"):
                shutil.copy(f, out["full"] / f.relative_to(src))
    # what `--include "*.fp16.safetensors" "*.non_ema.safetensors" "*.json" "*.txt"` downloads of
    # it: two variants, no plain file; and `--include "*.fp16.safetensors" ...`: fp16 only
    shutil.copytree(out["full"], out["two"])
    _weights_only(out["two"], lambda n: ".fp16." in n or n.endswith(".non_ema.safetensors"))
    shutil.copytree(out["full"], out["fp16dl"])
    _weights_only(out["fp16dl"], lambda n: ".fp16.safetensors" in n)
    return out


def write_other(dest: Path) -> Path:
    from lcd.models.tiny import write_tiny_sd

    return write_tiny_sd(dest, seed=1)


@pytest.fixture(scope="module")
def params_file(tmp_path_factory) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["edit"].update(steps=2, size=64)
    p = tmp_path_factory.mktemp("params") / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def _edit(params: Path, out: Path, *extra: str) -> int:
    return main(["--params", str(params), "edit", "--image", str(SAMPLES / "scenes/cat_00.jpg"),
                 "--mask", str(SAMPLES / "masks/cat_00.png"), "--prompt", "a photo of a dog", "--out", str(out),
                 *extra])


@pytest.fixture(scope="module")
def reference(layouts, params_file, tmp_path_factory) -> dict[str, np.ndarray]:
    """Pixels of the plain folder and of the other weights' plain folder."""
    d = tmp_path_factory.mktemp("ref")
    px = {}
    for k in ("plain", "other"):
        assert _edit(params_file, d / f"{k}.png", "--model", str(layouts[k])) == 0
        px[k] = load_image(d / f"{k}.png")
    assert not np.array_equal(px["plain"], px["other"])  # the two weights are told apart by pixels
    return px


def _state(lp) -> dict[str, torch.Tensor]:
    p = lp.pipe
    return {f"{n}.{k}": v for n, m in (("unet", p.unet), ("vae", p.vae), ("te", p.text_encoder))
            for k, v in m.state_dict().items()}


def _same_state(a, b) -> bool:
    sa, sb = _state(a), _state(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _pixels_of(params, tmp_path, model, *extra) -> np.ndarray:
    out = tmp_path / f"e{time.monotonic_ns()}.png"
    assert _edit(params, out, "--model", str(model), *extra) == 0
    return load_image(out)


def test_fp16_variant_folder_loads_as_float32_with_the_plain_weights_and_pixels(layouts, params_file, reference,
                                                                               tmp_path):
    lp = load_sd_pipeline(layouts["fp16"])  # no variant asked: the only one there
    assert lp.pipe.unet.dtype == torch.float32
    assert _same_state(lp, load_sd_pipeline(layouts["plain"]))
    assert lp.source.variant == "fp16" and lp.source.weights == FP16
    out = tmp_path / "fp16.png"
    assert _edit(params_file, out, "--model", str(layouts["fp16"])) == 0
    assert np.array_equal(load_image(out), reference["plain"])
    src = read_png_meta(out)["model_source"]
    assert src["variant"] == "fp16" and src["weights"] == list(FP16) and src["kind"] == "folder"


def test_bin_only_folder_loads_with_the_plain_pixels(layouts, params_file, reference, tmp_path):
    lp = load_sd_pipeline(layouts["bin"])
    assert lp.source.weights == ("text_encoder/pytorch_model.bin", "unet/diffusion_pytorch_model.bin",
                                 "vae/diffusion_pytorch_model.bin")
    assert _same_state(lp, load_sd_pipeline(layouts["plain"]))
    assert np.array_equal(_pixels_of(params_file, tmp_path, layouts["bin"]), reference["plain"])
    # fp16 pickles only (`*.fp16.bin`): found unasked, read as float32
    lp = load_sd_pipeline(layouts["bin16"])
    assert lp.source.variant == "fp16" and lp.source.weights[1] == "unet/diffusion_pytorch_model.fp16.bin"
    assert _same_state(lp, load_sd_pipeline(layouts["plain"]))
    assert np.array_equal(_pixels_of(params_file, tmp_path, layouts["bin16"]), reference["plain"])


def test_safetensors_are_read_before_bin_beside_them_and_each_component_reads_its_own(layouts, params_file,
                                                                                     reference, tmp_path):
    # plain safetensors with the other weights' .bin beside: the .bin is neither read nor pinned
    mixed = tmp_path / "mixed"
    shutil.copytree(layouts["plain"], mixed)
    for f in layouts["full"].rglob("*.bin"):
        if ".non_ema." not in f.name and ".fp16." not in f.name:
            shutil.copy(f, mixed / f.relative_to(layouts["full"]))
    lp = load_sd_pipeline(mixed)
    assert all(w.endswith(".safetensors") for w in lp.source.weights)
    assert lp.source.sha256 == local_source(layouts["plain"]).sha256
    assert np.array_equal(_pixels_of(params_file, tmp_path, mixed), reference["plain"])
    # a UNet of .bin only beside safetensors text encoder and VAE: each component its own file
    per = tmp_path / "per-component"
    shutil.copytree(layouts["plain"], per)
    (per / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    shutil.copy(layouts["bin"] / "unet" / "diffusion_pytorch_model.bin", per / "unet")
    lp = load_sd_pipeline(per)
    assert lp.source.weights[1] == "unet/diffusion_pytorch_model.bin"
    assert lp.source.weights[2] == "vae/diffusion_pytorch_model.safetensors"
    assert np.array_equal(_pixels_of(params_file, tmp_path, per), reference["plain"])


def test_sharded_weights_load_and_pin_every_shard(layouts, params_file, reference, tmp_path):
    lp = load_sd_pipeline(layouts["shard"])
    assert lp.source.weights[1] == "unet/diffusion_pytorch_model.safetensors.index.json"
    assert _same_state(lp, load_sd_pipeline(layouts["plain"]))
    before = lp.source.sha256
    copy = tmp_path / "shard"
    shutil.copytree(layouts["shard"], copy)
    shard = sorted((copy / "unet").glob("diffusion_pytorch_model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-1] + b" ")  # one byte of one shard
    assert local_source(copy).sha256 != before
    assert np.array_equal(_pixels_of(params_file, tmp_path, layouts["shard"]), reference["plain"])


@pytest.mark.slow
def test_two_variants_side_by_side_are_chosen_by_models_variant(layouts, params_file, reference, tmp_path):
    two = layouts["two"]
    with pytest.raises(ModelLoadError, match=r"/text_encoder: weights of variants 'fp16', 'non_ema' and no plain "
                                             r"file; set models.variant \(lcd edit --variant\) to choose one$"):
        load_sd_pipeline(two)
    assert np.array_equal(_pixels_of(params_file, tmp_path, two, "--variant", "fp16"), reference["plain"])
    assert np.array_equal(_pixels_of(params_file, tmp_path, two, "--variant", "non_ema"), reference["other"])
    # the setting in the params file does the same as the option
    raw = yaml.safe_load(params_file.read_text())
    raw["models"]["variant"] = "non_ema"
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    out = tmp_path / "v.png"
    assert _edit(p, out, "--model", str(two)) == 0
    assert np.array_equal(load_image(out), reference["other"])
    assert read_png_meta(out)["model_source"]["variant"] == "non_ema"
    # SD1.5's layout (plain files too): unset reads the plain files, a variant its own
    full = layouts["full"]
    assert np.array_equal(_pixels_of(params_file, tmp_path, full), reference["plain"])
    assert np.array_equal(_pixels_of(params_file, tmp_path, full, "--variant", "non_ema"), reference["other"])


def test_a_missing_variant_is_refused_in_one_line_naming_folder_variant_and_files(layouts, params_file, tmp_path,
                                                                                  capsys):
    with pytest.raises(ModelLoadError, match=rf"^{layouts['fp16']}: no weights of variant 'bf16' in any component "
                                             r"\(there: text_encoder: model.fp16.safetensors; unet: "
                                             r"diffusion_pytorch_model.fp16.safetensors; vae: .*\)"):
        load_sd_pipeline(layouts["fp16"], variant="bf16")
    capsys.readouterr()
    assert _edit(params_file, tmp_path / "o.png", "--model", str(layouts["fp16"]), "--variant", "non_ema") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no weights of variant 'non_ema'" in err and str(layouts["fp16"]) in err
    assert not (tmp_path / "o.png").exists()
    # a component with no weights at all names itself and what it holds
    bare = tmp_path / "bare"
    shutil.copytree(layouts["fp16"], bare)
    (bare / "vae" / "diffusion_pytorch_model.fp16.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"/vae: no weights \(diffusion_pytorch_model\[\.<variant>\]\.safetensors "
                                             r"or \.bin\); there: config.json$"):
        load_sd_pipeline(bare)


@pytest.mark.parametrize("bad", ["../x", "fp16 ", "", "a/b"])
def test_a_variant_that_is_not_a_name_is_refused(bad, layouts, params_file, tmp_path, capsys):
    from pydantic import ValidationError

    from lcd.models.config import ModelsConfig

    with pytest.raises(ValidationError, match="variant"):
        ModelsConfig(variant=bad)
    assert _edit(params_file, tmp_path / "o.png", "--model", str(layouts["fp16"]), "--variant", bad) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a variant is a name like fp16" in err


def hub_cache(root: Path, src: Path, commit: str = COMMIT, repo_id: str = REPO_ID) -> Path:
    """`src` as huggingface_hub caches it: blobs by hash, a snapshot of relative symlinks,
    refs/main naming the commit."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / f.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return repo


def test_hub_cache_with_variants_by_snapshot_and_repository_folder(layouts, params_file, reference, tmp_path):
    repo = hub_cache(tmp_path / "hub", layouts["full"])
    snap = repo / "snapshots" / COMMIT
    assert (snap / FP16[1]).is_symlink()
    lp = load_sd_pipeline(snap, variant="fp16")
    assert lp.source.weights == FP16
    assert lp.source.sha256 == local_source(layouts["fp16dl"]).sha256  # the same files read: the same pin
    assert np.array_equal(_pixels_of(params_file, tmp_path, snap, "--variant", "fp16"), reference["plain"])
    # the cache's repository folder: its refs/main snapshot, pinned by content and commit
    lp = load_sd_pipeline(repo, variant="non_ema")
    assert lp.source.revision == COMMIT and lp.source.variant == "non_ema"
    assert np.array_equal(_pixels_of(params_file, tmp_path, repo, "--variant", "non_ema"), reference["other"])
    with pytest.raises(ModelLoadError, match=r"models--someone--tiny-sd: a hub cache folder without refs/dev "
                                             r"\(refs there: main\)$"):
        load_sd_pipeline(repo, revision="dev")
    # what `--include "*.fp16.safetensors" "*.json" "*.txt"` caches: found without being asked
    only = hub_cache(tmp_path / "hub16", layouts["fp16"])
    assert load_sd_pipeline(only).source.weights == FP16


@pytest.mark.slow
def test_hub_id_offline_reads_the_cached_variant(layouts, reference, tmp_path):
    hub_cache(tmp_path / "hub", layouts["two"])
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["models"].update(sd=REPO_ID, variant="fp16")
    raw["edit"].update(steps=2, size=64)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path / "hf")}
    run = subprocess.run([sys.executable, "-m", "lcd", "--params", "params.yaml", "edit",
                          "--image", str(SAMPLES / "scenes/cat_00.jpg"), "--mask", str(SAMPLES / "masks/cat_00.png"),
                          "--prompt", "a photo of a dog", "--out", "o.png"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert np.array_equal(load_image(tmp_path / "o.png"), reference["plain"])
    src = read_png_meta(tmp_path / "o.png")["model_source"]
    assert src == {"ref": REPO_ID, "kind": "hub", "sha256": None, "revision": COMMIT, "variant": "fp16",
                   "weights": list(FP16)}


def test_the_pin_hashes_the_files_read_and_nothing_beside_them(layouts, tmp_path):
    from lcd.jobs.hashes import model_pin

    plain = local_source(layouts["plain"])
    assert plain.sha256 == sha256_tree(layouts["plain"])  # plain folders keep their earlier pins
    fp16 = local_source(layouts["fp16dl"]).sha256
    assert local_source(layouts["full"], "fp16").sha256 == fp16 == local_source(layouts["two"], "fp16").sha256
    assert local_source(layouts["fp16"]).sha256 != fp16  # its text encoder's config says float16: read, pinned
    assert model_pin(str(layouts["full"]), None, "fp16") == fp16
    assert model_pin(str(layouts["full"]), None, "non_ema") != fp16
    assert model_pin(str(layouts["full"]), None) == plain.sha256  # the .bin, fp16 and non_ema files unread
    assert model_pin(REPO_ID, None, "fp16") != model_pin(REPO_ID, None)
    from lcd.regset.build import sd_model_pin  # the regset's generation cache pins the same files

    assert sd_model_pin(str(layouts["two"]), "fp16") == fp16
    copy = tmp_path / "two"
    shutil.copytree(layouts["two"], copy)
    f = copy / "unet" / "diffusion_pytorch_model.non_ema.safetensors"
    f.write_bytes(f.read_bytes()[:-1] + b" ")
    assert local_source(copy, "fp16").sha256 == fp16  # an unread variant changed: the same pin
    assert local_source(copy, "non_ema").sha256 != local_source(layouts["two"], "non_ema").sha256


HOSTILE_INDEX = '{"_class_name": "StableDiffusionPipeline", "unet": ["mal.payload", "UNet2DConditionModel"]}'


@pytest.mark.parametrize("layout", ["fp16", "bin", "two", "shard", "snapshot", "repository"])
def test_hostile_model_index_is_refused_in_every_layout(layout, layouts, tmp_path):
    if layout in ("snapshot", "repository"):
        src = tmp_path / "src"
        shutil.copytree(layouts["fp16"], src)
        (src / "model_index.json").write_text(HOSTILE_INDEX)
        repo = hub_cache(tmp_path / "hub", src)
        ref = repo / "snapshots" / COMMIT if layout == "snapshot" else repo
    else:
        ref = tmp_path / layout
        shutil.copytree(layouts[layout], ref)
        (ref / "model_index.json").write_text(HOSTILE_INDEX)
    with pytest.raises(ModelLoadError, match=r"model_index.json: component 'unet' names library 'mal.payload', "
                                             r"not diffusers .*refusing to import code from a model folder"):
        load_sd_pipeline(ref, variant="fp16" if layout == "two" else None)


def test_a_pickle_naming_code_in_a_bin_layout_is_refused_unrun(layouts, tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    folder = tmp_path / "bin"
    shutil.copytree(layouts["bin"], folder)
    torch.save({"conv_in.weight": Payload()}, folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"unet/diffusion_pytorch_model.bin: cannot read unet weights: "
                                             r"UnpicklingError: refused by torch's weights-only unpickler") as e:
        load_sd_pipeline(folder)
    assert "\n" not in str(e.value) and not (tmp_path / "ran").exists()


@pytest.mark.parametrize("shard, match", [
    ("../../../etc/passwd", r"shard '\.\./\.\./\.\./etc/passwd' is not a file name beside the index"),
    ("nul\x00.safetensors", r"shard 'nul\\x00.safetensors' is not a file name beside the index"),
    (["x.safetensors"], r"'weight_map' values must be shard file names, got list"),
    ("gone.safetensors", r"shard gone.safetensors is missing$"),
])
def test_shard_indexes_naming_anything_but_shards_beside_them_are_refused(shard, match, layouts, tmp_path):
    import json

    folder = tmp_path / "shard"
    shutil.copytree(layouts["shard"], folder)
    index = folder / "vae" / "diffusion_pytorch_model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"][sorted(data["weight_map"])[0]] = shard
    index.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=r"vae/diffusion_pytorch_model.safetensors.index.json: " + match) as e:
        load_sd_pipeline(folder)
    assert "\n" not in str(e.value)


def test_the_run_precheck_reads_a_hub_cache_folder_through_its_snapshot(layouts, tmp_path):
    """`python -m flows` checks models.sd before a run: a cache repository folder is checked
    at its snapshot (not refused for having no model_index.json), and refused when hostile."""
    from lcd.models.config import ModelsConfig
    from lcd.models.loader import check_local_models

    check_local_models(ModelsConfig(sd=str(hub_cache(tmp_path / "ok", layouts["fp16"]))))
    src = tmp_path / "src"
    shutil.copytree(layouts["fp16"], src)
    (src / "model_index.json").write_text(HOSTILE_INDEX)
    with pytest.raises(ModelLoadError, match=r"snapshots/.*/model_index.json: component 'unet' names library"):
        check_local_models(ModelsConfig(sd=str(hub_cache(tmp_path / "bad", src))))


def test_snapshot_links_to_devices_are_never_read(layouts, tmp_path):
    """A weights link to /dev/zero is no weights file (hashing it would never end); a config
    link to it is refused by the trust check."""
    repo = hub_cache(tmp_path / "hub", layouts["fp16"])
    snap = repo / "snapshots" / COMMIT
    w = snap / FP16[2]
    w.unlink()
    w.symlink_to("/dev/zero")
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError, match=r"/vae: no weights .*there: config.json, "
                                             r"diffusion_pytorch_model.fp16.safetensors \(not a regular file\)$"):
        load_sd_pipeline(snap)
    assert time.monotonic() - t0 < 30
    w.unlink()  # a blob that never finished downloading: the snapshot's link points at nothing
    w.symlink_to(snap / "blobs-gone" / "0123")
    with pytest.raises(ModelLoadError, match=r"/vae: no weights .*diffusion_pytorch_model.fp16.safetensors "
                                             r"\(broken link\)$"):
        load_sd_pipeline(snap)
    cfg = snap / "unet" / "config.json"
    cfg.unlink()
    cfg.symlink_to("/dev/zero")
    with pytest.raises(ModelLoadError, match=r"unet/config.json: not a regular file"):
        load_sd_pipeline(snap)


# stable-diffusion-v1-5/stable-diffusion-v1-5's files (tokenizer and configs shortened)
SD15_REPO = ["model_index.json", "v1-5-pruned.ckpt", "v1-5-pruned.safetensors", "v1-5-pruned-emaonly.safetensors",
             "v1-inference.yaml", "feature_extractor/preprocessor_config.json", "safety_checker/config.json",
             "safety_checker/model.fp16.safetensors", "safety_checker/model.safetensors",
             "safety_checker/pytorch_model.bin", "scheduler/scheduler_config.json", "text_encoder/config.json",
             "text_encoder/model.fp16.safetensors", "text_encoder/model.safetensors", "text_encoder/pytorch_model.bin",
             "tokenizer/vocab.json", "tokenizer/merges.txt", "unet/config.json", "unet/diffusion_pytorch_model.bin",
             "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.non_ema.safetensors",
             "unet/diffusion_pytorch_model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors",
             "vae/diffusion_pytorch_model.safetensors"]


def test_hub_downloads_take_only_what_the_layout_reads_first():
    """What snapshot_download would fetch of SD1.5's repository in each round (huggingface_hub's
    own pattern filter): fp16 first, then all safetensors, then pickles; never the 4 GB
    single-file checkpoints at the top nor the safety checker's weights."""
    from huggingface_hub.utils import filter_repo_objects

    from lcd.models.loader import sd_hub_rounds

    def fetched(patterns):
        return sorted(filter_repo_objects(SD15_REPO, allow_patterns=patterns))

    configs = ["model_index.json", "feature_extractor/preprocessor_config.json", "safety_checker/config.json",
               "scheduler/scheduler_config.json", "text_encoder/config.json", "tokenizer/merges.txt",
               "tokenizer/vocab.json", "unet/config.json", "vae/config.json"]
    first, second, third = sd_hub_rounds("fp16")
    assert fetched(first) == sorted(configs + list(FP16))
    assert fetched(second) == sorted(configs + [n for n in SD15_REPO if n.endswith(".safetensors")
                                                and "/" in n and not n.startswith("safety")])
    assert set(fetched(third)) - set(fetched(second)) == {"text_encoder/pytorch_model.bin",
                                                          "unet/diffusion_pytorch_model.bin"}
    assert fetched(sd_hub_rounds(None)[0]) == fetched(second)


def test_a_config_only_folder_still_configures_a_single_file(tiny_dir, tmp_path):
    """models.sd_single_file_config may be a folder of configs without weights (what lcd ships
    for SD1.5): it is not a model to pick weights from."""
    from safetensors.torch import load_file

    from lcd.models.ldm_format import save_single_file

    cfg = tmp_path / "configs"
    shutil.copytree(tiny_dir / "sd", cfg, ignore=shutil.ignore_patterns("*.safetensors"))
    base = load_sd_pipeline(tiny_dir / "sd")
    ckpt = save_single_file(base.pipe, tmp_path / "m.safetensors")
    lp = load_sd_pipeline(ckpt, single_file_config=cfg)
    assert lp.source.kind == "single_file" and len(load_file(str(ckpt))) > 0
    assert _same_state(lp, base)


@pytest.mark.slow
def test_a_hub_id_offline_without_the_revision_cached_is_one_line(layouts, tmp_path):
    hub_cache(tmp_path / "hub", layouts["fp16dl"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path / "hf")}
    code = ("from lcd.models.loader import load_sd_pipeline\n"
            f"load_sd_pipeline({REPO_ID!r}, revision='dev')")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"lcd.errors.ModelLoadError: {REPO_ID}: cannot resolve hub model (revision dev): ")
    msg = last.split("ModelLoadError: ", 1)[1]
    assert len(msg) < 400
