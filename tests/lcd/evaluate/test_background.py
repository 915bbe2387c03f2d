"""Background metrics ignore the masked region entirely; LPIPS loads without downloads."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lcd.errors import LcdError, ModelLoadError
from lcd.evaluate import background as B


@pytest.fixture(scope="module")
def lpips_rand():
    return B.load_lpips("alex", "random")


def _case():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[16:40, 20:44] = True
    return ref, mask


def test_identical_images_are_perfect(lpips_rand):
    ref, mask = _case()
    m = B.background_metrics(ref, ref.copy(), mask, lpips_rand)
    assert m == {"bg_mse": 0.0, "bg_ssim": pytest.approx(1.0), "bg_psnr": math.inf, "bg_lpips": 0.0}


def test_changes_inside_mask_are_ignored_entirely(lpips_rand):
    ref, mask = _case()
    edit = ref.copy()
    edit[mask] = 255 - edit[mask]  # wreck the masked region only
    assert B.background_metrics(edit, ref, mask, lpips_rand) == {
        "bg_mse": 0.0, "bg_ssim": pytest.approx(1.0), "bg_psnr": math.inf, "bg_lpips": 0.0
    }
    # the same damage outside the mask is seen by every metric
    bad = edit.copy()
    bad[50:60, 2:12] = 0
    m = B.background_metrics(bad, ref, mask, lpips_rand)
    assert m["bg_mse"] > 0 and m["bg_psnr"] < 60 and m["bg_ssim"] < 0.99 and m["bg_lpips"] > 0


def test_mse_divides_by_unmasked_count_not_image_size():
    ref, mask = _case()
    edit = ref.astype(int)
    edit[~mask] = np.clip(edit[~mask] + 10, 0, 255)
    edit = edit.astype(np.uint8)
    d = edit.astype(float)[~mask] - ref.astype(float)[~mask]
    assert B.masked_mse(edit, ref, mask) == pytest.approx((d**2).mean())
    # PIE-Bench's whole-image mean would be smaller by the unmasked fraction; ours is not
    assert B.masked_mse(edit, ref, mask) > ((edit.astype(float) - ref.astype(float)) ** 2).mean()


def test_error_paths():
    ref, mask = _case()
    with pytest.raises(LcdError, match="whole image"):
        B.masked_mse(ref, ref, np.ones_like(mask), name="s1")
    with pytest.raises(LcdError, match="s2: mask is"):
        B.masked_mse(ref, ref, mask[:10], name="s2")
    with pytest.raises(LcdError, match="s3: edit is"):
        B.masked_mse(ref, ref[:32], mask, name="s3")
    with pytest.raises(ModelLoadError, match="lpips_net must be one of"):
        B.load_lpips("squeeze")
    with pytest.raises(ModelLoadError, match="backbone weights not found"):
        B.load_lpips("alex", "/nonexistent/alexnet.pth")


def test_lpips_backbone_loads_from_a_torchvision_state_dict(tmp_path):
    """Covers the loading path for real weights with a locally written random alexnet (same format
    as torchvision's alexnet-owt file); it does not prove real-weight LPIPS values."""
    import torchvision

    torch.manual_seed(3)
    tv = torchvision.models.alexnet(weights=None)
    path = tmp_path / "alexnet.pth"
    torch.save(tv.state_dict(), path)
    model = B.load_lpips("alex", str(path))
    assert model.comparable and model.backbone == str(path)
    assert torch.equal(model.net.net.slice1[0].weight, tv.features[0].weight)
    assert torch.equal(getattr(model.net.net.slice5, "10").weight, tv.features[10].weight)
    broken = {k: v for k, v in tv.state_dict().items() if k != "features.3.weight"}
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ModelLoadError, match="missing features.3.weight"):
        B.load_lpips("alex", str(tmp_path / "broken.pth"))
