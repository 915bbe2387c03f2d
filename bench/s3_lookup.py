"""What a shard pays on object storage to learn which of its outputs exist, against the whole
listing of `edits/` a shard made before (the stock s3fs call, `fs.ls`), same bucket, same run.

A real S3 API server (moto's ThreadedMotoServer on 127.0.0.1, as in tests/tasks/test_edit_s3.py)
holds `--objects` outputs named as bench/orchestration.py names them (`item000000.png`, ...); a
shard of `--shard` consecutive ids in the middle of the job asks which exist, both ways. LIST
requests are counted from the S3 client's own events (a real S3 bills and paces by them); times
are loopback times, far below a real endpoint's ~30-100 ms per LIST page. Last line: one JSON object.

    python bench/s3_lookup.py [--objects 20000] [--shard 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import time


def list_request_log(url: str) -> list[str]:
    """A list that gets the Prefix of every ListObjectsV2 request the S3 client behind `url`
    (lcd.io.storage's cached s3fs instance) sends from now on: what a listing costs, counted
    from the client's own events rather than from timings."""
    from lcd.io import storage

    fs, _ = storage.filesystem(url)
    fs.connect()
    prefixes: list[str] = []
    fs.s3.meta.events.register("provide-client-params.s3.ListObjectsV2",
                               lambda params, **kw: prefixes.append(params.get("Prefix")))
    return prefixes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=20_000)
    ap.add_argument("--shard", type=int, default=5_000)
    a = ap.parse_args()
    from moto.server import ThreadedMotoServer

    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    srv.start()
    host, port = srv.get_host_and_port()
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"})
    import fsspec

    from lcd.io import storage

    fs = fsspec.filesystem("s3")
    fs.makedirs("bench", exist_ok=True)
    t = time.perf_counter()
    for k in range(0, a.objects, 2000):
        fs.pipe({f"bench/job/edits/item{i:06d}.png": b"x" for i in range(k, min(a.objects, k + 2000))})
    upload_s = time.perf_counter() - t
    first = (a.objects // 2 // a.shard) * a.shard  # a shard in the middle, aligned as plans cut them
    names = [f"item{i:06d}.png" for i in range(first, first + a.shard)]
    folder = "s3://bench/job/edits"
    lists = list_request_log(folder)

    def timed(fn):
        lists.clear()
        t0 = time.perf_counter()
        found = fn()
        return found, time.perf_counter() - t0, len(lists)

    whole, whole_s, whole_lists = timed(lambda: storage.list_names(folder) & set(names))
    ours, ours_s, ours_lists = timed(lambda: storage.present_names(folder, names))
    assert ours == whole == set(names), (len(ours), len(whole))
    srv.stop()
    rec = {"objects": a.objects, "shard_items": a.shard, "upload_s": round(upload_s, 1),
           "whole_listing": {"list_requests": whole_lists, "s": round(whole_s, 3)},
           "prefix_listing": {"list_requests": ours_lists, "s": round(ours_s, 3),
                              "prefixes": sorted(set(lists))},
           "list_request_ratio": round(ours_lists / whole_lists, 4), "time_ratio": round(ours_s / whole_s, 3),
           "storage": "moto ThreadedMotoServer on 127.0.0.1"}
    print(json.dumps(rec))


if __name__ == "__main__":
    main()
