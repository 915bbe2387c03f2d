"""`lcd masks compute/export` and `lcd edit --masks --select` on the tiny models."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from lcd.cli import main
from lcd.io.images import load_image, load_mask, read_png_meta


@pytest.fixture
def setup(tmp_path, tiny_dir):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        a = (rng.random((64, 64, 3)) * 80).astype(np.uint8)
        a[10:40, 12:44] = 220
        paths.append(tmp_path / f"s{i}.png")
        Image.fromarray(a).save(paths[-1])
    prompts = json.dumps([{"points": [[20, 20]]}, {"box": [10, 8, 46, 42]}, {"text": "a white square"}])
    pd.DataFrame({"image": [str(p) for p in paths], "prompts": [prompts, None]}).to_csv(tmp_path / "m.csv", index=False)
    params = {
        "models": {"sd": str(tiny_dir / "sd"), "sam": str(tiny_dir / "sam" / "sam_vit_tiny.pth"),
                   "sam_type": "vit_tiny", "clip": str(tiny_dir / "clip")},
        "edit": {"steps": 2, "size": 64, "guidance": 2.0},
        "masks": {"auto": {"points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
                  "select": "largest", "dilate_px": 1},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path, paths


@pytest.mark.slow
def test_compute_export_and_edit_with_stored_masks(setup, capsys):
    tmp, paths = setup
    P = ["--params", str(tmp / "params.yaml")]
    assert main(P + ["masks", "compute", str(tmp / "m.csv"), "--out", str(tmp / "out")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["done"] == 2 and summary["failed"] == 0 and summary["encoder_passes"] == 2
    df = pd.read_parquet(tmp / "out" / "masks")
    text_rows = df[df.source == "text"]
    assert len(text_rows) == 1 and text_rows.iloc[0]["prompt"]["text"] == "a white square"

    # export: the selected mask as a PNG, post-processed per params (dilated by 1)
    png = tmp / "sel.png"
    assert main(P + ["masks", "export", str(tmp / "out"), "--image-id", paths[0].stem,
                     "--select", "point:20,20", "--out", str(png)]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["source"] in {"point", "box", "auto", "text"}
    exported = load_mask(png)
    assert exported.shape == (64, 64) and exported[20, 20]

    # edit from the table instead of a PNG mask: outside the region the image is untouched
    out = tmp / "edit.png"
    assert main(P + ["edit", "--image", str(paths[0]), "--masks", str(tmp / "out"), "--select", "point:20,20",
                     "--prompt", "a photo", "--out", str(out), "--dilate", "0", "--feather", "0"]) == 0
    meta = read_png_meta(out)
    assert meta["select"] == "point:20,20" and meta["masks"] == str(tmp / "out")
    before, after = load_image(paths[0]), load_image(out)
    from lcd.masks.read import select_mask
    from lcd.masks.postprocess import postprocess_mask

    region = postprocess_mask(select_mask(tmp / "out", paths[0].stem, "point:20,20")[0], fill=True, dilate_px=1)
    assert np.array_equal(before[~region], after[~region])

    # text selection through the CLI (tiny CLIP loaded because the spec asks for it)
    assert main(P + ["masks", "export", str(tmp / "out"), "--image-id", paths[1].stem,
                     "--select", "text:a white square", "--out", str(tmp / "t.png")]) == 0


def test_cli_errors(setup, capsys):
    tmp, paths = setup
    P = ["--params", str(tmp / "params.yaml")]
    assert main(P + ["edit", "--image", str(paths[0]), "--mask", str(paths[0]), "--select", "best",
                     "--prompt", "x", "--out", str(tmp / "o.png")]) == 2
    assert "--select/--image-id need --masks" in capsys.readouterr().err
    assert main(P + ["masks", "export", str(tmp / "nope"), "--image-id", "a", "--out", str(tmp / "o.png")]) == 2
    assert "masks table not found" in capsys.readouterr().err
    assert main(P + ["masks", "compute", str(tmp / "none.csv"), "--out", str(tmp / "o")]) == 2
    assert "manifest not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(P + ["edit", "--image", "a", "--mask", "b", "--masks", "c", "--prompt", "x", "--out", "o"])
