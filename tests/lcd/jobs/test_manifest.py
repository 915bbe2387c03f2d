import json

import numpy as np
import pytest

from lcd.errors import InputImageError, LcdError
from lcd.jobs.manifest import parse_manifest, read_manifest, shard_items
from lcd.jobs.regions import box_mask, parse_rule


def _jsonl(*objs):
    return "\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs)


def test_parse_manifest_keeps_good_items_and_reports_bad_lines():
    text = _jsonl(
        {"id": "a", "image": "a.jpg", "mask": "a.png", "prompt": "a dog", "seed": 3},
        "{not json",
        {"image": "b.jpg", "prompt": "x"},  # no region
        {"id": "a", "image": "c.jpg", "mask": "c.png", "prompt": "dup"},
        {"image": "d.jpg", "select": "box:0,0,4,4", "prompt": "a cat", "concept": "dog"},
        [1, 2],
        {"id": "bad id!", "image": "e.jpg", "mask": "e.png", "prompt": "x"},
    )
    items, failures = parse_manifest(text)
    assert [it.id for it in items] == ["a", "000004-d"]
    assert items[0].seed == 3 and items[1].concept == "dog"
    msgs = {f.id: f.message for f in failures}
    assert "not valid JSON" in msgs["000001-invalid"]
    assert "exactly one of 'mask'" in msgs["000002-b"]
    assert "duplicate id 'a'" in msgs["a"]
    assert "must be a JSON object" in msgs["000005-invalid"]
    assert "id must match" in msgs["bad id!"]


def test_json_manifest_errors_name_the_problem():
    with pytest.raises(LcdError, match="must be a list of objects"):
        parse_manifest('{"a": 1}', "json")
    with pytest.raises(LcdError, match="not valid JSON"):
        parse_manifest("[", "json")
    with pytest.raises(LcdError, match="format must be"):
        parse_manifest("", "csv")


def test_read_manifest_resolves_paths_against_its_folder(tmp_path):
    (tmp_path / "m").mkdir()
    p = tmp_path / "m" / "edits.jsonl"
    p.write_text(_jsonl({"id": "x", "image": "../scenes/x.jpg", "mask": "/abs/x.png", "prompt": "p"}))
    (item,), _ = read_manifest(p)
    assert item.image == str(tmp_path / "m" / "../scenes/x.jpg") and item.mask == "/abs/x.png"
    with pytest.raises(LcdError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")


def test_shards_partition_the_items_deterministically():
    items, _ = parse_manifest(_jsonl(*[{"id": f"i{k}", "image": "a", "mask": "m", "prompt": "p"} for k in range(10)]))
    shards = [shard_items(items, 3, i) for i in range(3)]
    assert [len(s) for s in shards] == [3, 3, 4]
    assert [it.id for s in shards for it in s] == [it.id for it in items]
    assert shard_items(items, 3, 1) == shards[1]
    with pytest.raises(LcdError, match="num_shards must be >= 1"):
        shard_items(items, 0, 0)
    with pytest.raises(LcdError, match=r"shard index must be in \[0, 3\)"):
        shard_items(items, 3, 3)


def test_region_rules_have_one_parser():
    m = box_mask(parse_rule("box:1,2,4,3", "it"), (5, 6), "it")
    assert m.dtype == np.bool_ and m.shape == (5, 6) and m.sum() == 3 and m[2, 1:4].all()
    rule = parse_rule(" sam:text:a red sofa ", "it")
    assert (rule.kind, rule.selection, rule.needs_clip) == ("sam", "text:a red sofa", True)
    assert parse_rule("sam:largest", "it").needs_clip is False
    for bad in ("lasso:1", "box:1,2,3", "sam:", "box:1,2,3,-4"):
        with pytest.raises(InputImageError, match="it: selection rule .* is not supported"):
            parse_rule(bad, "it")
    with pytest.raises(InputImageError, match="empty or outside the 6x5 image"):
        box_mask(parse_rule("box:0,0,7,2", "it"), (5, 6), "it")


def test_item_id_with_a_trailing_newline_is_refused():
    items, failures = parse_manifest('{"id": "a\\n", "image": "x.png", "select": "box:0,0,1,1", "prompt": "p"}\n')
    assert items == [] and "id must match" in failures[0].message


def test_a_bad_utf8_byte_is_one_failed_line_and_utf16_names_the_file(tmp_path):
    good = '{"id": "%s", "image": "s.png", "select": "box:0,0,2,2", "prompt": "x"}'
    p = tmp_path / "m.jsonl"
    p.write_bytes(b"\n".join([(good % "a").encode(), (good % "b").encode().replace(b"s.png", b"s\xff.png"),
                              (good % "c").encode()]))
    items, failures = read_manifest(p)
    assert [it.id for it in items] == ["a", "c"]
    assert len(failures) == 1 and failures[0].message.startswith("line 2: not valid JSON")
    u16 = tmp_path / "u16.jsonl"
    u16.write_text("\n".join(good % k for k in "ab"), encoding="utf-16")
    with pytest.raises(LcdError, match="u16.jsonl: manifest is UTF-16"):
        read_manifest(u16)


def test_a_nul_byte_in_a_path_is_a_manifest_failure():
    """os.stat raises ValueError (not OSError) on a NUL byte: it escaped the shard and sank it."""
    items, failures = parse_manifest(_jsonl(
        {"id": "ok", "image": "a.png", "select": "box:0,0,1,1", "prompt": "p"},
        {"id": "img", "image": "a\u0000.png", "select": "box:0,0,1,1", "prompt": "p"},
        {"id": "msk", "image": "a.png", "mask": "m\u0000.png", "prompt": "p"},
        {"id": "cpt", "image": "a.png", "select": "box:0,0,1,1", "prompt": "p", "concept": "/x\u0000"}))
    assert [it.id for it in items] == ["ok"]
    msgs = {f.id: f.message for f in failures}
    assert "image path contains a NUL byte" in msgs["img"] and "mask path contains a NUL byte" in msgs["msk"]
    assert "concept path contains a NUL byte" in msgs["cpt"]


def test_resolved_paths_depend_on_their_own_base_and_default_ids_on_the_entry():
    """resolve_paths memoises (path, base): the same relative name under two manifests' folders
    gives two files; absolute paths and URLs are kept; an entry without id gets its default."""
    from pathlib import Path

    from lcd.jobs.manifest import ManifestItem, resolve_paths, validate_entries

    it = ManifestItem(id="a", image="s.png", mask="./m/../m.png", prompt="x")
    one, two = resolve_paths(it, "/data/one"), resolve_paths(it, Path("/data/two"))
    assert (one.image, one.mask) == ("/data/one/s.png", "/data/one/m/../m.png")
    assert (two.image, two.mask) == ("/data/two/s.png", "/data/two/m/../m.png")
    assert resolve_paths(it, "s3://b/run").image == "s3://b/run/s.png"
    kept = ManifestItem(id="b", image="/abs/s.png", select="box:0,0,1,1", prompt="x")
    assert resolve_paths(kept, "/data/one").image == "/abs/s.png" and resolve_paths(kept, "/d").mask is None
    assert resolve_paths(ManifestItem(id="c", image="s3://b/s.png", mask="m.png", prompt="x"), "/d").image == "s3://b/s.png"
    out = list(validate_entries([(0, {"image": "dir/cat.png", "mask": "m.png", "prompt": "x"}, None),
                                 (1, {"id": "given", "image": "dir/cat.png", "mask": "m.png", "prompt": "x"}, None),
                                 (2, {"id": None, "image": "dir/cat.png", "mask": "m.png", "prompt": "x"}, None)]))
    assert out[0].id == "000000-cat" and out[1].id == "given"
    assert out[2].__class__.__name__ == "ManifestFailure" and "id" in out[2].message


def test_text_that_is_not_utf8_is_a_manifest_failure_and_the_plan_is_written(tmp_path):
    """A lone surrogate ("s\\udcff.png" in JSON) in a path or the prompt is that entry's failure:
    before, it passed validation and pyarrow raised out of write_plan, sinking the whole job."""
    from lcd.jobs.plan import write_plan

    lines = [{"id": "a", "image": "s0.png", "select": "box:0,0,8,8", "prompt": "x"},
             {"id": "b", "image": "s\udcff.png", "select": "box:0,0,8,8", "prompt": "x"},
             {"id": "c", "image": "s0.png", "mask": "m\udcff.png", "prompt": "x"},
             {"id": "d", "image": "s0.png", "select": "box:0,0,8,8", "prompt": "x", "concept": "k\udc80"}]
    items, failures = parse_manifest("\n".join(json.dumps(x) for x in lines))
    assert [it.id for it in items] == ["a"]
    msgs = {f.id: f.message for f in failures}
    assert set(msgs) == {"b", "c", "d"}
    assert "image is not UTF-8 text (a lone surrogate '\\udcff' at position 1)" in msgs["b"]
    assert "mask is not UTF-8 text" in msgs["c"] and "concept is not UTF-8 text" in msgs["d"]
    assert all(m.encode("utf-8") for m in msgs.values())  # the failures table can hold them
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines))
    write_plan(manifest, tmp_path / "out", 1)  # raised UnicodeEncodeError before
    assert list((tmp_path / "out").rglob("*.parquet"))


from tests.s3server import s3, s3_endpoint  # noqa: E402,F401


def test_a_jsonl_manifest_on_s3_streams_line_by_line(s3):
    """s3fs file objects take no size in readline(); the JSON Lines reader cuts lines itself, so
    a manifest in a bucket gives the entries of the same file on disk (a long line still one
    failure)."""
    from lcd.jobs.manifest import MAX_LINE_BYTES, file_entries

    lines = [json.dumps({"id": f"i{k}", "image": f"s3://lcd-test/{k}.jpg", "mask": "m.png", "prompt": "p"})
             for k in range(5)]
    body = ("\n".join(lines[:2] + ["x" * (MAX_LINE_BYTES + 10)] + lines[2:]) + "\n").encode()
    s3.pipe("lcd-test/edits.jsonl", body)
    got = list(file_entries("s3://lcd-test/edits.jsonl"))
    assert [row["id"] for _, row, err in got if row] == [f"i{k}" for k in range(5)]
    assert [err for _, row, err in got if err] == [f"line 3: longer than {MAX_LINE_BYTES:,} bytes"]
