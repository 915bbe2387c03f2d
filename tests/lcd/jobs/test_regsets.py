"""The regset stage per concept on the bundled LAION-style shard (samples/laion-meta): its URLs
point at a closed loopback port, so every download fails and the shortfall is generated with the
tiny SD; the manifest.parquet it writes is what lcd.train reads as the regularization set."""

from __future__ import annotations

import pyarrow.parquet as pq

import pytest

from lcd.config import ModelsConfig
from lcd.jobs.regsets import build_concept_regset
from lcd.regset.config import RegsetConfig

from tests.conftest import SAMPLES


@pytest.mark.slow
def test_bundled_shard_with_unreachable_urls_is_filled_by_generation(tiny_dir, tmp_path):
    cfg = RegsetConfig(shards=[str(SAMPLES / "laion-meta")], clip_model=str(tiny_dir / "open_clip"), threshold=-1.0,
                       top_n=2, image_size=64, min_image_size=64, timeout_s=1, threads=2,
                       gen_size=64, gen_steps=2, gen_batch_size=2)
    models = ModelsConfig(sd=str(tiny_dir / "sd"))
    out = build_concept_regset(SAMPLES / "concepts" / "dog", tmp_path / "regset" / "dog", cfg, models)
    table = pq.read_table(out / "manifest.parquet").to_pydict()
    assert len(table["caption"]) == 2
    assert set(table["source"]) == {"generated"} and set(table["caption"]) == {"dog"}  # concept's class word
    assert all((out / p).is_file() for p in table[next(c for c in ("path", "file") if c in table)])
