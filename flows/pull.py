"""prefect.yaml's pull step: where a flow run of a deployment works, on whichever machine runs it.

Prefect's default pull step records the deploying checkout's folder, so every worker needed the
project at that same path. This step is imported from the installed package (`pip install` put
`flows` there) and picks the folder on the worker's side, when the run starts:
`$LCD_PROJECT_DIR` (set in the worker's environment, a docker image's ENV, a Kubernetes pod's
env), else the project folder of the installed package (an editable install's checkout). The
deployments' relative paths (params.yaml, data/...) resolve against it; URLs need no folder.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_DIR_ENV = "LCD_PROJECT_DIR"


def project_directory() -> Path:
    """$LCD_PROJECT_DIR, else the folder holding the installed `flows` package."""
    return Path(os.environ.get(PROJECT_DIR_ENV) or Path(__file__).resolve().parents[1])


def set_project_directory() -> dict[str, str]:
    """chdir to project_directory(); -> {"directory": its absolute path} (as Prefect's own
    set_working_directory returns). A folder that is not there is one line naming the variable."""
    d = project_directory()
    if not d.is_dir():
        raise FileNotFoundError(f"{PROJECT_DIR_ENV}={d}: no such folder on this worker; set {PROJECT_DIR_ENV} "
                                f"to the project's folder (its checkout or the image's copy)")
    os.chdir(d)
    return {"directory": str(d.resolve())}
