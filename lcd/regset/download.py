"""Download selected URLs with img2dataset into a per-URL store, decode-checking every image.

The store (`<root>/images/<sha256(url)>.jpg` + `<root>/status.parquet`) remembers every URL it
was given, success or failure with the reason, so a second run with the same selection hands
nothing to img2dataset (`FetchReport.attempted == 0`); `retry_failed` re-tries failures.
img2dataset does the network part (threads, timeout, retries, resize to `image_size` with a
center crop, per-URL `status` / `error_message` in each shard's Parquet); we re-open every image
it wrote and keep it only if it decodes, is RGB and has the expected size.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lcd.io.atomic import atomic_path
from lcd.progress import Progress

STATUS_SCHEMA = pa.schema([
    ("url", pa.string()),
    ("caption", pa.string()),
    ("status", pa.string()),  # "success" | "failed"
    ("error", pa.string()),  # img2dataset's error_message, or our decode-check reason
    ("file", pa.string()),  # image file name inside <root>/images, null on failure
    ("sha256", pa.string()),  # of the stored image bytes
])


def url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def check_image(data: bytes, *, size: int, min_size: int) -> str | None:
    """Decode check of one downloaded image: None if fine, else the reason (a short string).
    Accepts only what training will read: a fully decodable RGB image of size x size pixels."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # full decode: truncated files fail here, not at training time
            mode, (w, h) = im.mode, im.size
    except Exception as e:
        return f"decode check: cannot decode ({type(e).__name__}: {e})"
    if mode != "RGB":
        return f"decode check: mode {mode}, expected RGB"
    if min(w, h) < min_size:
        return f"decode check: {w}x{h} smaller than min_image_size {min_size}"
    if (w, h) != (size, size):
        return f"decode check: {w}x{h}, expected {size}x{size}"
    return None


@dataclass(frozen=True)
class FetchReport:
    """Per-URL rows in input order (STATUS_SCHEMA dicts) and how many URLs were attempted now."""

    rows: list[dict]
    attempted: int
    cached: int


class DownloadStore:
    """A folder of downloaded images keyed by URL plus the status of every URL ever tried."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.images = self.root / "images"
        self.status_path = self.root / "status.parquet"

    def status(self) -> dict[str, dict]:
        if not self.status_path.exists():
            return {}
        return {r["url"]: r for r in pq.read_table(self.status_path).to_pylist()}

    def _save_status(self, rows: dict[str, dict]) -> None:
        table = pa.Table.from_pylist(list(rows.values()), schema=STATUS_SCHEMA)
        with atomic_path(self.status_path) as tmp:
            pq.write_table(table, tmp)

    def image_path(self, row: dict) -> Path | None:
        return self.images / row["file"] if row.get("file") else None

    def fetch(
        self,
        urls: list[str],
        captions: list[str],
        *,
        image_size: int = 512,
        timeout_s: int = 10,
        retries: int = 0,
        processes: int = 1,
        threads: int = 16,
        min_image_size: int = 64,
        retry_failed: bool = False,
    ) -> FetchReport:
        """Make sure every URL has a status row; download the ones that do not (and failures
        if `retry_failed`). One bad URL never sinks the batch: it gets a failed row."""
        known = self.status()
        todo = [
            (u, c) for u, c in dict(zip(urls, captions)).items()
            if u not in known or (retry_failed and known[u]["status"] != "success")
        ]
        if todo:
            known.update(self._download(todo, image_size, timeout_s, retries, processes, threads, min_image_size))
            self._save_status(known)
        rows = [known[u] for u in urls]
        return FetchReport(rows=rows, attempted=len(todo), cached=len(urls) - len(todo))

    def _download(self, todo, image_size, timeout_s, retries, processes, threads, min_image_size) -> dict[str, dict]:
        # albumentations (imported by img2dataset) phones home for updates unless told not to
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        from img2dataset import download

        self.images.mkdir(parents=True, exist_ok=True)
        out: dict[str, dict] = {}
        with tempfile.TemporaryDirectory(prefix=".run-", dir=self.root) as tmp:
            tmp = Path(tmp)
            inp = tmp / "input.parquet"
            pq.write_table(pa.table({"url": [u for u, _ in todo], "caption": [c for _, c in todo]}), inp)
            # img2dataset prints progress bars and stats to stdout: keep our stdout clean
            progress = Progress("regset download (img2dataset)", len(todo), unit="urls")
            with redirect_stdout(io.StringIO()):
                download(
                    url_list=str(inp), input_format="parquet", url_col="url", caption_col="caption",
                    output_folder=str(tmp / "out"), output_format="files", image_size=image_size,
                    resize_mode="center_crop", processes_count=processes, thread_count=threads,
                    timeout=timeout_s, retries=retries, number_sample_per_shard=10_000,
                    extract_exif=False, enable_wandb=False, compute_hash=None,
                    disallowed_header_directives=[],  # the run folder is fresh: nothing to resume inside it
                )
            for shard in sorted((tmp / "out").glob("*.parquet")):
                for r in pq.read_table(shard).to_pylist():
                    out[r["url"]] = self._ingest(r, tmp / "out" / shard.stem, image_size, min_image_size)
        progress.advance(len(todo))
        ok = sum(r["status"] == "success" for r in out.values())
        progress.close(f"{ok} downloaded, {len(todo) - ok} failed or dead")
        for u, c in todo:
            if u not in out:  # img2dataset lost the row (crashed shard): record, never drop silently
                out[u] = dict(url=u, caption=c, status="failed", error="no result from img2dataset",
                              file=None, sha256=None)
        return out

    def _ingest(self, r: dict, shard_dir: Path, image_size: int, min_image_size: int) -> dict:
        row = dict(url=r["url"], caption=r.get("caption"), status="failed", error=None, file=None, sha256=None)
        if r.get("status") != "success":
            row["error"] = r.get("error_message") or f"status {r.get('status')}"
            return row
        src = shard_dir / f"{r['key']}.jpg"
        data = src.read_bytes() if src.exists() else b""
        reason = check_image(data, size=image_size, min_size=min_image_size)
        if reason:
            row["error"] = reason
            return row
        name = f"{url_key(r['url'])}.jpg"
        shutil.move(str(src), self.images / name)
        row.update(status="success", file=name, sha256=hashlib.sha256(data).hexdigest())
        return row
