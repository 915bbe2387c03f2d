import pytest

from lcd.errors import LcdError
from lcd.jobs import tables
from lcd.jobs.evaluation import evaluation_table


def _row(i, concept, region, status="edited"):
    return {"id": f"i{i}", "image": "a.jpg", "region": region, "concept": concept, "prompt": "p", "seed": i,
            "output": "o.png", "input_hash": "h", "status": status, "shard": "s", "seconds": 0.0}


def test_keeps_scorable_concept_rows_and_maps_names_to_photo_folders(tmp_path):
    mask = tmp_path / "m.png"
    mask.write_bytes(b"x")
    res = tmp_path / "results.parquet"
    tables.write_table(res, [_row(0, "dog", str(mask)), _row(1, None, str(mask)), _row(2, "dog", "box:0,0,4,4"),
                             _row(3, "/abs/cat", str(mask), "skipped")], tables.RESULTS_SCHEMA)
    assert evaluation_table(res, tmp_path / "concepts", tmp_path / "scored.parquet") == 2
    got = tables.read_table(tmp_path / "scored.parquet", tables.RESULTS_SCHEMA).to_pylist()
    assert [(r["id"], r["concept"]) for r in got] == [("i0", str(tmp_path / "concepts" / "dog")), ("i3", "/abs/cat")]
    tables.write_table(res, [_row(1, None, str(mask))], tables.RESULTS_SCHEMA)
    with pytest.raises(LcdError, match="no edit to evaluate"):
        evaluation_table(res, tmp_path / "concepts", tmp_path / "scored.parquet")


def test_uses_the_region_the_edit_saved_so_box_and_sam_rows_are_scored(tmp_path):
    from lcd.jobs.layout import region_path

    res = tmp_path / "results.parquet"
    tables.write_table(res, [_row(0, "dog", "box:0,0,4,4"), _row(1, "dog", "sam:text:a cat"),
                             _row(2, "dog", "sam:largest")], tables.RESULTS_SCHEMA)
    for i in (0, 1):  # i2's region file is gone: it cannot be scored
        region_path(tmp_path, f"i{i}").parent.mkdir(exist_ok=True)
        region_path(tmp_path, f"i{i}").write_bytes(b"x")
    assert evaluation_table(res, tmp_path / "concepts", tmp_path / "scored.parquet") == 2
    got = tables.read_table(tmp_path / "scored.parquet", tables.RESULTS_SCHEMA).to_pylist()
    assert [r["region"] for r in got] == [str(region_path(tmp_path, "i0")), str(region_path(tmp_path, "i1"))]
