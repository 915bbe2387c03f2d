"""Model folders name only the libraries and classes diffusers / transformers ship for SD1.x,
CLIP and DINO (lcd.models.trust): every other entry is refused in one line naming the file and
the entry, before anything from the folder is imported."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from lcd.errors import ModelLoadError
from lcd.models.bundled import BUNDLED_KINDS, CONFIGS, bundled_config_dir
from lcd.models.trust import MAX_CONFIG_BYTES, check_sd_folder, check_transformers_folder, is_diffusers_scheduler


def _edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


@pytest.fixture
def sd_folder(tmp_path) -> Path:
    """SD1.5's own configs (as shipped in lcd/models/configs): what the hub repository holds, no weights."""
    return Path(shutil.copytree(CONFIGS / "sd15", tmp_path / "models" / "x"))


def _set(key, value):
    return lambda d: d.__setitem__(key, value)


# --- the folders lcd ships and writes pass ------------------------------------------------------

@pytest.mark.parametrize("kind", BUNDLED_KINDS)
def test_bundled_sd15_configs_pass(kind):
    check_sd_folder(CONFIGS / kind)
    with bundled_config_dir(kind) as d:  # as materialised for from_single_file, tokenizer files included
        check_sd_folder(d)


def test_tiny_model_folders_pass(tiny_dir):
    check_sd_folder(tiny_dir / "sd")
    check_sd_folder(tiny_dir / "sd-inpaint")
    check_transformers_folder(tiny_dir / "clip", "CLIP")
    check_transformers_folder(tiny_dir / "dino", "DINO ViT")


def test_every_diffusers_scheduler_by_name_and_nothing_else():
    assert is_diffusers_scheduler("DDIMScheduler") and is_diffusers_scheduler("EulerAncestralDiscreteScheduler")
    assert is_diffusers_scheduler("DPMSolverMultistepScheduler") and is_diffusers_scheduler("PNDMScheduler")
    for name in ("SchedulerMixin", "UNet2DConditionModel", "os.system", "mal.sched", "FlaxDDIMScheduler", "",
                 "__class__", "KarrasDiffusionSchedulers"):
        assert not is_diffusers_scheduler(name), name


# --- model_index.json entries --------------------------------------------------------------------

BAD_INDEX = [
    # (name, edit of model_index.json, the one line must contain)
    ("dotted module", _set("unet", ["mal.sd.unet.payload", "UNet2DConditionModel"]),
     "component 'unet' names library 'mal.sd.unet.payload', not diffusers or transformers "
     "(refusing to import code from a model folder)"),
    ("top-level module", _set("vae", ["os", "system"]), "component 'vae' names library 'os', not diffusers or transformers"),
    ("torch as library", _set("text_encoder", ["torch", "nn"]), "component 'text_encoder' names library 'torch'"),
    ("library of another role", _set("unet", ["transformers", "CLIPTextModel"]),
     "component 'unet' names library 'transformers', not diffusers"),
    ("unknown diffusers class", _set("unet", ["diffusers", "EvilNet"]),
     "component 'unet' names diffusers class 'EvilNet', not one lcd loads for 'unet' (UNet2DConditionModel)"),
    ("class of another role", _set("vae", ["diffusers", "UNet2DConditionModel"]),
     "component 'vae' names diffusers class 'UNet2DConditionModel'"),
    ("diffusers pipeline as component", _set("unet", ["diffusers", "DiffusionPipeline"]),
     "component 'unet' names diffusers class 'DiffusionPipeline'"),
    ("scheduler not a scheduler", _set("scheduler", ["diffusers", "AutoencoderKL"]),
     "component 'scheduler' names diffusers class 'AutoencoderKL', not one lcd loads for 'scheduler' (a diffusers scheduler)"),
    ("scheduler dotted", _set("scheduler", ["diffusers", "schedulers.DDIMScheduler"]), "component 'scheduler' names"),
    ("unknown transformers class", _set("tokenizer", ["transformers", "AutoTokenizer"]),
     "component 'tokenizer' names transformers class 'AutoTokenizer'"),
    ("safety checker elsewhere", _set("safety_checker", ["stable_diffusion", "StableDiffusionPipeline"]),
     "component 'safety_checker' names stable_diffusion class 'StableDiffusionPipeline'"),
    ("custom component file", _set("unet", ["my_unet", "MyUNet"]), "component 'unet' names library 'my_unet'"),
    ("unknown component", _set("controlnet", ["diffusers", "UNet2DConditionModel"]),
     "component 'controlnet' is not a Stable Diffusion component"),
    ("path as component", _set("../../etc", ["diffusers", "AutoencoderKL"]), "component '../../etc' is not"),
    ("string entry", _set("unet", "diffusers"), "component 'unet' must be [library, class] or null, got str"),
    ("one-element entry", _set("unet", ["diffusers"]), "component 'unet' must be [library, class] or null, got list"),
    ("three-element entry", _set("unet", ["diffusers", "UNet2DConditionModel", "x"]), "component 'unet' must be"),
    ("object entry", _set("unet", {"library": "diffusers"}), "component 'unet' must be [library, class] or null, got dict"),
    ("number entry", _set("vae", 5), "component 'vae' must be [library, class] or null, got int"),
    ("class is a number", _set("unet", ["diffusers", 5]), "component 'unet' must be [library, class] (two strings)"),
    ("half null", _set("unet", [None, "UNet2DConditionModel"]), "component 'unet' must be [library, class] (two strings)"),
    ("list library", _set("unet", [["mal"], "UNet2DConditionModel"]), "component 'unet' must be [library, class]"),
    ("custom pipeline class", _set("_class_name", ["pipeline", "MyPipeline"]),
     "'_class_name' must be a pipeline class name, got [\"pipeline\", \"MyPipeline\"] (a custom pipeline"),
    ("unknown pipeline class", _set("_class_name", "EvilPipeline"), "'_class_name' names pipeline 'EvilPipeline'"),
    ("generic pipeline class", _set("_class_name", "DiffusionPipeline"), "'_class_name' names pipeline 'DiffusionPipeline'"),
    ("custom_pipeline key", _set("custom_pipeline", "pipeline.py"), "entry 'custom_pipeline' names custom code"),
    ("auto_map key", _set("auto_map", {"unet": "x.Y"}), "entry 'auto_map' names custom code"),
    ("flag not a bool", _set("requires_safety_checker", "yes"), "entry 'requires_safety_checker' must be bool, got str"),
]


@pytest.mark.parametrize("name,edit,needle", BAD_INDEX, ids=[c[0] for c in BAD_INDEX])
def test_a_bad_model_index_entry_is_refused_naming_file_and_entry(sd_folder, name, edit, needle):
    _edit_json(sd_folder / "model_index.json", edit)
    with pytest.raises(ModelLoadError, match="^" + str(sd_folder / "model_index.json").replace("\\", "\\\\") + ": ") as e:
        check_sd_folder(sd_folder)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg, msg
    assert e.value.item == str(sd_folder / "model_index.json")


def test_null_and_known_entries_pass(sd_folder):
    def edit(d):
        d.update(safety_checker=None, image_encoder=[None, None], controlnet=None,
                 scheduler=["diffusers", "EulerDiscreteScheduler"], text_encoder=["transformers", "CLIPTextModelWithProjection"],
                 tokenizer=["transformers", "CLIPTokenizerFast"], requires_safety_checker=True,
                 _name_or_path="whatever/it/was", _class_name="StableDiffusionInpaintPipeline")
    _edit_json(sd_folder / "model_index.json", edit)
    check_sd_folder(sd_folder)


# --- model_index.json itself -------------------------------------------------------------------

BAD_FILES = [
    ("a list", b'[["diffusers", "UNet2DConditionModel"]]', "a model config must be a JSON object, got list"),
    ("a string", b'"unet"', "a model config must be a JSON object, got str"),
    ("not JSON", b"{unet: diffusers", "not valid JSON (Expecting property name"),
    ("binary", bytes(range(256)), "not a JSON model config (not UTF-8 text)"),
    ("nested too deep", b"[" * 100_000, "not a JSON model config (nested too deep)"),
    ("empty", b"", "not valid JSON"),
]


@pytest.mark.parametrize("name,content,needle", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_a_model_index_that_is_not_a_json_object_is_one_line(sd_folder, name, content, needle):
    (sd_folder / "model_index.json").write_bytes(content)
    with pytest.raises(ModelLoadError) as e:
        check_sd_folder(sd_folder)
    msg = str(e.value)
    assert msg.startswith(f"{sd_folder / 'model_index.json'}: ") and needle in msg and "\n" not in msg, msg


def test_a_key_given_twice_is_refused(sd_folder):
    text = (sd_folder / "model_index.json").read_text().rstrip().rstrip("}")
    (sd_folder / "model_index.json").write_text(text + ', "unet": ["mal.sd.unet.payload", "UNet2DConditionModel"]}')
    with pytest.raises(ModelLoadError, match=r"model_index\.json: not valid JSON \(duplicate key 'unet'\)$"):
        check_sd_folder(sd_folder)


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "dangling link", "folder"])
def test_a_config_that_is_no_regular_file_is_refused_unread(sd_folder, kind):
    """A FIFO or /dev/zero would block or never end a read: refused by what it is, never opened."""
    import os

    target = sd_folder / "unet" / "config.json"
    target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "folder":
        target.mkdir()
    else:
        target.symlink_to("/dev/zero" if kind == "/dev/zero" else sd_folder / "nowhere.json")
    want = "missing" if kind == "dangling link" else "not a regular file"
    with pytest.raises(ModelLoadError, match=rf"unet/config\.json: {want}$"):
        check_sd_folder(sd_folder)


def test_a_huge_config_is_refused_by_its_size_unread(sd_folder):
    with open(sd_folder / "unet" / "config.json", "ab") as f:
        f.truncate(MAX_CONFIG_BYTES + 1)
    with pytest.raises(ModelLoadError, match=r"unet/config\.json: 4,000,001 bytes, over the 4,000,000"):
        check_sd_folder(sd_folder)


def test_no_model_index_is_not_a_pipeline_folder(tmp_path):
    with pytest.raises(ModelLoadError, match=r"not a diffusers pipeline folder \(no model_index\.json\)"):
        check_sd_folder(tmp_path)


# --- each component's own config ---------------------------------------------------------------

BAD_COMPONENT = [
    ("unet _class_name", "unet/config.json", _set("_class_name", "EvilUNet"),
     "'_class_name' names class 'EvilUNet', not one lcd loads here (UNet2DConditionModel)"),
    ("unet _class_name module", "unet/config.json", _set("_class_name", ["mal", "UNet"]),
     "'_class_name' must be a class name (a string), got list"),
    ("unet _class_name null", "unet/config.json", _set("_class_name", None), "'_class_name' must be a class name"),
    ("vae auto_map", "vae/config.json", _set("auto_map", {"AutoModel": "modeling.Evil"}), "'auto_map' names custom code"),
    ("scheduler _class_name", "scheduler/scheduler_config.json", _set("_class_name", "EvilScheduler"),
     "'_class_name' names class 'EvilScheduler', not one lcd loads here (a diffusers scheduler)"),
    ("text encoder auto_map", "text_encoder/config.json", _set("auto_map", {"AutoModel": "modeling_evil.EvilModel"}),
     "text_encoder/config.json: 'auto_map' names custom code"),
    ("text encoder architecture", "text_encoder/config.json", _set("architectures", ["EvilModel"]),
     "'architectures' names class 'EvilModel'"),
    ("text encoder architecture type", "text_encoder/config.json", _set("architectures", [{"x": 1}]),
     "'architectures' must be a class name (a string), got dict"),
    ("text encoder model_type", "text_encoder/config.json", _set("model_type", "evil"), "'model_type' names class 'evil'"),
    ("tokenizer class", "tokenizer/tokenizer_config.json", _set("tokenizer_class", "EvilTokenizer"),
     "tokenizer/tokenizer_config.json: 'tokenizer_class' names class 'EvilTokenizer'"),
    ("tokenizer auto_map", "tokenizer/tokenizer_config.json", _set("auto_map", {"AutoTokenizer": ["t.Evil", None]}),
     "'auto_map' names custom code"),
    ("feature extractor type", "feature_extractor/preprocessor_config.json",
     _set("feature_extractor_type", "EvilExtractor"), "'feature_extractor_type' names class 'EvilExtractor'"),
    ("feature extractor trust_remote_code", "feature_extractor/preprocessor_config.json",
     _set("trust_remote_code", True), "'trust_remote_code' names custom code"),
]


@pytest.mark.parametrize("name,file,edit,needle", BAD_COMPONENT, ids=[c[0] for c in BAD_COMPONENT])
def test_a_bad_component_config_is_refused_naming_it(sd_folder, name, file, edit, needle):
    _edit_json(sd_folder / file, edit)
    with pytest.raises(ModelLoadError) as e:
        check_sd_folder(sd_folder)
    msg = str(e.value)
    assert msg.startswith(f"{sd_folder / file}: ") and needle in msg and "\n" not in msg, msg


def test_a_component_config_that_is_not_json_is_one_line(sd_folder):
    (sd_folder / "scheduler" / "scheduler_config.json").write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match=r"scheduler_config\.json: a model config must be a JSON object, got list$"):
        check_sd_folder(sd_folder)


@pytest.mark.parametrize("where", [".", "unet", "text_encoder"])
def test_a_python_file_in_the_folder_is_refused(sd_folder, where):
    (sd_folder / where / "my_unet.py").write_text("raise SystemExit('ran')\n")
    with pytest.raises(ModelLoadError, match=r"my_unet\.py: a Python file in a model folder; lcd loads no code"):
        check_sd_folder(sd_folder)


# --- transformers folders (CLIP, DINO) --------------------------------------------------------------

@pytest.fixture
def clip_folder(tiny_dir, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_dir / "clip", tmp_path / "clip"))


BAD_CLIP = [
    ("config auto_map", "config.json", _set("auto_map", {"AutoModel": "modeling_evil.EvilModel"}),
     "config.json: 'auto_map' names custom code"),
    ("config architecture", "config.json", _set("architectures", ["EvilModel"]), "'architectures' names class 'EvilModel'"),
    ("config model_type", "config.json", _set("model_type", "evil"), "'model_type' names class 'evil'"),
    ("tokenizer auto_map", "tokenizer_config.json", _set("auto_map", {"AutoTokenizer": ["tok.Evil", None]}),
     "tokenizer_config.json: 'auto_map' names custom code"),
    ("tokenizer class", "tokenizer_config.json", _set("tokenizer_class", "EvilTokenizer"),
     "'tokenizer_class' names class 'EvilTokenizer'"),
    ("processor class", "preprocessor_config.json", _set("processor_class", "EvilProcessor"),
     "'processor_class' names class 'EvilProcessor'"),
    ("image processor", "preprocessor_config.json", _set("image_processor_type", "EvilImageProcessor"),
     "'image_processor_type' names class 'EvilImageProcessor'"),
]


@pytest.mark.parametrize("name,file,edit,needle", BAD_CLIP, ids=[c[0] for c in BAD_CLIP])
def test_a_bad_clip_folder_is_refused_by_load_clip(clip_folder, name, file, edit, needle):
    from lcd.models.loader import load_clip

    _edit_json(clip_folder / file, edit)
    with pytest.raises(ModelLoadError) as e:
        load_clip(clip_folder)
    msg = str(e.value)
    assert msg.startswith(f"{clip_folder / file}: ") and needle in msg and "\n" not in msg, msg


def test_a_dino_folder_with_auto_map_is_refused_by_load_dino(tiny_dir, tmp_path):
    from lcd.models.loader import load_dino

    d = Path(shutil.copytree(tiny_dir / "dino", tmp_path / "dino"))
    _edit_json(d / "preprocessor_config.json", _set("auto_map", {"AutoImageProcessor": "proc.Evil"}))
    with pytest.raises(ModelLoadError, match=r"dino/preprocessor_config\.json: 'auto_map' names custom code"):
        load_dino(d)
    _edit_json(d / "preprocessor_config.json", lambda c: (c.pop("auto_map"), c.update(image_processor_type="EvilProc")))
    with pytest.raises(ModelLoadError, match=r"'image_processor_type' names class 'EvilProc'"):
        load_dino(d)
    (d / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "ViTImageProcessor"}))
    (d / "modeling_vit.py").write_text("")
    with pytest.raises(ModelLoadError, match=r"modeling_vit\.py: a Python file in a model folder"):
        load_dino(d)


# --- through the production loaders, with the payload importable ------------------------------------

def _payload_tree(root: Path, marker: Path) -> None:
    """root/mal/sd/unet/payload.py, importable as `mal.sd.unet.payload`, writes `marker` when imported."""
    pkg = root / "mal" / "sd" / "unet"
    pkg.mkdir(parents=True)
    for d in (root / "mal", root / "mal" / "sd", pkg):
        (d / "__init__.py").write_text("")
    (pkg / "payload.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('code ran')\n"
                                    "from diffusers import UNet2DConditionModel\n")


def test_load_sd_pipeline_imports_nothing_the_folder_names(tiny_dir, tmp_path, monkeypatch):
    from lcd.models.loader import load_sd_pipeline

    model = Path(shutil.copytree(tiny_dir / "sd", tmp_path / "models" / "x"))
    _edit_json(model / "model_index.json", _set("unet", ["mal.sd.unet.payload", "UNet2DConditionModel"]))
    marker = tmp_path / "PWNED"
    _payload_tree(tmp_path, marker)
    monkeypatch.syspath_prepend(str(tmp_path))  # as `python -m` puts the working directory first
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match=r"^models/x/model_index\.json: component 'unet' names library "
                                             r"'mal\.sd\.unet\.payload', not diffusers or transformers"):
        load_sd_pipeline("models/x")
    assert not marker.exists() and "mal.sd.unet.payload" not in sys.modules
    try:
        __import__("mal.sd.unet.payload")  # the payload is real: importing it does write the marker
        assert marker.exists()
    finally:  # later tests check that nothing imported it
        for name in [m for m in sys.modules if m == "mal" or m.startswith("mal.")]:
            del sys.modules[name]


def test_single_file_config_folder_is_checked_before_the_file_is_read(tmp_path):
    from lcd.models.loader import load_sd_pipeline

    cfg = Path(shutil.copytree(CONFIGS / "sd15", tmp_path / "cfg"))
    _edit_json(cfg / "model_index.json", _set("text_encoder", ["mal.te", "CLIPTextModel"]))
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"not read")
    with pytest.raises(ModelLoadError, match=r"cfg/model_index\.json: component 'text_encoder' names library 'mal\.te'"):
        load_sd_pipeline(ckpt, single_file_config=cfg)


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):  # unpickling calls open(marker, "w"): a file appears if the pickle runs
        return (open, (self.marker, "w"))


class _Shell:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):  # unpickling runs a shell command that creates the marker
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", [_Payload, _Shell], ids=["builtins.open", "os.system"])
def test_a_pickled_sam_checkpoint_is_refused_in_one_line_naming_the_file(tmp_path, payload):
    from lcd.models.loader import load_sam

    marker = tmp_path / "PWNED"
    torch.save({"image_encoder.x": payload(str(marker))}, tmp_path / "evil.pth")
    with pytest.raises(ModelLoadError) as e:
        load_sam(tmp_path, "vit_tiny")  # a folder: the file inside is the one named
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'evil.pth'}: cannot read SAM checkpoint: UnpicklingError: "), msg
    assert "\n" not in msg and "weights_only=False" not in msg, msg
    if payload is _Shell:
        assert "GLOBAL posix.system" in msg, msg
    assert not marker.exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy pickle"])
def test_a_pickled_single_file_checkpoint_is_refused_in_one_line(tmp_path, legacy):
    import pickle

    from lcd.models.loader import load_sd_pipeline

    marker = tmp_path / "PWNED"
    state = {"state_dict": {"x": _Shell(str(marker))}}
    if legacy:  # a 2022-style .ckpt: no zip container, so it cannot be memory-mapped
        (tmp_path / "evil.ckpt").write_bytes(pickle.dumps(state, protocol=4))
    else:
        torch.save(state, tmp_path / "evil.ckpt")
    with pytest.raises(ModelLoadError) as e:
        load_sd_pipeline(tmp_path / "evil.ckpt")
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'evil.ckpt'}: cannot read the checkpoint's tensors: UnpicklingError: "), msg
    assert "\n" not in msg and "weights_only=False" not in msg, msg
    assert ("Unsupported operand" if legacy else "GLOBAL posix.system") in msg, msg  # the unpickler's reason
    assert not marker.exists()


def test_a_sam_checkpoint_that_is_not_a_state_dict_is_one_line(tmp_path):
    from lcd.models.loader import load_sam

    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(ModelLoadError, match=r"list\.pth: not a SAM state dict \(a list\)$"):
        load_sam(tmp_path / "list.pth", "vit_tiny")


def test_an_open_clip_folder_naming_a_transformers_tower_is_refused(tiny_dir, tmp_path):
    from lcd.models.loader import load_open_clip
    from lcd.models.tiny import TINY_OPEN_CLIP_ARCH

    d = Path(shutil.copytree(tiny_dir / "open_clip", tmp_path / "oc"))
    cfg = d / f"{TINY_OPEN_CLIP_ARCH}.json"
    _edit_json(cfg, lambda c: c["text_cfg"].update(hf_model_name=str(tmp_path / "evil-hf")))
    with pytest.raises(ModelLoadError, match=rf"{TINY_OPEN_CLIP_ARCH}\.json: 'text_cfg\.hf_model_name' names a "
                                             r"transformers model"):
        load_open_clip(d)
    cfg.write_text('{"embed_dim": 32, "text_cfg": [1]}')
    with pytest.raises(ModelLoadError, match=r"'text_cfg' must be a JSON object, got list$"):
        load_open_clip(d)


def test_check_local_models_checks_local_folders_and_leaves_hub_ids(sd_folder, tmp_path):
    from lcd.models.config import ModelsConfig
    from lcd.models.loader import check_local_models

    check_local_models(ModelsConfig(sd=str(sd_folder), sd_single_file_config=str(CONFIGS / "sd15")))
    check_local_models(ModelsConfig(sd="stable-diffusion-v1-5/stable-diffusion-v1-5"))  # resolved when loaded
    _edit_json(sd_folder / "model_index.json", _set("vae", ["mal.vae", "AutoencoderKL"]))
    with pytest.raises(ModelLoadError, match=r"component 'vae' names library 'mal\.vae'"):
        check_local_models(ModelsConfig(sd=str(tmp_path / "model.safetensors"), sd_single_file_config=str(sd_folder)))
    with pytest.raises(ModelLoadError, match=r"component 'vae' names library 'mal\.vae'"):
        check_local_models(ModelsConfig(sd=str(sd_folder)))
