"""Hostile and broken files on every entry point: one stderr line naming the file and the reason,
exit 2, never a traceback (issue 27 item 6).

Most cases call the entry points' main() in this process (a subprocess start costs 1-3 s); a few
run `lcd`, `python -m lcd` and `python -m flows` for real, to show the same line reaches a shell.
"""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lcd.cli import main as lcd_main

ROOT = Path(__file__).resolve().parents[2]


def _laughs() -> str:
    """Billion laughs: 9 levels of 9 aliases, 1 KB of YAML expanding to 9^9 strings."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    prev = "a"
    for n in "bcdefghi":
        lines.append(f"{n}: &{n} [" + ", ".join([f"*{prev}"] * 9) + "]")
        prev = n
    return "\n".join(lines) + "\n"


PARAMS = {  # name -> (file content, what the one line must say after the file name)
    "deep": ("[" * 100_000, " line 1: nested deeper than 64 levels"),
    "deep mapping": ("a:\n" + "".join(" " * (i + 1) + "- \n" for i in range(2_000)), " line 65: nested deeper than 64 levels"),
    "laughs": (_laughs(), " line 7: expands to more than 1,000,000 values"),
    "recursive alias": ("edit: &e {steps: *e}\n", " line 1: an alias refers to the node that holds it"),
    "duplicate top-level": ("edit:\n  size: 64\nmodels: {}\nedit:\n  steps: 2\n",
                            " line 4: duplicate key 'edit' (first at line 1)"),
    "duplicate nested": ("edit:\n  size: 64\n  steps: 2\n  size: 72\n", " line 4: duplicate key 'size' (first at line 2)"),
    "binary": (bytes(range(256)) * 8, ": not valid YAML: not UTF-8 text: a binary file (NUL byte at offset 0)"),
    "utf-16": ("edit:\n  size: 64\n".encode("utf-16"), ": not valid YAML: is UTF-16 text (byte-order mark); save it as UTF-8"),
    "latin-1": ("edit:\n  scheduler: caf\xe9\n".encode("latin-1"), ": not valid YAML: not UTF-8 text (bytes b'\\xe9\\n'"),
    "control character": ("edit: \x07\n", ": not valid YAML (character 6): special characters are not allowed"),
    "python tag": ("edit: !!python/object/apply:os.system ['echo pwned']\n",
                   ": not valid YAML (line 1, column 7): could not determine a constructor"),
    "two documents": ("edit: {}\n---\nedit: {}\n", ": not valid YAML (line 2, column 1): expected a single document"),
    "unclosed": ("edit: {size: 64\n", ": not valid YAML (line 2, column 1):"),
    "a list": ("- 1\n- 2\n", ": params must be a mapping of sections, got a list"),
    "month 13": ("edit:\n  steps: 2020-13-45\n", ": not valid YAML (line 2, column 10): cannot read a value: month must be in 1..12"),
    "huge integer": ("edit:\n  steps: 0b" + "1" * 20_000 + "\n", " line 2: an integer of 20,002 characters (at most 400)"),
    "unknown section": ("edits: {}\n", ": edits: Extra inputs are not permitted"),
    "wrong type": ("edit:\n  steps: [1, 2]\n", ": edit.steps: Input should be a valid integer"),
}


def _one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _write(path: Path, content) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.fixture
def ok_params(tmp_path):
    """Valid params whose SD model is tiny models not yet written under tmp_path/tiny: a command
    that got past its input checks would write them (lcd demo) or try to load them."""
    return _write(tmp_path / "ok.yaml", f"models:\n  sd: {tmp_path / 'tiny' / 'sd'}\nedit:\n  size: 64\n")


def _run_lcd(capsys, argv) -> str:
    rc = lcd_main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    return _one_line(err)


@pytest.mark.parametrize("case", list(PARAMS))
def test_hostile_params_file_is_one_line(tmp_path, capsys, case):
    content, says = PARAMS[case]
    p = _write(tmp_path / "params.yaml", content)
    line = _run_lcd(capsys, ["--params", p, "demo", "--edits", tmp_path / "never-read.json"])
    assert line.startswith("lcd demo: error: ") and f"{p}{says}" in line, line


def test_params_over_the_size_limit(tmp_path, capsys):
    p = tmp_path / "big.yaml"
    p.write_bytes(b"# padding\n" * ((17 << 20) // 10 + 1) + b"edit: {}\n")
    line = _run_lcd(capsys, ["--params", p, "demo", "--edits", tmp_path / "never-read.json"])
    assert f"{p}: params file is " in line and "over the limit of 16,777,216" in line


def test_duplicate_section_is_no_longer_silently_replaced(tmp_path):
    """The defect: a second `edit:` replaced the first section with defaults and the run went on."""
    from lcd.config import load_params
    from lcd.errors import LcdError

    p = _write(tmp_path / "params.yaml", "edit:\n  size: 64\n  steps: 3\nedit:\n  guidance: 2.0\n")
    with pytest.raises(LcdError, match=r"params.yaml line 4: duplicate key 'edit' \(first at line 1\)$"):
        load_params(p)
    merged = _write(tmp_path / "merge.yaml", "x: &b {size: 64, steps: 3}\nedit:\n  <<: *b\n  size: 72\n")
    with pytest.raises(LcdError, match="x: Extra inputs"):  # a merge key may be overridden (no duplicate)
        load_params(merged)


EDITS = {  # name -> (--edits content, what the line must say after the file name)
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200), ": not valid JSON: not UTF-8 text: a binary file"),
    "utf-16": ('[{"image": "a.png"}]'.encode("utf-16"), ": not valid JSON: is UTF-16 text"),
    "image a number": ('[{"image": 5, "mask": "m.png", "prompt": "a dog"}]',
                       ": entry 0: image: Input should be a valid string (got 5)"),
    "second entry's prompt": ('[{"image": "a.png", "mask": "m.png", "prompt": "x"}, '
                              '{"image": "a.png", "mask": "m.png", "prompt": ["x"]}]',
                              ": entry 1: prompt: Input should be a valid string (got ['x'])"),
    "seed a string": ('[{"image": "a.png", "mask": "m.png", "prompt": "x", "seed": "7"}]',
                      ": entry 0: seed: Input should be a valid integer (got '7')"),
    "seed a bool": ('[{"image": "a.png", "mask": "m.png", "prompt": "x", "seed": true}]',
                    ": entry 0: seed: Input should be a valid integer (got True)"),
    "missing mask": ('[{"image": "a.png", "prompt": "x"}]', ": entry 0: mask: Field required"),
    "extra field": ('[{"image": "a.png", "mask": "m.png", "prompt": "x", "colour": 1}]',
                    ": entry 0: colour: Extra inputs are not permitted"),
    "entry not an object": ('["a.png"]', ": entry 0: must be an object with image, mask, prompt, got a string"),
    "an object": ('{"a": 1}', ": must be a JSON list of {image, mask, prompt, seed} objects, got an object"),
    "empty list": ("[]", ": the list of edits is empty"),
    "deep": ("[" * 100_000, ": not valid JSON: nested deeper than 64 levels"),
    "deep but valid JSON": ("[" * 70 + "]" * 70, ": not valid JSON: nested deeper than 64 levels"),
    "duplicate key": ('[{"image": "a.png", "image": "b.png", "mask": "m.png", "prompt": "x"}]',
                      ": not valid JSON: duplicate key 'image' in one object"),
    "truncated": ('[{"image": "a.png",', ": not valid JSON (line 1, column 20: Expecting property name"),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_hostile_demo_edits_is_one_line(tmp_path, capsys, ok_params, case):
    content, says = EDITS[case]
    f = _write(tmp_path / "edits.json", content)
    line = _run_lcd(capsys, ["--params", ok_params, "demo", "--edits", f, "--tiny-dir", tmp_path / "tiny"])
    assert f"{f}{says}" in line, line
    assert not (tmp_path / "tiny").exists()  # refused before any model was written or loaded


def _csv_cases(d: Path) -> dict:
    pq.write_table(pa.table({"image": [1, 2]}), d / "ints.parquet")
    pq.write_table(pa.table({"image": ["a.png"], "prompts": [[1, 2]]}), d / "list-prompts.parquet")
    return {  # file -> what the line says after the file name
        _write(d / "binary.csv", bytes(range(256)) * 16): ": CSV manifest is not UTF-8 text: a binary file (NUL byte at offset 0)",
        _write(d / "nul.csv", b"image\na.png\x00\xff\xfe\n"): ": CSV manifest is not UTF-8 text: a binary file (NUL byte at offset 11)",
        _write(d / "utf16.csv", "image\na.png\n".encode("utf-16")): ": CSV manifest is UTF-16 text (byte-order mark)",
        _write(d / "latin1.csv", "image\ncaf\xe9.png\n".encode("latin-1")): ": CSV manifest is not UTF-8 text (bytes b'\\xe9.pn'",
        _write(d / "columns.csv", b"image\na.png,b,c\n"): ": cannot read manifest as CSV: CSV parse error: Expected 1 columns, got 3 (row starting 'a.png,b,c')",
        _write(d / "empty-cell.csv", b"image,image_id\na.png,a\n,b\n"): ": row 2: image is empty",
        _write(d / "no-image.csv", b"path\na.png\n"): ": manifest needs an 'image' column",
        d / "ints.parquet": ": column 'image' must hold text, got int64",
        d / "list-prompts.parquet": ": column 'prompts' must hold text, got list<element: int64>",
        _write(d / "torn.parquet", b"PAR1" + bytes(64)): ": cannot read manifest as Parquet: ",
    }


def test_hostile_masks_manifest_is_one_line_without_raw_bytes(tmp_path, capsys, ok_params):
    for f, says in _csv_cases(tmp_path).items():
        line = _run_lcd(capsys, ["--params", ok_params, "masks", "compute", f, "--out", tmp_path / "mo"])
        assert f"{f}{says}" in line, line
        assert line.isprintable() and "\ufffd" not in line, repr(line)  # no raw or replaced bytes echoed


def test_masks_prompts_cell_is_checked_per_image():
    from lcd.masks.manifest import parse_prompts_json
    from lcd.masks.predict import PromptError

    for raw, says in [("[" * 100_000, "x: prompts is not valid JSON: nested deeper than 64 levels"),
                      ('[{"box": [0, 0, 1, 1], "box": [0, 0, 2, 2]}]', "duplicate key 'box'"),
                      ("[5]", r"x: prompts\[0\] must be a JSON object, got a number"),
                      (7, "x: prompts must be JSON text")]:
        with pytest.raises(PromptError, match=says):
            parse_prompts_json(raw, "x")
    assert parse_prompts_json('[{"box": [0, 0, 2, 2]}]', "x") == [{"box": [0, 0, 2, 2]}]


MANIFESTS = {  # file name -> (content, what the line says after the file name)
    "deep.json": ("[" * 100_000, ": manifest is not valid JSON: nested deeper than 64 levels"),
    "object.json": ('{"image": "a.png"}', ": a .json manifest must be a list of objects, got an object"),
    "dup.json": ('[{"id": "a", "id": "b"}]', ": manifest is not valid JSON: duplicate key 'id' in one object"),
    "binary.json": (bytes(range(256)), ": manifest is not valid JSON: not UTF-8 text: a binary file"),
    "binary.jsonl": (b"PAR1\x15\x04\x00\x00" + bytes(100) + b"\n{}\n", ": manifest is a binary file (NUL byte in its first line)"),
    "utf16.jsonl": ('{"image": "a.png"}\n'.encode("utf-16"), ": manifest is UTF-16 (byte-order mark)"),
    "torn.parquet": (b"PAR1" + bytes(32), ": cannot read the Parquet manifest: "),
}


def test_python_m_flows_refuses_hostile_files_before_prefect_starts(tmp_path, capsys, ok_params):
    """In process: each case must fail in the pre-flight check, or a flow would start here."""
    from flows.__main__ import main as flows_main

    for case, (content, says) in PARAMS.items():
        p = _write(tmp_path / f"p-{len(case)}.yaml", content)
        assert flows_main(["edit", "--params", str(p), "--engine", "noop", "--out", str(tmp_path / "o")]) == 2
        line = _one_line(capsys.readouterr().err)
        assert line.startswith("python -m flows edit: error: ") and f"{p}{says}" in line, line
    for name, (content, says) in MANIFESTS.items():
        m = _write(tmp_path / name, content)
        assert flows_main(["edit", "--params", str(ok_params), "--manifest", str(m), "--engine", "noop",
                           "--out", str(tmp_path / "o")]) == 2
        line = _one_line(capsys.readouterr().err)
        assert f"{m}{says}" in line, line
    assert not (tmp_path / "o").exists()


def test_bad_jsonl_lines_are_failure_rows_beside_good_ones(tmp_path, monkeypatch):
    """Per-entry problems in JSON Lines stay that entry's failure: the good items still come back."""
    from lcd.jobs import manifest

    monkeypatch.setattr(manifest, "MAX_LINE_BYTES", 200_000)
    good = '{"id": "g%d", "image": "s.png", "select": "box:0,0,4,4", "prompt": "a dog"}'
    lines = [good % 0, "[" * 100_000, '{"id": "d", "id": "e", "image": "s.png", "select": "box:0,0,4,4", "prompt": "x"}',
             good % 1, '{"image": 5, "select": "box:0,0,4,4", "prompt": "x"}', '{"x": "' + "y" * 300_000 + '"}',
             '{"image": "caf\udce9"}', good % 2, '{"image": "s.png", "select": "box:0,0,4,4", "prompt": "x", "seed": 1.5}']
    data = "\n".join(lines).encode("utf-8", errors="surrogateescape") + b"\n"
    (tmp_path / "m.jsonl").write_bytes(data)
    items, failures = manifest.read_manifest(tmp_path / "m.jsonl")
    assert [i.id for i in items] == ["g0", "g1", "g2"]
    msgs = [f.message for f in failures]
    assert msgs == ["line 2: not valid JSON: nested deeper than 64 levels",
                    "line 3: not valid JSON: duplicate key 'id' in one object",
                    "entry 4: image: Input should be a valid string (got 5)",
                    "line 6: longer than 200,000 bytes",
                    "line 7: not valid JSON: not UTF-8 text (bytes b'\\xe9\"}\\n' at offset 14)",
                    "entry 8: seed: Input should be a valid integer, got a number with a fractional part (got 1.5)"], msgs


def _evil_token_folder(d: Path, marker: Path) -> Path:
    """A diffusers Custom Diffusion export whose token file is a pickle that would run a command."""
    import torch
    from safetensors.torch import save_file

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    f = d / "cd"
    f.mkdir()
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_custom_diffusion.weight"
    save_file({key: torch.zeros(4, 4)}, str(f / "pytorch_custom_diffusion_weights.safetensors"))
    (f / "<new1>.bin").write_bytes(pickle.dumps(Payload(), protocol=4))  # protocol 4: torch warns, then refuses
    return f


def test_refused_pickle_is_one_line_and_runs_nothing(tmp_path, capsys, ok_params):
    marker = tmp_path / "pwned"
    f = _evil_token_folder(tmp_path, marker)
    line = _run_lcd(capsys, ["--params", ok_params, "concept", "import", f, "--out", tmp_path / "imp"])
    assert f"{f / '<new1>.bin'}: cannot read the token embedding file: UnpicklingError: refused by torch's " \
           "weights-only unpickler (" in line, line
    assert not marker.exists() and not (tmp_path / "imp").exists()


def test_lcd_weights_reader_names_the_file(tmp_path):
    from lcd.errors import ModelLoadError
    from lcd.io.torchfile import load_weights

    class Payload:
        def __reduce__(self):
            return os.system, ("true",)

    f = _write(tmp_path / "optimizer.pt", pickle.dumps(Payload(), protocol=2))
    with pytest.raises(ModelLoadError, match=r"optimizer.pt: cannot read the optimizer state: UnpicklingError: "
                                             r"refused by torch's weights-only unpickler \(.*GLOBAL posix.system"):
        load_weights(f, "the optimizer state")


def test_unexpected_parser_errors_become_one_line():
    """What reached a parser unchecked is still the file's fault at the top level: one line."""
    import json

    import yaml

    from lcd.cli import user_error

    try:
        yaml.safe_load("a: [1\n")
    except yaml.YAMLError as e:
        yerr = e
    cases = [(RecursionError("maximum recursion depth exceeded"), "nested too deeply"),
             (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "not UTF-8 text"),
             (json.JSONDecodeError("Expecting value", "x\ny", 2), "not valid JSON (line 2, column 1: Expecting value)"),
             (yerr, "not valid YAML (line 2, column 1)"),
             (MemoryError(), "out of memory"),
             (pickle.UnpicklingError("Weights only load failed. blah\n\nUnsupported operand 149\n\nCheck the documentation"),
              "refused by torch's weights-only unpickler (Unsupported operand 149)")]
    for exc, says in cases:
        msg = user_error(exc)
        assert msg is not None and says in msg and "\n" not in msg, (exc, msg)
    assert user_error(KeyError("a bug")) is None  # a bug keeps its traceback


def _sub(argv, cwd, timeout=120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_real_processes_print_one_line_and_exit_2(tmp_path, ok_params):
    """`lcd`, `python -m lcd` and `python -m flows` from a shell: the same single line, exit 2."""
    deep = _write(tmp_path / "deep.yaml", "[" * 100_000)
    laughs = _write(tmp_path / "laughs.yaml", _laughs())
    dup = _write(tmp_path / "dup.yaml", "edit:\n  size: 64\nedit:\n  steps: 2\n")
    five = _write(tmp_path / "five.json", '[{"image": 5}]')
    binary_csv = _write(tmp_path / "b.csv", bytes(range(256)) * 4)
    deep_json = _write(tmp_path / "deep.json", "[" * 100_000)
    marker = tmp_path / "pwned"
    evil = _evil_token_folder(tmp_path, marker)
    lcd = str(Path(sys.executable).with_name("lcd"))
    lcd = lcd if Path(lcd).exists() else None
    runs = [
        ([lcd] if lcd else [sys.executable, "-m", "lcd"], ["--params", deep, "demo"], f"{deep} line 1: nested deeper than 64"),
        ([sys.executable, "-m", "lcd"], ["--params", dup, "demo"], f"{dup} line 3: duplicate key 'edit' (first at line 1)"),
        ([sys.executable, "-m", "lcd"], ["--params", ok_params, "demo", "--edits", five],
         f"{five}: entry 0: image: Input should be a valid string (got 5)"),
        ([sys.executable, "-m", "lcd"], ["--params", ok_params, "masks", "compute", binary_csv, "--out", tmp_path / "mo"],
         f"{binary_csv}: CSV manifest is not UTF-8 text: a binary file"),
        ([sys.executable, "-m", "lcd"], ["--params", ok_params, "concept", "import", evil, "--out", tmp_path / "imp"],
         "refused by torch's weights-only unpickler"),
        ([sys.executable, "-m", "flows"], ["edit", "--params", laughs, "--engine", "noop"],
         f"{laughs} line 7: expands to more than 1,000,000 values"),
        ([sys.executable, "-m", "flows"], ["edit", "--params", ok_params, "--manifest", deep_json, "--engine", "noop"],
         f"{deep_json}: manifest is not valid JSON: nested deeper than 64 levels"),
    ]
    for prog, argv, says in runs:
        r = _sub(prog + [str(a) for a in argv], tmp_path)
        assert r.returncode == 2, (argv, r.stderr[-2000:])
        line = _one_line(r.stderr)
        assert says in line, (argv, line)
    assert not marker.exists()


def test_training_listings_and_captions_name_the_file(tmp_path):
    """Regularization listings and caption files: binary, UTF-16, a line that is not an object,
    deep nesting, a caption of the wrong type; each one LcdError line naming the file."""
    from lcd.concepts.captions import read_captions
    from lcd.errors import LcdError
    from lcd.train.data import reg_set_pairs

    cases = [("images.txt", bytes(range(256)), "images.txt: not UTF-8 text: a binary file"),
             ("manifest.jsonl", b"5\n", r"manifest.jsonl:1: must be a JSON object, got a number"),
             ("manifest.jsonl", b'{"image": "a.png"}\n' + b"[" * 100_000 + b"\n",
              r"manifest.jsonl:2: not valid JSON: nested deeper than 64 levels"),
             ("manifest.jsonl", b'{"image": "a.png", "caption": ["x"]}\n', "manifest.jsonl:1: 'image' and 'caption' must be strings"),
             ("manifest.parquet", b"PAR1" + bytes(40), r"manifest.parquet: cannot read: ")]
    for i, (name, content, says) in enumerate(cases):
        d = tmp_path / f"reg{i}"
        d.mkdir()
        _write(d / name, content)
        if name == "images.txt":
            _write(d / "caption.txt", "a dog\n")
        with pytest.raises(LcdError, match=says):
            reg_set_pairs(d, "a dog")
    with pytest.raises(LcdError, match=r"caps.txt: is UTF-16 text \(byte-order mark\); save it as UTF-8"):
        read_captions(_write(tmp_path / "caps.txt", "a dog\n".encode("utf-16")))


def test_evaluate_entries_of_the_wrong_type_are_failure_rows():
    """`lcd evaluate edits` entries: a number or a list where a path is expected is that entry's
    failure (was a TypeError out of `in photos` / the image reader, sinking the whole run)."""
    from lcd.evaluate.batch import score_entries
    from lcd.evaluate.config import EvaluateConfig

    ok = {"edit": "e.png", "reference": "r.png", "mask": "m.png", "prompt": "a dog", "concept": "c"}
    rows, failures = score_entries([{**ok, "edit": 5}, {**ok, "concept": ["c"]}, {**ok, "method": {"a": 1}}],
                                   EvaluateConfig(), None, None)
    assert rows == [] and [f["error"] for f in failures] == [
        "5: entry 0: edit must be a string, got a number", "e.png: entry 1: concept must be a string, got a list",
        "e.png: entry 2: method must be a string, got an object"]


def test_usage_errors_are_one_line(capsys):
    """argparse's own errors (a bad int, an unknown choice, a missing option) print the usage block
    first; `lcd` and `python -m flows` print one line and exit 2."""
    from flows.__main__ import main as flows_main

    for run, argv, says in [(lcd_main, ["edit", "--steps", "abc"], "lcd edit: error: argument --steps: invalid int value: 'abc'"),
                            (lcd_main, ["bogus"], "lcd: error: argument command: invalid choice: 'bogus'"),
                            (lcd_main, ["masks"], "lcd masks: error: the following arguments are required: masks_command"),
                            (flows_main, ["bogus"], "python -m flows: error: argument stage: invalid choice: 'bogus'")]:
        with pytest.raises(SystemExit) as e:
            run(argv)
        assert e.value.code == 2
        line = _one_line(capsys.readouterr().err)
        assert line.startswith(says) and line.endswith(" --help)"), line
