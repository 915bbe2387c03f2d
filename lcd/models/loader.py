"""The one place model weights are loaded: Stable Diffusion, SAM and CLIP.

Each loader takes a reference (hub id, local folder or checkpoint file), a dtype and a device,
and returns the model plus the `ModelSource` that pins it. Pickled checkpoints are only read with
`weights_only=True` (diffusers' own `load_state_dict` does so for `.ckpt`; SAM below likewise),
so a checkpoint can never execute code; and every folder's configs are checked
(lcd.models.trust) before diffusers or transformers reads them, so a folder cannot name a
module to import either. `trust_remote_code` is never passed.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from lcd.errors import ModelLoadError
from lcd.io.torchfile import error_line, load_weights
from lcd.models.trust import check_open_clip_config, check_sd_folder, check_transformers_folder
from lcd.models.layout import WEIGHT_COMPONENTS, FolderLayout, check_variant, hub_cache_snapshot, sd_layout
from lcd.models.sources import (SINGLE_FILE_SUFFIXES, ModelSource, content_source, is_hub_id, layout_source,
                                local_source)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SD_WEIGHT_PATTERNS = ["*.json", "*.txt", "*.safetensors"]


def to_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}", item="dtype")
    return DTYPES[dtype]


def check_device(device: str | torch.device) -> torch.device:
    """A device string -> torch.device, or a one-line error before any weights load: an unknown
    name, or cuda/mps on a machine where PyTorch sees none."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ModelLoadError(f"device {device!r} is not a torch device (cpu, cuda, cuda:N, mps): {e}",
                             item="device") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r}: PyTorch sees no CUDA GPU on this machine "
                             "(torch.cuda.is_available() is False); use --device cpu", item="device")
    if d.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {device!r}: no Apple MPS device here; use --device cpu", item="device")
    return d


def _hub_snapshot(ref: str, revision: str | None, patterns: list[str]) -> tuple[Path, ModelSource]:
    """Resolve a hub id to a local snapshot (download or cache) pinned by its commit."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(ref, revision=revision, allow_patterns=patterns))
    except Exception as e:  # offline, unknown repo, bad revision: all user-facing
        raise ModelLoadError(
            f"{ref}: cannot resolve hub model (revision {revision or 'main'}): {error_line(e)}",
            item=ref,
        ) from None
    return path, ModelSource(ref=ref, kind="hub", revision=path.name)


SD_CONFIG_PATTERNS = ["model_index.json", "*/*.json", "*/*.txt"]


def sd_hub_rounds(variant: str | None) -> list[list[str]]:
    """What to download of a hub SD repository, narrowest first: configs and the components'
    weights (never the single-file checkpoints at the top of SD1.5's repository), with a variant
    its files only; then all safetensors (a component without the variant reads its plain file);
    then the `.bin` pickles of a repository that has no safetensors. Each round adds to the one
    before; the next runs only when the folder's layout still lacks weights."""
    def weights(*names: str) -> list[str]:
        return [f"{c}/{n}" for c in WEIGHT_COMPONENTS for n in names]  # not the safety checker's

    rounds = [weights(f"*.{variant}.safetensors", f"*.{variant}-*.safetensors")] if variant else []
    rounds += [weights("*.safetensors"), weights("*.bin")]
    return [SD_CONFIG_PATTERNS + [p for r in rounds[: i + 1] for p in r] for i in range(len(rounds))]


def _sd_hub_folder(ref: str, revision: str | None, variant: str | None) -> tuple[Path, FolderLayout, str]:
    """A hub id -> (its checked snapshot, the layout read, the commit), downloading no more than
    the layout needs (sd_hub_rounds). Offline (HF_HUB_OFFLINE=1) the cache is read as it is."""
    from huggingface_hub import constants

    rounds = sd_hub_rounds(variant)
    for i, patterns in enumerate(rounds):
        path, source = _hub_snapshot(ref, revision, patterns)
        revision = source.revision  # later rounds: the same commit
        check_sd_reference(path)
        if not (path / "model_index.json").exists():
            raise ModelLoadError(f"{ref}: not a diffusers pipeline repository (no model_index.json)", item=ref)
        try:
            return path, sd_layout(path, variant), source.revision
        except ModelLoadError:
            if constants.HF_HUB_OFFLINE or i == len(rounds) - 1:
                raise
    raise AssertionError("unreachable")


def resolve(ref: str | Path, revision: str | None = None, patterns: list[str] | None = None,
            check: Callable[[Path], None] | None = None):
    """Reference -> (local path, ModelSource). Missing local paths are a clear error. `check`
    runs on the local path (a hub snapshot once downloaded) before it is hashed or loaded."""
    ref = str(ref)
    if is_hub_id(ref):
        path, source = _hub_snapshot(ref, revision, patterns or SD_WEIGHT_PATTERNS)
        if check is not None:
            check(path)
        return path, source
    p = Path(ref)
    if not p.exists():
        raise ModelLoadError(f"{ref}: model path not found (and not a hub id 'owner/name')", item=ref)
    if check is not None:
        check(p)
    return p, content_source(p, ref)  # SD model folders resolve through resolve_sd


def resolve_sd(ref: str | Path, revision: str | None = None, variant: str | None = None):
    """An SD reference -> (local path, ModelSource, FolderLayout or None for a single file).

    A hub id (downloaded or read from the cache, HF_HUB_OFFLINE=1 included), a hub cache
    repository folder (`models--owner--name`: its snapshot of `revision`, default refs/main), a
    snapshot or any diffusers folder, or one checkpoint file. A folder is checked
    (lcd.models.trust) before anything else of it is read; its layout says which weight files
    of which variant load, and the pin hashes those (hub ids: the commit)."""
    ref = str(ref)
    check_variant(variant)
    if is_hub_id(ref):
        path, layout, commit = _sd_hub_folder(ref, revision, variant)
        return path, layout_source(ref, layout, kind="hub", revision=commit), layout
    path, commit = Path(ref), None
    if not path.exists():
        raise ModelLoadError(f"{ref}: model path not found (and not a hub id 'owner/name')", item=ref)
    if path.is_dir() and (snap := hub_cache_snapshot(path, revision)) is not None:
        path, commit = snap
    check_sd_reference(path)
    if not path.is_dir():
        return path, local_source(path), None
    if not (path / "model_index.json").exists():
        raise ModelLoadError(f"{ref}: not a diffusers pipeline folder (no model_index.json)", item=ref)
    layout = sd_layout(path, variant)
    return path, layout_source(ref, layout, revision=commit), layout


def check_sd_reference(path: Path, revision: str | None = None) -> None:
    """A diffusers folder (a hub cache repository folder: its snapshot of `revision`) names only
    known libraries and classes (lcd.models.trust); a single file holds tensors only (read with
    weights_only / safetensors)."""
    if path.is_dir():
        snap = hub_cache_snapshot(path, revision)
        check_sd_folder(snap[0] if snap is not None else path)


def check_local_models(models, names: tuple[str, ...] = ("sd",)) -> None:
    """Check the local folders a `ModelsConfig` names for `names` ("sd": the SD reference and its
    single-file config; "clip") before a run starts, so a folder naming code is refused once, in
    one line, not per item. Hub ids are checked once downloaded, by the loaders themselves."""
    refs = {"sd": [(models.sd, lambda p: check_sd_reference(p, models.sd_revision)),
                   (models.sd_single_file_config, check_sd_folder)],
            "clip": [(models.clip, lambda p: check_transformers_folder(p, "CLIP"))]}
    for name in names:
        for ref, check in refs[name]:
            if ref is not None and Path(ref).exists():
                check(Path(ref))


@contextmanager
def quiet_unpickler() -> Iterator[None]:
    """Hide torch's weights-only unpickler warning ("Detected pickle protocol 4 ..."), raised
    while diffusers reads a `.ckpt` (with weights_only=True): read or refused in one line, with
    no warning line before it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        yield


@dataclass
class LoadedPipeline:
    """A diffusers SD pipeline (4- or 9-channel UNet) and the source that pins it."""

    pipe: Any
    source: ModelSource

    @property
    def is_inpaint_model(self) -> bool:
        return self.pipe.unet.config.in_channels == 9

    @property
    def latent_factor(self) -> int:
        """Pixels per latent cell along a side: 8 for SD's VAE (diffusers' `vae_scale_factor`)."""
        return latent_factor(self.pipe.vae)


def latent_factor(vae) -> int:
    """2 ** (number of VAE blocks - 1), read off the VAE's config as diffusers' pipelines do."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def load_sd_pipeline(
    ref: str | Path,
    *,
    revision: str | None = None,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    single_file_config: str | Path | None = None,
    vae_dtype: str = "auto",
    variant: str | None = None,
) -> LoadedPipeline:
    """Load Stable Diffusion from a hub id, a diffusers folder, or one .safetensors/.ckpt file.

    Single files of SD1.5 and SD1.5-inpainting load with the component configs bundled in
    `lcd/models/configs` (no hub); `single_file_config` (a diffusers folder or hub id) gives them
    for other bases. Returns a StableDiffusionPipeline, or StableDiffusionInpaintPipeline for a
    9-channel UNet; the safety checker and feature extractor are never loaded. A folder's
    weights are those of `variant` ("fp16", "non_ema"; a component without it reads its plain
    files), or with None the plain files, or the one variant a component holds when it has no
    plain file (lcd.models.layout); safetensors before `.bin`.
    """
    from diffusers.utils import logging as dlogging

    torch_dtype = to_dtype(dtype)
    device = check_device(device)
    path, source, layout = resolve_sd(ref, revision, variant)
    dlogging.disable_progress_bar()  # batch logs, not terminal bars
    try:
        with quiet_unpickler():  # diffusers reads a .ckpt with weights_only=True too
            pipe = _load_single_file(path, ref, torch_dtype, single_file_config) if layout is None \
                else _load_folder(layout, ref, torch_dtype)
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f"{ref}: failed to load Stable Diffusion: {error_line(e)}", item=str(ref)) from e
    finally:
        dlogging.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    vdt = resolve_vae_dtype(vae_dtype, torch_dtype, pipe.vae.config)
    if vdt != torch_dtype:
        pipe.vae.to(vdt)
        _cast_vae_inputs(pipe.vae)
    return LoadedPipeline(pipe=pipe, source=source)


def _cast_vae_inputs(vae) -> None:
    """Cast whatever reaches the VAE's encoder/decoder to the VAE's own dtype, so diffusers'
    pipelines (which hand it latents in the UNet's dtype) work with an upcast VAE."""
    def cast(module, args):
        return tuple(a.to(vae.dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

    for name in ("encoder", "quant_conv", "post_quant_conv", "decoder"):
        m = getattr(vae, name, None)
        if m is not None:
            m.register_forward_pre_hook(cast)


def resolve_vae_dtype(vae_dtype: str, dtype: torch.dtype, vae_config) -> torch.dtype:
    """models.vae_dtype -> the VAE's torch dtype. "auto": float32 for a float16 model whose VAE
    config has `force_upcast` (true by default in diffusers' AutoencoderKL), else the model's."""
    if vae_dtype != "auto":
        return to_dtype(vae_dtype)
    if dtype == torch.float16 and getattr(vae_config, "force_upcast", True):
        return torch.float32
    return dtype


def _load_folder(layout: FolderLayout, ref, torch_dtype):
    """A diffusers pipeline folder (model_index.json), whatever scheduler and extras it lists.
    Each weights component loads from exactly the files `layout` chose (its variant and format
    passed on), so what is pinned is what is read; tokenizer and scheduler load as diffusers does."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    from lcd.models.trust import read_config

    path = layout.folder
    unet_cfg = read_config(path / "unet" / "config.json")
    cls = StableDiffusionInpaintPipeline if unet_cfg.get("in_channels") == 9 else StableDiffusionPipeline
    components = {w.component: _load_component(path, w, torch_dtype) for w in layout.weights}
    return cls.from_pretrained(str(path), torch_dtype=torch_dtype, local_files_only=True, **components,
                               safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _load_component(path: Path, w, torch_dtype):
    """One model component from its chosen files. Its class is the one model_index.json names,
    already checked against lcd.models.trust's allowlist; pickles are read by torch's weights-only
    unpickler first (lcd.io.torchfile), so a refused one is one line naming the file and global."""
    import zipfile

    import diffusers
    import transformers

    if w.fmt == "bin":
        for f in w.files:
            if not f.endswith(".json"):
                load_weights(path / f, f"{w.component} weights", mmap=zipfile.is_zipfile(path / f))
    model_cls = getattr({"diffusers": diffusers, "transformers": transformers}[w.library], w.cls)
    dtype = {"dtype" if w.library == "transformers" else "torch_dtype": torch_dtype}  # each library's name
    transformers.utils.logging.disable_progress_bar()  # "Loading checkpoint shards": batch logs, not bars
    try:
        return model_cls.from_pretrained(str(path / w.component), variant=w.variant, use_safetensors=w.use_safetensors,
                                         local_files_only=True, **dtype)
    finally:
        transformers.utils.logging.enable_progress_bar()


def _load_single_file(path: Path, ref, torch_dtype, single_file_config):
    """An original-layout (LDM) checkpoint; component configs bundled for SD1.5(-inpainting)."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    from lcd.models.bundled import bundled_config_dir, single_file_kind

    if path.suffix not in SINGLE_FILE_SUFFIXES:
        raise ModelLoadError(f"{ref}: single-file checkpoints must be one of {SINGLE_FILE_SUFFIXES}", item=str(ref))
    kwargs: dict[str, Any] = {"torch_dtype": torch_dtype, "local_files_only": True, "safety_checker": None,
                              "feature_extractor": None, "requires_safety_checker": False}
    if single_file_config is not None:
        cfg_path, _ = resolve(single_file_config, check=check_sd_folder)
        return _from_single_file(StableDiffusionPipeline, path, str(cfg_path), kwargs)
    kind = single_file_kind(path)
    with bundled_config_dir(kind) as cfg_dir:
        check_sd_folder(cfg_dir)  # shipped with lcd, checked all the same
        cls = StableDiffusionInpaintPipeline if kind == "sd15-inpaint" else StableDiffusionPipeline
        return _from_single_file(cls, path, str(cfg_dir), kwargs)


def _from_single_file(cls, path: Path, config: str, kwargs: dict):
    from diffusers import StableDiffusionInpaintPipeline

    pipe = cls.from_single_file(str(path), config=config, **kwargs)
    if pipe.unet.config.in_channels == 9 and not isinstance(pipe, StableDiffusionInpaintPipeline):
        pipe = StableDiffusionInpaintPipeline(**pipe.components)
    return pipe


# --- SAM -------------------------------------------------------------------------------------

# vit_tiny: segment_anything's own `_build_sam` with a narrow, shallow ViT (the tests' and demo's SAM)
TINY_SAM = dict(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=[1])

def _sam_builders() -> dict[str, Any]:
    from functools import partial

    from segment_anything import sam_model_registry
    from segment_anything.build_sam import _build_sam

    builders = {k: v for k, v in sam_model_registry.items() if k != "default"}
    builders["vit_tiny"] = partial(_build_sam, **TINY_SAM)
    return builders


SAM_TYPES = ("vit_h", "vit_l", "vit_b", "vit_tiny")


def load_sam(checkpoint: str | Path, model_type: str, *, device: str | torch.device = "cpu"):
    """Build segment_anything's `Sam` of `model_type` and load an official-format state dict.

    Returns (sam, ModelSource). A checkpoint whose shapes do not fit the type is a clear error.
    """
    device = check_device(device)
    if model_type not in SAM_TYPES:
        raise ModelLoadError(f"sam_type must be one of {SAM_TYPES}, got {model_type!r}", item="sam_type")
    path, source = resolve(checkpoint, patterns=["*.pth", "*.pt", "*.safetensors"])
    if path.is_dir():
        files = sorted(path.glob("*.pth")) + sorted(path.glob("*.safetensors"))
        if not files:
            raise ModelLoadError(f"{checkpoint}: no SAM checkpoint (.pth) in folder", item=str(checkpoint))
        path = files[0]
        source = local_source(path) if source.kind != "hub" else source
    sam = _sam_builders()[model_type](checkpoint=None)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as e:  # noqa: BLE001 - a torn or foreign file: its own fault, in one line
            raise ModelLoadError(f"{path}: cannot read SAM checkpoint: {error_line(e)}", item=str(path)) from None
    else:  # weights_only: a pickle naming anything but tensors is refused (lcd.io.torchfile)
        state = load_weights(path, "SAM checkpoint")
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path}: not a SAM state dict (a {type(state).__name__})", item=str(path))
    try:
        sam.load_state_dict(state)
    except RuntimeError as e:
        raise ModelLoadError(
            f"{path}: weights do not fit SAM type {model_type!r}: {str(e).strip().splitlines()[0]}",
            item=str(path),
        ) from None
    return sam.to(device).eval(), source


# --- CLIP ------------------------------------------------------------------------------------

def load_clip(ref: str | Path, *, revision: str | None = None, dtype="float32", device="cpu"):
    """transformers CLIPModel + CLIPProcessor from a hub id or local folder -> (model, processor, source)."""
    from transformers import CLIPModel, CLIPProcessor

    device = check_device(device)
    path, source = resolve(ref, revision, patterns=["*.json", "*.txt", "*.safetensors"],
                           check=lambda p: check_transformers_folder(p, "CLIP"))
    try:
        model = CLIPModel.from_pretrained(str(path), torch_dtype=to_dtype(dtype), local_files_only=True)
        processor = CLIPProcessor.from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        raise ModelLoadError(f"{ref}: failed to load CLIP: {error_line(e)}", item=str(ref)) from e
    return model.to(device).eval(), processor, source


# --- DINO ------------------------------------------------------------------------------------

def load_dino(ref: str | Path, *, revision: str | None = None, dtype="float32", device="cpu"):
    """transformers ViTModel (e.g. facebook/dino-vits16) + its image processor -> (model, processor, source).

    DINO-I uses the final [CLS] token (`last_hidden_state[:, 0]`), as DreamBooth's metric does.
    """
    from transformers import AutoImageProcessor, ViTModel

    path, source = resolve(ref, revision, patterns=["*.json", "*.txt", "*.safetensors", "*.bin"],
                           check=lambda p: check_transformers_folder(p, "DINO ViT"))
    try:
        model = ViTModel.from_pretrained(
            str(path), torch_dtype=to_dtype(dtype), local_files_only=True, add_pooling_layer=False
        )
        processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        raise ModelLoadError(f"{ref}: failed to load DINO ViT: {error_line(e)}", item=str(ref)) from e
    return model.to(device).eval(), processor, source


# --- open_clip (regularization-set caption filter, clip-retrieval) ----------------------------

@dataclass
class LoadedOpenClip:
    """An open_clip CLIP, its image preprocess, tokenizer, and `clip_retrieval_ref`: the string
    clip-retrieval (all_clip) resolves to the same weights, e.g. "open_clip:ARCH//abs/file"."""

    model: Any
    preprocess: Any
    tokenizer: Any
    arch: str
    clip_retrieval_ref: str
    source: ModelSource


def register_open_clip(ref: str | Path) -> tuple[str, str]:
    """Make an open_clip reference loadable in this process -> (arch, pretrained).

    A local folder holds one `<ARCH>.json` model config and one weights file; the config is
    registered with open_clip (clip-retrieval subprocesses must call this too). Otherwise `ref`
    is "ARCH/pretrained" with pretrained a file path or a tag (tags need the hub).
    """
    import open_clip

    p = Path(ref)
    if p.is_dir():
        configs = sorted(p.glob("*.json"))
        weights = sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")) + sorted(p.glob("*.pt"))
        if len(configs) != 1 or not weights:
            raise ModelLoadError(
                f"{ref}: an open_clip folder needs exactly one <ARCH>.json and one weights file "
                f"(found {len(configs)} configs, {len(weights)} weight files)", item=str(ref),
            )
        check_open_clip_config(configs[0])
        open_clip.add_model_config(configs[0])
        return configs[0].stem, str(weights[0].resolve())
    arch, _, pretrained = str(ref).partition("/")
    if arch not in open_clip.list_models():
        raise ModelLoadError(f"{ref}: not an open_clip folder and {arch!r} is not an open_clip model", item=str(ref))
    return arch, pretrained


def load_open_clip(ref: str | Path, *, device: str | torch.device = "cpu") -> LoadedOpenClip:
    """open_clip model from a local folder (see `register_open_clip`) or "ARCH/pretrained"."""
    import open_clip

    arch, pretrained = register_open_clip(ref)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained or None, device=device)
    except Exception as e:
        raise ModelLoadError(f"{ref}: failed to load open_clip: {type(e).__name__}: {e}", item=str(ref)) from e
    p = Path(ref)
    source = local_source(p) if p.is_dir() else ModelSource(ref=str(ref), kind="hub", revision=pretrained)
    return LoadedOpenClip(
        model=model.eval(), preprocess=preprocess, tokenizer=open_clip.get_tokenizer(arch), arch=arch,
        clip_retrieval_ref=f"open_clip:{arch}/{pretrained}", source=source,
    )
