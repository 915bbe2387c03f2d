"""Regularization set: class images whose captions are close to the class prompt.

Sources (LAION-style metadata shards or a self-hosted clip-retrieval backend) -> caption filter
(CLIP text similarity, threshold, top-N, dedupe) -> img2dataset download + decode check ->
manifest Parquet + diffusers `--real_prior` layout; a shortfall is filled with generated images.
"""
