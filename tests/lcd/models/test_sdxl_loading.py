"""SDXL loads through the production loader in every layout users download, the family read off
the model with no setting: the tiny SDXL diffusers folder (base and 9-channel inpainting), the hub
cache with an fp16 variant, and one file in generative-models' layout with the bundled configs;
the VAE never runs in float16. The bundled `sdxl` configs are SDXL's real architecture."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lcd.errors import ModelLoadError
from lcd.models.bundled import CONFIGS, single_file_kind
from lcd.models.config import ModelsConfig
from lcd.models.ldm_format import save_single_file, to_ldm_state_dict
from lcd.models.loader import load_sd_pipeline
from lcd.models.pipeline import load_sd

from tests.lcd.models.test_download_layouts import COMMIT, hub_cache

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@pytest.fixture(scope="module")
def sdxl(tiny_dir):
    return load_sd_pipeline(tiny_dir / "sdxl")


def _same_weights(a, b) -> list[str]:
    """Names of tensors that differ between two pipelines' model components ([] when bit-equal)."""
    bad = []
    for c in COMPONENTS:
        sa, sb = getattr(a, c).state_dict(), getattr(b, c).state_dict()
        assert sa.keys() == sb.keys(), c
        bad += [f"{c}.{k}" for k in sa if not torch.equal(sa[k], sb[k])]
    return bad


def test_tiny_sdxl_folder_loads_as_sdxl_with_both_encoders(sdxl, tiny_dir):
    from diffusers import StableDiffusionXLPipeline

    assert sdxl.family == "sdxl" and type(sdxl.pipe) is StableDiffusionXLPipeline and not sdxl.is_inpaint_model
    pipe = sdxl.pipe
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert (pipe.text_encoder.config.hidden_size, pipe.text_encoder_2.config.hidden_size) == (32, 48)
    assert pipe.unet.config.cross_attention_dim == 32 + 48
    assert pipe.tokenizer_2.pad_token == "!" and pipe.tokenizer.pad_token == "<|endoftext|>"
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert sdxl.latent_factor == 8 and type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    # the pin covers the second encoder's weights
    assert "text_encoder_2/model.safetensors" in sdxl.source.weights
    assert load_sd_pipeline(tiny_dir / "sd").family == "sd15"


def test_tiny_sdxl_single_file_loads_bit_exact_with_no_config_setting(sdxl, tiny_dir):
    path = tiny_dir / "sdxl-single" / "tiny-sdxl.safetensors"
    keys = set(to_ldm_state_dict(sdxl.pipe))
    # generative-models' layout, by its real key names
    for key in ("conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
                "conditioner.embedders.1.model.transformer.resblocks.4.attn.in_proj_weight",
                "conditioner.embedders.1.model.text_projection", "model.diffusion_model.label_emb.0.0.weight",
                "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight",
                "first_stage_model.decoder.mid.attn_1.q.weight"):
        assert key in keys, key
    assert single_file_kind(path) == "sdxl-tiny"
    lp = load_sd_pipeline(path)
    assert lp.family == "sdxl" and lp.source.kind == "single_file"
    assert _same_weights(lp.pipe, sdxl.pipe) == []
    assert lp.pipe.tokenizer_2.pad_token == "!"
    assert lp.pipe.scheduler.config.timestep_spacing == "leading"
    # models.sd_single_file_config naming an SDXL folder: its family's pipeline, the same weights
    cfg = load_sd_pipeline(path, single_file_config=tiny_dir / "sdxl")
    assert cfg.family == "sdxl" and _same_weights(cfg.pipe, sdxl.pipe) == []


def test_tiny_sdxl_inpainting_folder_and_single_file(tiny_dir, tmp_path):
    from diffusers import StableDiffusionXLInpaintPipeline

    lp = load_sd_pipeline(tiny_dir / "sdxl-inpaint")
    assert lp.family == "sdxl" and lp.is_inpaint_model and type(lp.pipe) is StableDiffusionXLInpaintPipeline
    path = save_single_file(lp.pipe, tmp_path / "tiny-sdxl-inpaint.safetensors")
    assert single_file_kind(path) == "sdxl-tiny-inpaint"
    one = load_sd_pipeline(path)
    assert type(one.pipe) is StableDiffusionXLInpaintPipeline and _same_weights(one.pipe, lp.pipe) == []


def test_models_sd_picks_the_family_and_float16_keeps_the_vae_in_float32(tiny_dir):
    loaded = load_sd(ModelsConfig(sd=str(tiny_dir / "sdxl"), dtype="float16"))
    pipe = loaded.lp.pipe
    assert loaded.lp.family == "sdxl"
    assert pipe.unet.dtype == torch.float16 and pipe.text_encoder_2.dtype == torch.float16
    assert pipe.vae.config.force_upcast and pipe.vae.dtype == torch.float32  # SDXL's VAE overflows in float16


def test_hub_cache_fp16_variant_of_sdxl(sdxl, tmp_path):
    src = tmp_path / "fp16"
    sdxl.pipe.to(torch.float16).save_pretrained(src, variant="fp16")
    sdxl.pipe.to(torch.float32)
    repo = hub_cache(tmp_path / "hub", src, repo_id="someone/tiny-sdxl")
    lp = load_sd_pipeline(repo, variant="fp16")
    assert lp.family == "sdxl" and lp.source.revision == COMMIT and lp.source.variant == "fp16"
    assert lp.source.weights == ("text_encoder/model.fp16.safetensors", "text_encoder_2/model.fp16.safetensors",
                                 "unet/diffusion_pytorch_model.fp16.safetensors",
                                 "vae/diffusion_pytorch_model.fp16.safetensors")
    w = sdxl.pipe.text_encoder_2.text_model.encoder.layers[0].mlp.fc1.weight
    assert torch.equal(lp.pipe.text_encoder_2.text_model.encoder.layers[0].mlp.fc1.weight, w.half().float())


def _write_shapes(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    from safetensors.torch import save_file

    save_file({k: torch.zeros(s) for k, s in shapes.items()}, str(path))
    return path


def test_sdxl_files_no_bundled_config_fits_are_one_line(tmp_path):
    conv = "model.diffusion_model.input_blocks.0.0.weight"
    l_key = "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"
    g_key = "conditioner.embedders.1.model.token_embedding.weight"
    other = _write_shapes(tmp_path / "wide.safetensors", {conv: (64, 4, 3, 3), l_key: (8, 32), g_key: (8, 48)})
    with pytest.raises(ModelLoadError, match=r"wide.safetensors: an SDXL-layout checkpoint of widths \(UNet, CLIP-L, "
                                             r"bigG\) \(64, 32, 48\), which no bundled config has .* set "
                                             r"models.sd_single_file_config"):
        load_sd_pipeline(other)
    refiner = _write_shapes(tmp_path / "refiner.safetensors", {conv: (384, 4, 3, 3), g_key: (8, 1280)})
    with pytest.raises(ModelLoadError, match=r"refiner.safetensors: an SDXL-layout checkpoint without "
                                             r"conditioner.embedders.0.transformer"):
        load_sd_pipeline(refiner)


def test_bundled_sdxl_configs_are_sdxl_base_and_inpainting_at_full_size():
    """The shipped configs build SDXL's real architecture (parameter counts of
    stabilityai/stable-diffusion-xl-base-1.0's components), on the meta device: no memory."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lcd.models.trust import read_config

    def n(m) -> int:
        return sum(p.numel() for p in m.parameters())

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(read_config(CONFIGS / "sdxl" / "unet" / "config.json"))
        vae = AutoencoderKL.from_config(read_config(CONFIGS / "sdxl" / "vae" / "config.json"))
        te = CLIPTextModel(CLIPTextConfig(**read_config(CONFIGS / "sdxl" / "text_encoder" / "config.json")))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**read_config(CONFIGS / "sdxl" / "text_encoder_2" /
                                                                       "config.json")))
    assert (n(unet), n(vae), n(te), n(te2)) == (2_567_463_684, 83_653_863, 123_060_480, 694_659_840)
    attn2 = [k for k in unet.state_dict() if k.endswith("attn2.to_k.weight")]
    assert len(attn2) == 70 and unet.state_dict()[attn2[0]].shape[1] == 2048  # 70 cross-attentions, 2048 context
    inpaint = read_config(CONFIGS / "sdxl-inpaint" / "unet" / "config.json")
    assert inpaint == {**read_config(CONFIGS / "sdxl" / "unet" / "config.json"), "in_channels": 9}


# stabilityai/stable-diffusion-xl-base-1.0's files (its weights in several formats and variants,
# the VAE twice, ONNX parts, and the 7 GB single files at the top)
SDXL_REPO = ["model_index.json", "sd_xl_base_1.0.safetensors", "sd_xl_base_1.0_0.9vae.safetensors",
             "sd_xl_offset_example-lora_1.0.safetensors", "scheduler/scheduler_config.json",
             *[f"{c}/{f}" for c in ("text_encoder", "text_encoder_2")
               for f in ("config.json", "model.safetensors", "model.fp16.safetensors", "model.onnx",
                         "flax_model.msgpack", "openvino_model.bin")],
             *[f"{t}/{f}" for t in ("tokenizer", "tokenizer_2")
               for f in ("merges.txt", "vocab.json", "special_tokens_map.json", "tokenizer_config.json")],
             *[f"{c}/{f}" for c in ("unet", "vae", "vae_1_0")
               for f in ("config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                         "diffusion_flax_model.msgpack")],
             "unet/model.onnx", "unet/model.onnx_data", "vae_decoder/model.onnx", "vae_encoder/model.onnx"]


def test_sdxl_hub_downloads_take_both_encoders_and_nothing_at_the_top():
    """What snapshot_download would fetch of SDXL base's repository with models.variant fp16
    (huggingface_hub's own pattern filter): the fp16 safetensors of unet, vae and both text
    encoders with the configs; never the single files at the top, ONNX / Flax, or vae_1_0's weights."""
    from huggingface_hub.utils import filter_repo_objects

    from lcd.models.resolve import sd_hub_rounds

    first = sorted(filter_repo_objects(SDXL_REPO, allow_patterns=sd_hub_rounds("fp16")[0]))
    weights = [f for f in first if f.endswith(".safetensors")]
    assert weights == ["text_encoder/model.fp16.safetensors", "text_encoder_2/model.fp16.safetensors",
                       "unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors"]
    assert {"tokenizer_2/vocab.json", "text_encoder_2/config.json", "model_index.json"} <= set(first)
    assert not [f for f in first if not f.endswith((".json", ".txt")) and f not in weights]  # no other weights
    assert [f for f in first if "/" not in f] == ["model_index.json"]
