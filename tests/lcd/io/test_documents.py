"""lcd.io.documents: the one YAML/JSON loader for user files, its limits at their boundaries."""

from pathlib import Path

import pytest
import yaml

from lcd.errors import LcdError
from lcd.io.documents import (json_value, load_json_file, load_yaml_file, one_line, parse_json, parse_yaml,
                              read_document_bytes)

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("name", ["params.yaml", "params.sd15.yaml", "dvc.yaml", "prefect.yaml"])
def test_the_repositorys_own_yaml_reads_as_safe_load_reads_it(name):
    text = (ROOT / name).read_text()
    assert parse_yaml(text, name) == yaml.safe_load(text)


def test_depth_limit_is_exact_for_yaml_and_json():
    for n, ok in ((64, True), (65, False)):
        for text, parse in (("[" * n + "]" * n, parse_yaml), ("[" * n + "]" * n, parse_json),
                            ("{a: " * n + "1" + "}" * n, parse_yaml), ('{"a": ' * n + "1" + "}" * n, parse_json)):
            if ok:
                parse(text, "f")
            else:
                with pytest.raises(LcdError, match="f.*: .*nested deeper than 64 levels"):
                    parse(text, "f")


def test_aliases_are_counted_where_they_are_used():
    assert parse_yaml("a: &a [1, 2]\nb: [*a, *a]\n", "f") == {"a": [1, 2], "b": [[1, 2], [1, 2]]}
    deep = "a: &a " + "[" * 40 + "]" * 40 + "\nb: " + "[" * 30 + "*a" + "]" * 30 + "\n"  # 40 + 30 levels once expanded
    with pytest.raises(LcdError, match=r"f line 2: nested deeper than 64 levels once aliases are expanded"):
        parse_yaml(deep, "f")
    with pytest.raises(LcdError, match="expands to more than 100 values"):
        parse_yaml("a: &a [" + ", ".join(["x"] * 20) + "]\nb: [*a, *a, *a, *a, *a, *a]\n", "f", max_nodes=100)
    with pytest.raises(LcdError, match="recursive structure"):
        parse_yaml("- &a [*a]\n", "f")


def test_merge_keys_may_be_overridden_but_keys_may_not_repeat():
    assert parse_yaml("b: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\n", "f")["c"] == {"x": 3, "y": 2}
    with pytest.raises(LcdError, match=r"^f line 3: duplicate key 'x' \(first at line 2\)$"):
        parse_yaml("c:\n  x: 1\n  x: 1\n", "f")
    with pytest.raises(LcdError, match=r"^f line 2: duplicate key 1 \(first at line 1\)$"):
        parse_yaml("1: a\n1: b\n", "f")
    assert json_value('{"a": {"a": 1}}') == ({"a": {"a": 1}}, None)  # the same key in two objects is fine
    assert json_value('{"a": 1, "a": 1}')[1] == "not valid JSON: duplicate key 'a' in one object"


def test_file_readers_name_the_file_and_refuse_what_is_not_a_document(tmp_path):
    with pytest.raises(LcdError, match=r"nope.yaml: params file not found$"):
        load_yaml_file(tmp_path / "nope.yaml", "params file")
    with pytest.raises(LcdError, match=r": params file is not a regular file$"):
        load_yaml_file(tmp_path, "params file")
    (tmp_path / "big.json").write_bytes(b" " * 101 + b"[]")
    with pytest.raises(LcdError, match=r"big.json: JSON file is 103 bytes, over the limit of 100$"):
        load_json_file(tmp_path / "big.json", list, "list", max_bytes=100)
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf[1]")  # a UTF-8 byte-order mark is fine
    assert load_json_file(tmp_path / "bom.json", list, "list") == [1]
    with pytest.raises(LcdError, match=r"bom.json: must be a JSON object, got a list$"):
        load_json_file(tmp_path / "bom.json", dict, "object")
    (tmp_path / "u32.json").write_bytes("[1]".encode("utf-32"))
    with pytest.raises(LcdError, match=r"u32.json: not valid JSON: is UTF-32 text \(byte-order mark\)"):
        load_json_file(tmp_path / "u32.json", list, "list")
    assert read_document_bytes(tmp_path / "bom.json", "file") == b"\xef\xbb\xbf[1]"


def test_one_line_escapes_raw_bytes_and_joins_lines():
    assert one_line("a\n\n  b\x00c\n") == "a / b\\x00c"
    assert len(one_line("x" * 1000, 50)) == 50


def test_scalars_that_cannot_be_held_are_one_line():
    with pytest.raises(LcdError, match=r"^f: not valid YAML \(line 2, column 4\): cannot read a value: month must be in 1..12$"):
        parse_yaml("x: 1\na: 2020-13-45\n", "f")
    with pytest.raises(LcdError, match=r"^f line 1: an integer of 502 characters \(at most 400\)$"):
        parse_yaml("a: 0x" + "f" * 500, "f")
    assert parse_yaml("a: -0x1f\n", "f") == {"a": -31}
    assert json_value("[" + "9" * 5000 + "]")[1].startswith("not valid JSON: Exceeds the limit (4300 digits)")
