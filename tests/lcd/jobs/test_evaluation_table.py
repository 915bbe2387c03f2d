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
