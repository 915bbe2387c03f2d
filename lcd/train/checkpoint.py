"""Training checkpoints for an exact resume, and the loss curve files.

A checkpoint folder `step-NNNNNN/` holds
    trainable.safetensors   every trained tensor (by name) and the torch generator state (uint8)
    optimizer.pt            the optimizer's state dict (read back with weights_only=True)
    state.json              step, numpy generator state, loss history, config fingerprint
It is written under a temporary name and renamed, so a killed run never leaves a half checkpoint;
the newest complete one is the resume point.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from lcd.errors import LcdError
from lcd.io.atomic import write_text_atomic
from lcd.io.documents import load_json_file
from lcd.io.torchfile import load_weights

RNG_KEY = "__rng__.torch_generator"


def fingerprint(config: dict[str, Any]) -> str:
    """Hash of the settings that must match for a resume to be exact."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_checkpoint(ckpt_root: Path, step: int, tensors: dict[str, torch.Tensor], optimizer, gen: torch.Generator,
                    np_state: dict, losses: list[dict], fp: str, keep: int) -> Path:
    from safetensors.torch import save_file

    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step:06d}"
    tmp = ckpt_root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    state = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    state[RNG_KEY] = gen.get_state()
    save_file(state, str(tmp / "trainable.safetensors"))
    buf = io.BytesIO()
    torch.save(optimizer.state_dict(), buf)
    (tmp / "optimizer.pt").write_bytes(buf.getvalue())
    (tmp / "state.json").write_text(json.dumps({"step": step, "np_rng": np_state, "losses": losses, "fingerprint": fp}))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    if not ckpt_root.is_dir():
        return []
    return sorted(p for p in ckpt_root.glob("step-*") if (p / "state.json").exists())


def load_checkpoint(path: Path, fp: str) -> tuple[dict[str, torch.Tensor], dict, torch.Tensor, dict]:
    """-> (trained tensors, optimizer state dict, torch generator state, state.json dict)."""
    from safetensors.torch import load_file

    state = load_json_file(path / "state.json", dict, "object")  # a torn or foreign file: one line naming it
    if state.get("fingerprint") != fp:
        raise LcdError(
            f"{path}: checkpoint was made with different training settings (fingerprint "
            f"{state.get('fingerprint')} vs {fp}); resume with the same config or start afresh",
            item=str(path),
        )
    tensors = load_file(str(path / "trainable.safetensors"))
    gen_state = tensors.pop(RNG_KEY)
    opt = load_weights(path / "optimizer.pt", "the optimizer state")  # a refused pickle: one line naming it
    return tensors, opt, gen_state, state


def write_loss_curve(out_dir: Path, losses: list[dict]) -> None:
    """losses.csv (for `dvc plots`: x=step, y=loss) and losses.json, written atomically."""
    if not losses:
        return
    cols = list(losses[0].keys())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(losses)
    write_text_atomic(out_dir / "losses.csv", buf.getvalue())
    write_text_atomic(out_dir / "losses.json", json.dumps(losses, indent=1))
