import numpy as np
import pyarrow as pa
import pytest

from lcd.errors import LcdError

from lcd.jobs import tables
from lcd.jobs.contact import contact_sheet


def _row(i, shard):
    return {"id": f"i{i}", "image": "a", "region": "m", "concept": None, "prompt": "p", "seed": i,
            "output": "o", "input_hash": "h", "status": "edited", "shard": shard, "seconds": 0.1}


def test_merge_reads_only_this_sharding_and_keeps_types(tmp_path):
    for i in range(2):
        tables.write_table(tmp_path / f"results-{tables.shard_name(i, 2)}.parquet", [_row(i, "s")], tables.RESULTS_SCHEMA)
    tables.write_table(tmp_path / f"results-{tables.shard_name(0, 3)}.parquet", [_row(9, "old")], tables.RESULTS_SCHEMA)
    n = tables.merge_tables(tables.shard_table_paths(tmp_path, "results", 2), tables.RESULTS_SCHEMA, tmp_path / "r.parquet")
    t = tables.read_table(tmp_path / "r.parquet", tables.RESULTS_SCHEMA)
    assert n == 2 and t.column("id").to_pylist() == ["i0", "i1"] and t.schema.field("seed").type == pa.int64()
    assert tables.merge_tables([tmp_path / "none.parquet"], tables.FAILURES_SCHEMA, tmp_path / "f.parquet") == 0
    empty = tables.read_table(tmp_path / "f.parquet", tables.FAILURES_SCHEMA)
    assert empty.num_rows == 0 and empty.schema == tables.FAILURES_SCHEMA
    with pytest.raises((KeyError, pa.ArrowInvalid, pa.ArrowTypeError)):
        tables.write_table(tmp_path / "bad.parquet", [{"id": 1}], tables.RESULTS_SCHEMA)


def test_contact_sheet_layout():
    img = np.full((50, 30, 3), 200, np.uint8)
    mask = np.zeros((50, 30), bool)
    mask[:10] = True
    sheet = contact_sheet([(img, mask, img), (img, ~mask, img)], side=32, gap=2)
    assert sheet.shape == (68, 102, 3) and sheet.dtype == np.uint8
    with pytest.raises(ValueError, match="must not be empty"):
        contact_sheet([])


def test_materialise_data_copies_bytes_once(tmp_path):
    from pathlib import Path

    from lcd.jobs.datasets import materialise_data

    samples = Path(__file__).resolve().parents[3] / "samples"
    written = materialise_data(samples, tmp_path / "data")
    assert (tmp_path / "data" / "manifests" / "edits.jsonl").read_bytes() == (samples / "manifests" / "edits.jsonl").read_bytes()
    assert len(written) >= 12 and materialise_data(samples, tmp_path / "data") == []
    with pytest.raises(LcdError, match="samples folder lacks concepts"):
        materialise_data(tmp_path, tmp_path / "d2")


def test_sample_rows_spreads_over_the_table(tmp_path):
    rows = [_row(i, "s") for i in range(100)]
    tables.write_table(tmp_path / "r.parquet", rows, tables.RESULTS_SCHEMA)
    got = tables.sample_rows(tmp_path / "r.parquet", 5, ["id"])
    assert [r["id"] for r in got] == ["i0", "i25", "i50", "i74", "i99"]
    assert set(got[0]) == {"id"} and len(tables.sample_rows(tmp_path / "r.parquet", 500, ["id"])) == 100


def test_contact_sheet_labels_rows_and_marks_failures_red():
    from lcd.jobs.contact import FAILED_RGB, LABEL_PX, sheet_labels

    img = np.full((50, 30, 3), 200, np.uint8)
    mask = np.zeros((50, 30), bool)
    labels, failed = sheet_labels([{"id": "dog-01", "prompt": "a photo of [P] dog"}],
                                  [{"id": "bad-7", "stage": "input", "message": "x.jpg: file not found"}])
    assert labels == ["dog-01: a photo of [P] dog", "FAILED bad-7 [input]: x.jpg: file not found"]
    assert failed == [False, True]
    sheet = contact_sheet([(img, mask, img)] * 2, side=32, gap=2, labels=labels, failed=failed)
    row_h = 32 + 2 + LABEL_PX
    assert sheet.shape == (2 * row_h, 102, 3)
    band = lambda r: sheet[r * row_h + 32 : (r + 1) * row_h]  # noqa: E731 - the label band of row r
    assert (band(0) < 100).all(axis=2).any()  # black text under the good row
    red = (band(1) == FAILED_RGB).all(axis=2)
    assert red.sum() > 20 and not (band(0) == FAILED_RGB).all(axis=2).any()  # red text only under the failure
    assert (sheet[row_h + 32, :, :] == FAILED_RGB).all()  # and a red frame around its thumbnails
    with pytest.raises(ValueError, match="1 labels for 2 rows"):
        contact_sheet([(img, mask, img)] * 2, labels=labels[:1])
