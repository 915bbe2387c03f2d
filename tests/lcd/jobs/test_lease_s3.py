"""The coordinator lease on object storage (moto's S3 server on 127.0.0.1): created with a
conditional PUT, a second coordinator refused naming the first, a stale lease replaced with
If-Match on its ETag (a writer in between makes the takeover fail, not overwrite)."""

from __future__ import annotations

import json
import time

import pytest

from lcd.errors import CoordinatorBusy
from lcd.jobs.lease import CoordinatorLease
from tests.tasks.test_edit_s3 import s3  # noqa: F401 - the moto server fixture


def test_lease_on_s3(s3):  # noqa: F811
    out, key = "s3://lcd-test/runs/leased", "lcd-test/runs/leased/tables/coordinator.lease"
    a = CoordinatorLease(out, "run-a", heartbeat_s=0.2).acquire()
    assert json.loads(s3.cat_file(key))["run"] == "run-a"
    with pytest.raises(CoordinatorBusy, match=r"held by coordinator 'run-a' \(host "):
        CoordinatorLease(out, "run-b").acquire()
    etag = s3.info(key, refresh=True)["ETag"]
    time.sleep(0.6)
    assert s3.info(key, refresh=True)["ETag"] != etag  # the heartbeat rewrote it
    a.release()
    assert not s3.exists(key)
    # a stale lease (silent for 2 minutes, another host) is taken over
    s3.pipe_file(key, json.dumps({"run": "gone", "host": "elsewhere", "pid": 1, "heartbeat": time.time() - 120,
                                  "token": "x"}).encode())
    with CoordinatorLease(out, "run-c", stale_after_s=60) as c:
        assert c.took_over["run"] == "gone" and json.loads(s3.cat_file(key))["run"] == "run-c"
        # a takeover whose ETag is no longer the lease's fails: the PUT is conditional
        assert c._put_remote(b"{}", create=False, replace_etag='"0000"') is False
        assert c._put_remote(b"{}", create=True, replace_etag=None) is False
        assert json.loads(s3.cat_file(key))["run"] == "run-c"
    assert not s3.exists(key)
