"""Self-hosted clip-retrieval index over a user's image/caption collection, and its server.

`build_index` runs clip-retrieval's own `clip inference` (image + caption embeddings and
metadata of an img2dataset webdataset output: NNNNN.tar shards of jpg + txt + json) then `clip index`
(autofaiss), and writes `indices_paths.json` naming the index, so many classes can later be
queried through `serve_index` (clip-retrieval's `clip back` endpoints). Both run in this
process with the open_clip model registered first (`register_open_clip`): clip-retrieval
resolves `open_clip:ARCH/weights` only for architectures open_clip knows.

Only webdataset collections: clip-retrieval 2.45's "files" reader keys captions and images by
their file names *with* the extension (`x.txt` vs `x.jpg`), so they never join (KeyError).
"""

from __future__ import annotations

import io
import json
import os
from contextlib import redirect_stdout
from pathlib import Path

from lcd.errors import LcdError
from lcd.io.atomic import write_text_atomic
from lcd.models.loader import register_open_clip

INDICES_FILE = "indices_paths.json"
COLUMNS = ["url", "caption"]


def clip_retrieval_ref(clip_model: str) -> str:
    """params' clip_model -> the `clip_model` string clip-retrieval (all_clip) loads."""
    arch, pretrained = register_open_clip(clip_model)
    return f"open_clip:{arch}/{pretrained}"


def build_index(
    collection: str | Path,
    out_dir: str | Path,
    clip_model: str,
    *,
    name: str = "regset",
    batch_size: int = 256,
    workers: int = 1,
) -> Path:
    """Embed `collection` (img2dataset `--output_format webdataset` folder: tar shards of
    image + .txt caption + .json holding the url) and index it. Writes out/embeddings/{img_emb,text_emb,metadata}, out/index/{image.index,
    text.index,metadata}, out/indices_paths.json; returns the latter."""
    from clip_retrieval.clip_index import clip_index
    from clip_retrieval.clip_inference.main import main as clip_inference

    coll, out = Path(collection), Path(out_dir)
    tars = [p.name for p in sorted(coll.glob("*.tar"))]
    if not tars:
        raise LcdError(f"{collection}: no webdataset shards (*.tar) in the collection folder", item=str(collection))
    # clip inference brace-expands one string ("{a,b}"; a single name has no braces)
    dataset = str(coll.resolve() / tars[0]) if len(tars) == 1 else f"{coll.resolve()}/{{{','.join(tars)}}}"
    ref = clip_retrieval_ref(clip_model)
    with redirect_stdout(io.StringIO()):  # clip-retrieval prints progress: keep stdout for results
        clip_inference(
            input_dataset=dataset, output_folder=str(out / "embeddings"), input_format="webdataset",
            enable_text=True, enable_image=True, enable_metadata=True, clip_model=ref, use_jit=False,
            batch_size=batch_size, num_prepro_workers=workers, write_batch_size=10**6,
        )
        clip_index(str(out / "embeddings"), str(out / "index"), nb_cores=workers,
                   max_index_memory_usage="1G", current_memory_available="2G")
    for f in ("image.index", "text.index"):
        if not (out / "index" / f).exists():
            raise LcdError(f"{collection}: clip index wrote no {f} (empty collection?)", item=str(collection))
    return write_text_atomic(out / INDICES_FILE, json.dumps({name: str((out / "index").resolve())}))


def build_app(indices_paths: str | Path, clip_model: str):
    """The Flask app of clip-retrieval's `clip back` (same endpoints: /knn-service,
    /indices-list, /metadata), with no hub-fetched extras (mclip, safety, aesthetic)."""
    from clip_retrieval.clip_back import (
        ClipOptions, IndicesList, KnnService, MetadataService, load_clip_indices,
    )
    from flask import Flask
    from flask_restful import Api

    options = ClipOptions(
        indice_folder="", clip_model=clip_retrieval_ref(clip_model), enable_hdf5=False,
        enable_faiss_memory_mapping=False, columns_to_return=COLUMNS, reorder_metadata_by_ivf_index=False,
        enable_mclip_option=False, use_jit=False, use_arrow=False, provide_safety_model=False,
        provide_violence_detector=False, provide_aesthetic_embeddings=False,
    )
    resources = load_clip_indices(indices_paths=str(indices_paths), clip_options=options)
    app = Flask("lcd-clip-back")
    api = Api(app)
    api.add_resource(IndicesList, "/indices-list", resource_class_kwargs={"indices": list(resources)})
    api.add_resource(MetadataService, "/metadata", resource_class_kwargs={"clip_resources": resources})
    api.add_resource(KnnService, "/knn-service", resource_class_kwargs={"clip_resources": resources})
    return app


def serve_index(indices_paths: str | Path, clip_model: str, *, host: str = "127.0.0.1", port: int = 1234) -> None:
    """Run the `clip back` endpoints on host:port (loopback by default; clip-retrieval's own
    `clip back` binds 0.0.0.0). Blocks until interrupted."""
    if not Path(indices_paths).exists():
        raise LcdError(f"{indices_paths}: indices file not found (build one with `lcd regset index`)",
                       item=str(indices_paths))
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    build_app(indices_paths, clip_model).run(host=host, port=port, debug=False, threaded=True)
