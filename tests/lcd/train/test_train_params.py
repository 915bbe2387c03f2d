"""Which tensors train: a pure function of UNet module names, checked on SD1.5's shapes."""

import pytest

from lcd.errors import LcdError
from lcd.train.params import count_params, freeze_except, trainable_names

SD15_UNET = dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 layers_per_block=2, in_channels=4, out_channels=4, sample_size=64)


def test_sd15_kv_count_matches_the_paper():
    c = count_params(SD15_UNET, "kv")
    assert c == {"unet": 859_520_964, "trainable": 19_169_280, "tensors": 32}


def test_crossattn_adds_q_and_out_of_the_same_16_layers():
    c = count_params(SD15_UNET, "crossattn")
    # q (in x in) and out (in x in + bias) per attn2 on top of K/V
    assert c["trainable"] > 19_169_280 and c["tensors"] == 16 * 5


def test_trainable_names_kv_on_tiny_unet(tiny_sd):
    names = trainable_names([n for n, _ in tiny_sd.pipe.unet.named_parameters()], "kv")
    assert names and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in names)
    assert not any(".attn1." in n for n in names)


def test_unknown_method_is_an_error():
    with pytest.raises(LcdError, match="method must be one of"):
        trainable_names(["a.attn2.to_k.weight"], "qkv")


def test_freeze_except_on_meta_unet_sets_only_kv():
    from lcd.train.params import meta_unet

    unet = meta_unet(dict(SD15_UNET, block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                          up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32))
    names = set(freeze_except(unet, "kv"))
    assert {n for n, p in unet.named_parameters() if p.requires_grad} == names
