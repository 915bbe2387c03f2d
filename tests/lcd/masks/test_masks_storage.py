"""Storage choices of a mask part: codec, per-column encodings, and that every reader still works."""

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from lcd.masks.config import MasksConfig
from lcd.masks.predict import MaskRecord
from lcd.masks.store import COUNTS_COLUMN, image_rows, read_masks, write_part


def _disc_masks(n: int, h: int = 96, w: int = 128) -> list[np.ndarray]:
    yy, xx = np.mgrid[:h, :w]
    return [((yy - 40 - i) ** 2 + (xx - 50 - 3 * i) ** 2) < (10 + 2 * i) ** 2 for i in range(n)]


def _write(tmp_path, masks, **kw):
    recs = [MaskRecord(m, "auto", 0.9, 0.95) for m in masks]
    h, w = masks[0].shape
    rows = image_rows("im", "im.png", "ab" * 32, w, h, recs, {"type": "t", "ref": "r", "sha256": "s", "revision": None})
    images = [{"image_id": "im", "image_sha256": "ab" * 32, "width": w, "height": h}]
    return write_part(tmp_path, rows, images, {}, 1024, **kw)


def _chunks(path):
    md = pq.read_metadata(path)
    return {md.row_group(0).column(i).path_in_schema: md.row_group(0).column(i) for i in range(md.num_columns)}


@pytest.mark.parametrize("codec,level", [("zstd", 19), ("brotli", 11), ("snappy", None), ("none", None)])
def test_part_round_trips_with_each_codec(tmp_path, codec, level):
    masks = _disc_masks(5)
    part = _write(tmp_path, masks, codec=codec, level=level)
    chunks = _chunks(part)
    assert chunks[COUNTS_COLUMN].compression == ("UNCOMPRESSED" if codec == "none" else codec.upper())
    # counts: lengths apart from the characters, no dictionary (every string is unique)
    assert "DELTA_LENGTH_BYTE_ARRAY" in chunks[COUNTS_COLUMN].encodings
    assert not chunks[COUNTS_COLUMN].has_dictionary_page
    # repeated columns keep their dictionary
    assert chunks["image"].has_dictionary_page and chunks["model.ref"].has_dictionary_page
    # no min/max of counts strings (two whole masks per page, useless for filtering); image_id keeps
    # its statistics, which let a filtered read skip other images' row groups
    assert not chunks[COUNTS_COLUMN].is_stats_set
    assert chunks["image_id"].is_stats_set and chunks["image_id"].statistics.min == "im"
    _, got = read_masks(tmp_path, "im")
    assert np.array_equal(got, np.stack(masks))
    assert pd.read_parquet(part)["rle"].iloc[2]["size"].tolist() == [96, 128]


def test_default_storage_is_smaller_than_plain_zstd(tmp_path):
    """The default (zstd 19, delta-length counts) must beat pyarrow's default zstd writer on the
    counts column, or it is not worth its write time."""
    import pyarrow as pa

    from lcd.masks.store import MASK_SCHEMA

    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    # region-like masks: discs with edges roughened by smoothed noise (as photo regions are)
    masks = [m ^ (gaussian_filter(rng.standard_normal(m.shape), 2) > 0.25) & ~m[::-1] for m in _disc_masks(20)]
    ours = _chunks(_write(tmp_path / "a", masks))[COUNTS_COLUMN].total_compressed_size
    table = pq.read_table(next((tmp_path / "a" / "masks").glob("*.parquet")), schema=MASK_SCHEMA)
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.Table.from_pylist(table.to_pylist(), schema=MASK_SCHEMA), plain, compression="zstd")
    assert ours < _chunks(plain)[COUNTS_COLUMN].total_compressed_size


def test_level_is_checked_against_the_codec():
    assert MasksConfig(parquet_codec="brotli", parquet_level=11).parquet_level == 11
    with pytest.raises(ValidationError, match="outside zstd's range 1..22"):
        MasksConfig(parquet_level=30)
    with pytest.raises(ValidationError, match="takes no level"):
        MasksConfig(parquet_codec="snappy", parquet_level=3)
    with pytest.raises(ValidationError):
        MasksConfig(parquet_codec="lzma")


def _store_with_parts(tmp_path, n_parts: int):
    masks = _disc_masks(3)
    for k in range(n_parts):
        recs = [MaskRecord(m, "auto", 0.9, 0.95) for m in masks[: k + 1]]
        rows = image_rows(f"im{k}", f"im{k}.png", "ab" * 32, 128, 96, recs, {"type": "t", "ref": "r", "sha256": "s",
                                                                            "revision": None})
        write_part(tmp_path, rows, [{"image_id": f"im{k}", "image_sha256": "ab" * 32, "width": 128, "height": 96}],
                   {}, 1024)
    return masks


def test_opened_store_reads_only_the_parts_that_list_the_image(tmp_path):
    from lcd.masks.store import MaskStore, part_paths

    masks = _store_with_parts(tmp_path, 3)
    store = MaskStore(tmp_path)
    assert {k: [p.name for p in v] for k, v in store.by_image.items()} == {
        f"im{k}": [part_paths(tmp_path)[k].name] for k in range(3)}
    # wreck the parts of im0 and im2: im1's lookup must not touch them
    for k in (0, 2):
        part_paths(tmp_path)[k].write_bytes(b"not parquet")
    rows, got = store.masks("im1")
    assert rows.column("mask_id").to_pylist() == [0, 1] and np.array_equal(got, np.stack(masks[:2]))
    assert read_masks(store, "im1")[0].equals(rows)
    reopened = MaskStore(tmp_path)  # a path opens every footer again: the wrecked ones are skipped, named
    assert sorted(p.name for p in reopened.bad) == [part_paths(tmp_path)[k].name for k in (0, 2)]
    assert read_masks(tmp_path, "im1")[0].equals(rows)
    from lcd.errors import LcdError

    with pytest.raises(LcdError, match="nope: no masks stored"):
        store.masks("nope")


def test_parts_without_the_images_listing_are_searched_on_every_lookup(tmp_path):
    import pyarrow.parquet as pq

    from lcd.masks.store import MaskStore, part_paths

    masks = _store_with_parts(tmp_path, 2)
    foreign = part_paths(tmp_path)[1]
    table = pq.read_table(foreign)
    pq.write_table(table.replace_schema_metadata(None), foreign)  # as another tool would write it
    store = MaskStore(tmp_path)
    assert store.unindexed == [foreign] and "im1" not in store.by_image
    assert np.array_equal(store.masks("im1")[1], np.stack(masks[:2]))
    assert store.masks("im0")[1].shape[0] == 1
    assert store.rows("im1", columns=["area"]).column_names == ["area"]
