"""DVC on object storage (issue 30): `dvc push` to an S3 remote (moto's server on 127.0.0.1) from
one clone, then `git clone` to another path, `dvc pull` and `dvc repro` there: nothing runs; after
a params change only the stages that depend on it run. The real dvc.yaml and params.yaml, two of
its stages (regset and masks: the cheap ones on tiny models) so that the test stays short."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.flows.test_first_hour import _fresh_copy, git_status

pytestmark = [pytest.mark.server, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
STAGES = ["regset", "masks"]


@pytest.fixture
def s3_remote():
    """moto's S3 server with bucket `lcd-dvc`; -> the AWS_* environment of a DVC user."""
    import boto3
    from moto.server import ThreadedMotoServer

    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    srv.start()
    host, port = srv.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                 aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket="lcd-dvc")
    yield env
    srv.stop()


def _ran(out: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", out))


def test_push_from_one_clone_pull_and_repro_in_another(prefect_server, s3_remote, tmp_path):
    env = {k: v for k, v in prefect_server.env.items() if k != "PYTHONPATH"} | s3_remote

    def sh(root: Path, *cmds: str, timeout: float = 600) -> str:
        path = f"{root / '.venv' / 'bin'}:{env['PATH']}"
        out = subprocess.run(["bash", "-c", "set -euo pipefail\nsource scripts/env.sh\n" + "\n".join(cmds)], cwd=root,
                             env={**env, "PATH": path}, capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, f"{cmds} -> {out.returncode}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
        return out.stdout + out.stderr

    # 1. machine one: data, tiny models, the two stages, an S3 remote (its endpoint in .dvc/config,
    #    credentials from the environment), commit, push
    one = tmp_path / "one" / "lcdiffusion"
    one.mkdir(parents=True)
    _fresh_copy(one)
    sh(one, "lcd models tiny models/tiny", "lcd data init", "dvc commit -f -q data.dvc",
       "dvc remote add -d store s3://lcd-dvc/lcdiffusion",
       f"dvc remote modify store endpointurl {s3_remote['AWS_ENDPOINT_URL']}")
    assert _ran(sh(one, f"dvc repro {' '.join(STAGES)}")) == set(STAGES)
    sh(one, "git add dvc.lock .dvc/config data.dvc", "git -c user.email=t@t -c user.name=t commit -qm 'regset, masks'",
       "dvc push -q")
    assert git_status(one) == []
    # 2. machine two, at another path: git clone, dvc pull from the bucket, repro: nothing runs
    two = tmp_path / "elsewhere" / "two"
    subprocess.run(["git", "clone", "-q", str(one), str(two)], check=True, capture_output=True)
    (two / ".venv").symlink_to(REPO / ".venv", target_is_directory=True)
    assert not (two / "outputs").exists() and not (two / "data" / "scenes").exists()
    # (the stages it ran, and data.dvc: the stages never run have nothing in the remote)
    sh(two, "lcd models tiny models/tiny", f"dvc pull data.dvc {' '.join(STAGES)}")
    assert sorted(p.name for p in (two / "outputs").iterdir()) == ["masks", "regset"]
    out = sh(two, f"dvc repro {' '.join(STAGES)}")
    assert _ran(out) == set(), out[-3000:]
    assert "didn't change" in out or "up to date" in out, out[-3000:]
    # 3. a masks setting changed there: masks runs again, regset does not
    params = yaml.safe_load((two / "params.yaml").read_text())
    params["masks"]["dilate_px"] = params["masks"].get("dilate_px", 0) + 2
    (two / "params.yaml").write_text(yaml.safe_dump(params))
    assert _ran(sh(two, f"dvc repro {' '.join(STAGES)}")) == {"masks"}
    assert {line[3:] for line in git_status(two)} == {"dvc.lock", "params.yaml"}
