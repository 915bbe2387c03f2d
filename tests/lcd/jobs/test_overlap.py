"""The overlapped shard loop (read ahead, write behind): same outputs and tables as the plain
loop, and a write that fails mid-batch fails those items only, leaving no partial file."""

import errno
from pathlib import Path

import pytest

from lcd.config import ModelsConfig
from lcd.io.atomic import atomic_path
from lcd.jobs import editing
from lcd.jobs.editing import run_edit_shard
from tests.lcd.jobs.test_editing import CFG, job  # noqa: F401 - the fixture

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(rep, root: Path) -> tuple[list, list]:
    res = [{k: (v.replace(str(root), "<out>") if k == "output" else v) for k, v in r.items()
            if k not in ("seconds", "output_stamp")}  # the stamp is the file's own mtime/ctime
           for r in rep.results]
    return res, rep.failures


def test_overlap_on_and_off_give_identical_outputs_and_tables(job, tiny_dir):  # noqa: F811
    items, root = job
    models = ModelsConfig(sd=str(tiny_dir / "sd"))
    reps = {}
    for overlap in (True, False):
        cfg = CFG.model_copy(update={"batch_size": 1, "overlap": overlap})  # 3 good items: 3 model batches
        reps[overlap] = run_edit_shard(items, out_root=root / f"out-{overlap}", cfg=cfg, models=models,
                                       concepts_root=root / "concepts")
    on, off = _files(root / "out-True"), _files(root / "out-False")
    assert sorted(on) == sorted(off) and len([k for k in on if k.startswith("edits/")]) == 3
    assert on == off  # byte for byte, PNG metadata included
    assert _rows(reps[True], root / "out-True") == _rows(reps[False], root / "out-False")
    assert [f["id"] for f in reps[True].failures] == ["gone", "concept", "size", "tok"]


def test_a_write_failing_mid_batch_fails_those_items_not_the_shard(job, monkeypatch, tmp_path):  # noqa: F811
    """Disk full while `b`'s output is half written: `b` is a write failure, `a` and `c` (same and
    later batches) are edited, and no temp or partial file is left."""
    items, root = job
    real = editing.save_output

    def full_disk(path, image, meta, fmt, *args):
        if Path(path).parent.name == "edits" and Path(path).name == "b.png":
            with atomic_path(path) as tmp:
                Path(tmp).write_bytes(b"\x89PNG\r\n\x1a\n half an image")
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, image, meta, fmt, *args)

    monkeypatch.setattr(editing, "save_output", full_disk)
    cfg = CFG.model_copy(update={"batch_size": 2})
    rep = run_edit_shard([i for i in items if i.id in "abc"], out_root=root / "out", cfg=cfg,
                         models=ModelsConfig(sd="/unused"), engine="noop")
    assert sorted(r["id"] for r in rep.results) == ["a", "c"]
    assert [(f["id"], f["stage"], f["error"]) for f in rep.failures] == [("b", "write", "OSError")]
    assert "No space left on device" in rep.failures[0]["message"]
    names = {p.name for p in (root / "out").rglob("*") if p.is_file()}
    assert "b.png" not in {p.name for p in (root / "out" / "edits").iterdir()}
    assert not any(".tmp" in n or n.startswith("tmp") for n in names), names
