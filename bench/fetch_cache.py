"""What a worker pays for weights and concepts that live only in a bucket (lcd.io.cache): the
first use fetches every object, a second use on the same machine (the next shard, the next
concept group) costs a listing and no GET; a copy written over on disk is re-hashed once.

A real S3 API server (moto's ThreadedMotoServer on 127.0.0.1, as tests/tasks/test_edit_s3.py)
holds the tiny SD as a diffusers folder plus one `--mb` MB weights object beside it (the size
of what moves; the tiny folder alone is a few MB). Requests are counted from the S3 client's own
events. Loopback times: a real endpoint adds ~30-100 ms per request and its own bandwidth.
Last line: one JSON object.

    python bench/fetch_cache.py [--mb 256]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=256)
    a = ap.parse_args()
    from moto.server import ThreadedMotoServer

    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    srv.start()
    host, port = srv.get_host_and_port()
    tmp = Path(tempfile.mkdtemp(prefix="lcd-bench-fetch-"))
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": f"http://{host}:{port}", "LCD_CACHE": str(tmp / "cache")})
    import fsspec

    from lcd.io import cache, storage
    from lcd.models.tiny import write_tiny_models

    write_tiny_models(tmp / "tiny")
    (tmp / "tiny" / "sd" / "unet" / "extra.safetensors").write_bytes(os.urandom(a.mb << 20))
    fs = fsspec.filesystem("s3")
    fs.makedirs("bench", exist_ok=True)
    fs.put(str(tmp / "tiny" / "sd"), "bench/models/sd", recursive=True)
    url = "s3://bench/models/sd"
    s3, _ = storage.filesystem(url)
    s3.connect()
    ops: list[str] = []
    for op in ("GetObject", "HeadObject", "ListObjectsV2"):
        s3.s3.meta.events.register(f"provide-client-params.s3.{op}", lambda params, op=op, **kw: ops.append(op))

    def timed(fn):
        ops.clear()
        t0 = time.perf_counter()
        out = fn()
        return out, round(time.perf_counter() - t0, 3), {k: ops.count(k) for k in sorted(set(ops))}

    root, first_s, first_ops = timed(lambda: cache.fetch_folder(url))
    _, second_s, second_ops = timed(lambda: cache.fetch_folder(url))
    big = root / "unet" / "extra.safetensors"
    os.utime(big)  # a new mtime: the stamp differs, so the copy is re-hashed (and found whole)
    obj = cache.fetch_file(f"{url}/unet/extra.safetensors")
    os.utime(obj)
    _, rehash_s, rehash_ops = timed(lambda: cache.fetch_file(f"{url}/unet/extra.safetensors"))
    n = len(fs.find("bench/models/sd"))
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    srv.stop()
    print(json.dumps({"objects": n, "bytes": total, "first_use": {"s": first_s, "requests": first_ops,
                      "MB_per_s": round(total / 1e6 / first_s, 1)},
                      "second_use": {"s": second_s, "requests": second_ops},
                      "rehash_after_touch": {"s": rehash_s, "requests": rehash_ops, "MB": a.mb},
                      "storage": "moto ThreadedMotoServer on 127.0.0.1"}))


if __name__ == "__main__":
    main()
