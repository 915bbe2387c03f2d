"""Refused pickles are one line naming the file and the global or opcode torch refused, never
torch's numbered advice ('(1) In PyTorch 2.6 ...') that ends by suggesting weights_only=False."""

from __future__ import annotations

import io
import pickle

import pytest
import torch

from lcd.errors import ModelLoadError
from lcd.io.torchfile import load_weights


class _Opens:
    def __reduce__(self):
        return (io.open, ("/nonexistent/never-opened", "w"))


@pytest.mark.parametrize("how", ["torch.save", "pickle protocol 2", "pickle protocol 4"])
def test_a_refused_pickle_is_one_line_naming_the_file_and_the_reason(tmp_path, how):
    f = tmp_path / "evil.pt"
    if how == "torch.save":
        torch.save({"a": _Opens()}, f)
    else:
        f.write_bytes(pickle.dumps({"a": _Opens()}, protocol=2 if "2" in how else 4))
    with pytest.raises(ModelLoadError) as e:
        load_weights(f, "SAM checkpoint")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{f}: cannot read SAM checkpoint: UnpicklingError: refused by torch")
    assert "(1)" not in msg and "weights_only" not in msg, msg
    # the reason torch gave: the global it refused, or (protocol 4) the opcode it cannot read
    assert "GLOBAL io.open" in msg or "Unsupported operand" in msg, msg


def test_a_tensor_file_still_loads(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert load_weights(tmp_path / "ok.pt", "weights")["w"].tolist() == [1.0, 1.0]
