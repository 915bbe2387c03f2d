"""Model folders name only classes lcd knows: nothing in a folder chooses which code runs.

Why: diffusers' `from_pretrained` / `from_single_file` import whatever module a
`model_index.json` entry names (`"unet": ["mal.sd.unet.payload", "UNet2DConditionModel"]` is
`importlib.import_module("mal.sd.unet.payload")`, found on sys.path, where `python -m` puts the
working directory first), and load `<component>/<library>.py` from the folder; transformers
follows a config's `auto_map`. `trust_remote_code` guards only some of these paths. So every
config a loader is about to read is checked here first, against fixed allowlists of the
libraries and classes diffusers and transformers themselves ship for the SD1.x and SDXL
pipelines and the CLIP / DINO models lcd loads. Anything else is refused with one line naming the file and
the entry. These checks only read JSON: nothing from the folder is imported.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from lcd.errors import ModelLoadError

MAX_CONFIG_BYTES = 4_000_000  # SD's largest config (a tokenizer's) is ~1 KB; vocab.json is not read here
MODEL_INDEX = "model_index.json"
REFUSAL = "refusing to import code from a model folder"
# keys that make diffusers / transformers load code the folder ships or names
CODE_KEYS = ("auto_map", "custom_pipeline", "trust_remote_code")

SD_PIPELINES = frozenset({"StableDiffusionPipeline", "StableDiffusionInpaintPipeline",
                          "StableDiffusionImg2ImgPipeline", "StableDiffusionXLPipeline",
                          "StableDiffusionXLInpaintPipeline", "StableDiffusionXLImg2ImgPipeline"})
SCHEDULER = "<diffusers scheduler>"  # stands for any diffusers class subclassing SchedulerMixin
# role in model_index.json -> (library, class) pairs diffusers' SD pipelines load there. The
# safety checker's library is diffusers' own pipeline module (`diffusers.pipelines.stable_diffusion`).
SD_COMPONENTS: dict[str, frozenset[tuple[str, str]]] = {
    "unet": frozenset({("diffusers", "UNet2DConditionModel")}),
    "vae": frozenset({("diffusers", "AutoencoderKL")}),
    "text_encoder": frozenset({("transformers", "CLIPTextModel"), ("transformers", "CLIPTextModelWithProjection")}),
    "tokenizer": frozenset({("transformers", "CLIPTokenizer"), ("transformers", "CLIPTokenizerFast")}),
    # SDXL's second encoder (OpenCLIP ViT-bigG in transformers' classes) and its tokenizer
    "text_encoder_2": frozenset({("transformers", "CLIPTextModelWithProjection")}),
    "tokenizer_2": frozenset({("transformers", "CLIPTokenizer"), ("transformers", "CLIPTokenizerFast")}),
    "scheduler": frozenset({("diffusers", SCHEDULER)}),
    "safety_checker": frozenset({("stable_diffusion", "StableDiffusionSafetyChecker")}),
    "feature_extractor": frozenset({("transformers", "CLIPImageProcessor"), ("transformers", "CLIPFeatureExtractor")}),
    "image_encoder": frozenset({("transformers", "CLIPVisionModelWithProjection")}),
}
SD_SCALARS = {"requires_safety_checker": bool,  # pipeline arguments model_index.json may hold
              "force_zeros_for_empty_prompt": bool, "requires_aesthetics_score": bool}  # SDXL's
LIBRARIES = frozenset(lib for pairs in SD_COMPONENTS.values() for lib, _ in pairs)

# per role: the config file diffusers / transformers read, and the fields of it that name a class
_CLIP_IMAGE = frozenset({"CLIPImageProcessor", "CLIPImageProcessorFast", "CLIPFeatureExtractor"})
_CLIP_TOKENIZER = frozenset({"CLIPTokenizer", "CLIPTokenizerFast"})
_COMPONENT_CONFIGS: dict[str, tuple[str, dict[str, frozenset[str]]]] = {
    "unet": ("config.json", {"_class_name": frozenset({"UNet2DConditionModel"})}),
    "vae": ("config.json", {"_class_name": frozenset({"AutoencoderKL"})}),
    "scheduler": ("scheduler_config.json", {"_class_name": frozenset({SCHEDULER})}),
    "text_encoder": ("config.json", {"architectures": frozenset({"CLIPTextModel", "CLIPTextModelWithProjection"}),
                                     "model_type": frozenset({"clip_text_model", "clip"})}),
    "image_encoder": ("config.json", {"architectures": frozenset({"CLIPVisionModelWithProjection"}),
                                      "model_type": frozenset({"clip_vision_model", "clip"})}),
    "safety_checker": ("config.json", {"architectures": frozenset({"StableDiffusionSafetyChecker"}),
                                       "model_type": frozenset({"clip"})}),
    "tokenizer": ("tokenizer_config.json", {"tokenizer_class": _CLIP_TOKENIZER,
                                            "processor_class": frozenset({"CLIPProcessor"})}),
    "text_encoder_2": ("config.json", {"architectures": frozenset({"CLIPTextModelWithProjection"}),
                                       "model_type": frozenset({"clip_text_model", "clip"})}),
    "tokenizer_2": ("tokenizer_config.json", {"tokenizer_class": _CLIP_TOKENIZER,
                                              "processor_class": frozenset({"CLIPProcessor"})}),
    "feature_extractor": ("preprocessor_config.json", {"image_processor_type": _CLIP_IMAGE,
                                                       "feature_extractor_type": _CLIP_IMAGE,
                                                       "processor_class": frozenset({"CLIPProcessor"})}),
}

# transformers folders lcd loads (lcd.models.loader load_clip / load_dino): file -> class fields
TRANSFORMERS_FOLDERS: dict[str, dict[str, dict[str, frozenset[str]]]] = {
    "CLIP": {
        "config.json": {"architectures": frozenset({"CLIPModel"}), "model_type": frozenset({"clip"})},
        "preprocessor_config.json": {"image_processor_type": _CLIP_IMAGE, "feature_extractor_type": _CLIP_IMAGE,
                                     "processor_class": frozenset({"CLIPProcessor"})},
        "processor_config.json": {"processor_class": frozenset({"CLIPProcessor"})},
        "tokenizer_config.json": {"tokenizer_class": _CLIP_TOKENIZER, "processor_class": frozenset({"CLIPProcessor"})},
    },
    "DINO ViT": {
        "config.json": {"architectures": frozenset({"ViTModel"}), "model_type": frozenset({"vit"})},
        "preprocessor_config.json": {
            "image_processor_type": frozenset({"ViTImageProcessor", "ViTImageProcessorFast", "ViTFeatureExtractor"}),
            "feature_extractor_type": frozenset({"ViTImageProcessor", "ViTImageProcessorFast", "ViTFeatureExtractor"}),
        },
    },
}


def _refuse(path: Path | str, reason: str) -> ModelLoadError:
    return ModelLoadError(f"{path}: {reason}", item=str(path))


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """json object hook: a key given twice is an error (which of two entries would a loader take?)."""
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k[:60]!r}")
        out[k] = v
    return out


def read_config(path: Path) -> dict:
    """A model config file -> its JSON object; one-line errors for a file that is not a regular
    file (a FIFO, /dev/zero), too large, not UTF-8, not JSON, nested too deep, with a key given
    twice, or not an object. At most MAX_CONFIG_BYTES + 1 bytes are ever read."""
    try:
        if not path.is_file():
            raise _refuse(path, "not a regular file" if path.exists() else "missing")
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise _refuse(path, f"{path.stat().st_size:,} bytes, over the {MAX_CONFIG_BYTES:,} a model config may hold")
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except ModelLoadError:
        raise
    except UnicodeDecodeError:
        raise _refuse(path, "not a JSON model config (not UTF-8 text)") from None
    except RecursionError:
        raise _refuse(path, "not a JSON model config (nested too deep)") from None
    except ValueError as e:
        raise _refuse(path, f"not valid JSON ({e})") from None
    except OSError as e:
        raise _refuse(path, f"cannot read: {e.strerror or e}") from None
    if not isinstance(data, dict):
        raise _refuse(path, f"a model config must be a JSON object, got {type(data).__name__}")
    return data


@lru_cache(maxsize=None)
def is_diffusers_scheduler(name: str) -> bool:
    """True for the name of a scheduler class diffusers ships (a SchedulerMixin subclass in
    `diffusers.schedulers`); looked up by attribute on diffusers' own module, so no other
    module can be reached through the name."""
    if not name.isidentifier() or name == "SchedulerMixin":
        return False
    import diffusers.schedulers
    from diffusers import SchedulerMixin

    try:
        obj = getattr(diffusers.schedulers, name)
    except Exception:  # noqa: BLE001 - unknown name (AttributeError), or a backend it needs is missing
        return False
    return isinstance(obj, type) and issubclass(obj, SchedulerMixin)


def _allowed(value: str, allowed: frozenset[str]) -> bool:
    return value in allowed or (SCHEDULER in allowed and is_diffusers_scheduler(value))


def _names(allowed: frozenset[str]) -> str:
    return ", ".join(sorted("a diffusers scheduler" if a == SCHEDULER else a for a in allowed))


def check_config(path: Path, fields: dict[str, frozenset[str]]) -> dict:
    """Read one config and check it names no code: no `auto_map` / `custom_pipeline`, and each
    field of `fields` present is a class name (or list of them) from its allowlist. -> the config."""
    data = read_config(path)
    for key in CODE_KEYS:
        if key in data:
            raise _refuse(path, f"'{key}' names custom code; lcd loads only the classes diffusers and "
                                f"transformers ship ({REFUSAL})")
    for key, allowed in fields.items():
        if key not in data or (key != "_class_name" and data[key] is None):
            continue
        value = data[key]
        values = value if isinstance(value, list) and key == "architectures" else [value]
        for v in values:
            if not isinstance(v, str):
                raise _refuse(path, f"'{key}' must be a class name (a string), got {type(v).__name__} {v!r:.60}")
            if not _allowed(v, allowed):
                raise _refuse(path, f"'{key}' names class {v!r:.80}, not one lcd loads here ({_names(allowed)}); "
                                    f"{REFUSAL}")
    return data


def _check_entry(index: Path, name: str, value) -> tuple[str, str] | None:
    """One non-underscore entry of model_index.json -> its (library, class), None when it loads nothing."""
    if name in SD_SCALARS:
        if not isinstance(value, SD_SCALARS[name]):
            raise _refuse(index, f"entry '{name}' must be {SD_SCALARS[name].__name__}, got {type(value).__name__}")
        return None
    if name in CODE_KEYS:
        raise _refuse(index, f"entry '{name}' names custom code; {REFUSAL}")
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 2):
        raise _refuse(index, f"component '{name:.60}' must be [library, class] or null, got "
                             f"{type(value).__name__} {json.dumps(value)[:60]}")
    library, cls = value
    if library is None and cls is None:
        return None
    if not (isinstance(library, str) and isinstance(cls, str)):
        raise _refuse(index, f"component '{name:.60}' must be [library, class] (two strings) or [null, null], "
                             f"got {json.dumps(value)[:80]}")
    if name not in SD_COMPONENTS:
        raise _refuse(index, f"component '{name:.60}' is not a Stable Diffusion component "
                             f"({', '.join(sorted(SD_COMPONENTS))}); {REFUSAL}")
    pairs = SD_COMPONENTS[name]
    libs = sorted({lib for lib, _ in pairs})
    if library not in libs:
        want = "diffusers or transformers" if library not in LIBRARIES else " or ".join(libs)
        raise _refuse(index, f"component '{name}' names library {library!r:.80}, not {want} ({REFUSAL})")
    classes = frozenset(c for lib, c in pairs if lib == library)
    if not _allowed(cls, classes):
        raise _refuse(index, f"component '{name}' names {library} class {cls!r:.80}, not one lcd loads for "
                             f"'{name}' ({_names(classes)}); {REFUSAL}")
    return library, cls


def _present(path: Path) -> bool:
    """There, as a file or anything else (a dangling link, a FIFO: read_config refuses those)."""
    return path.exists() or path.is_symlink()


def _no_python(folder: Path) -> None:
    """diffusers loads `<component>/<library>.py` and custom pipeline files: a model folder holds none."""
    for f in sorted(folder.glob("*.py")) + sorted(folder.glob("*.pyc")):
        raise _refuse(f, f"a Python file in a model folder; lcd loads no code from model folders ({REFUSAL})")


def check_sd_folder(folder: str | Path) -> None:
    """Check a diffusers SD folder (or a single-file config folder) before diffusers reads it:
    `model_index.json`'s pipeline class and every component entry, each listed component's
    config, and no Python files. Raises ModelLoadError (one line, naming the file and entry)."""
    folder = Path(folder)
    index = folder / MODEL_INDEX
    if not _present(index):
        raise _refuse(folder, f"not a diffusers pipeline folder (no {MODEL_INDEX})")
    data = read_config(index)
    # 1. the pipeline class: a name diffusers ships, never [module, class] (a custom pipeline file)
    pipeline = data.get("_class_name")
    if pipeline is not None and not isinstance(pipeline, str):
        raise _refuse(index, f"'_class_name' must be a pipeline class name, got {json.dumps(pipeline)[:80]} "
                             f"(a custom pipeline; {REFUSAL})")
    if pipeline is not None and pipeline not in SD_PIPELINES:
        raise _refuse(index, f"'_class_name' names pipeline {pipeline!r:.80}, not one lcd loads "
                             f"({', '.join(sorted(SD_PIPELINES))}); {REFUSAL}")
    # 2. every component entry, all before any file of a component is read
    components = {name: entry for name, value in data.items() if not name.startswith("_")
                  if (entry := _check_entry(index, name, value)) is not None}
    # 3. each listed component's config, and no code anywhere diffusers would look for it
    _no_python(folder)
    for name in sorted(components):
        sub = folder / name
        if not sub.is_dir():
            continue  # diffusers says which component is missing
        _no_python(sub)
        file, fields = _COMPONENT_CONFIGS[name]
        if _present(sub / file):
            check_config(sub / file, fields)


def check_transformers_folder(folder: str | Path, kind: str) -> None:
    """Check a transformers folder of `kind` ("CLIP", "DINO ViT") before transformers reads it:
    no `auto_map`, only the model / processor / tokenizer classes lcd loads, no Python files."""
    folder = Path(folder)
    if not folder.is_dir():
        return  # a file: transformers says it is not a folder
    _no_python(folder)
    for file, fields in TRANSFORMERS_FOLDERS[kind].items():
        if _present(folder / file):
            check_config(folder / file, fields)


# open_clip text towers built from a transformers model by name (AutoModel / AutoTokenizer):
# a name there reaches transformers' remote-code path (an `auto_map` there prompts or refuses)
OPEN_CLIP_HF_KEYS = ("hf_model_name", "hf_tokenizer_name")


def check_open_clip_config(path: str | Path) -> None:
    """An open_clip `<ARCH>.json` of a local folder builds open_clip's own towers only: a
    `text_cfg` naming a transformers model (`hf_model_name`, `hf_tokenizer_name`) is refused."""
    path = Path(path)
    data = read_config(path)
    for key in CODE_KEYS:
        if key in data:
            raise _refuse(path, f"'{key}' names custom code ({REFUSAL})")
    text = data.get("text_cfg", {})
    if not isinstance(text, dict):
        raise _refuse(path, f"'text_cfg' must be a JSON object, got {type(text).__name__}")
    for key in OPEN_CLIP_HF_KEYS:
        if text.get(key):
            raise _refuse(path, f"'text_cfg.{key}' names a transformers model ({str(text[key])[:80]!r}); lcd's "
                                f"open_clip folders use open_clip's own text tower ({REFUSAL})")
