"""Nightly change detection with photos and weights on object storage (issue 30): the nightly
job runs on any machine of the pool, reading photos from the bucket and its records beside the
weights there."""

from __future__ import annotations

from lcd.jobs.fingerprint import plan_concepts, record_fingerprint
from tests.conftest import SAMPLES
from tests.s3server import s3, s3_endpoint  # noqa: F401 - the moto server fixtures


def test_photos_and_records_in_the_bucket(s3):  # noqa: F811
    for p in sorted((SAMPLES / "concepts" / "dog").iterdir())[:3]:
        s3.put_file(str(p), f"lcd-test/photos/dog/{p.name}")
    s3.pipe_file("lcd-test/photos/dog/.hidden.jpg", b"not a photo")
    photos, weights = "s3://lcd-test/photos", "s3://lcd-test/concepts"
    (plan,) = plan_concepts(photos, weights, {"steps": 2}, "pin")
    assert (plan.name, plan.reason, plan.weights_dir) == ("dog", "new", "s3://lcd-test/concepts/dog")
    record_fingerprint(plan.weights_dir, plan.fingerprint)
    assert s3.exists("lcd-test/concepts/dog/fingerprint.json")
    assert plan_concepts(photos, weights, {"steps": 2}, "pin")[0].reason == "unchanged"
    assert plan_concepts(photos, weights, {"steps": 3}, "pin")[0].reason == "changed"
    first = [k for k in sorted(s3.ls("lcd-test/photos/dog")) if "/." not in k][0]
    s3.pipe_file(first, s3.cat_file(first) + b"\0")  # one photo's bytes changed
    assert plan_concepts(photos, weights, {"steps": 2}, "pin")[0].reason == "changed"
