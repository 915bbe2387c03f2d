"""A pixel bomb is refused by our own limit in one line: Pillow's DecompressionBombWarning (printed
to the terminal before the CLI's error line) is not emitted."""

import warnings

import pytest
from PIL import Image

from lcd.errors import InputImageError
from lcd.io.images import load_image, load_mask


def test_a_bomb_is_refused_without_pillows_warning(tmp_path):
    Image.new("1", (25_000, 25_000)).save(tmp_path / "bomb.png")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for load in (load_image, load_mask):
            with pytest.raises(InputImageError, match="25000x25000 is 625 MP, above the limit of 200 MP"):
                load(tmp_path / "bomb.png")
    assert [str(w.message) for w in seen] == []
