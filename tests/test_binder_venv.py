"""Binder's pinned requirements, installed into a fresh virtual environment, give a working kit.

The same ``binder/requirements.txt`` repo2docker installs goes into a new venv; then every
notebook runs there, headless. The peak memory of that run is measured against Binder's 2 GB.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

BINDER_MEMORY = 2 * 1024**3

RUNNER = r"""
import json, resource, sys, time
from pathlib import Path
import nbformat
from nbclient import NotebookClient

times = {}
for path in sorted(Path(sys.argv[1]).glob("*.ipynb")):
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    times[path.stem] = round(time.perf_counter() - t0, 2)
kib = 1024
print(json.dumps({
    "times": times,
    "runner_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib,
    "kernel_peak": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kib,
}))
"""


def test_pinned_requirements_in_a_fresh_venv_run_every_notebook(
    tmp_path: Path, record_property
) -> None:
    env_dir = tmp_path / "binder-venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    t0 = time.perf_counter()
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-r", "binder/requirements.txt"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=700,
        check=False,
    )
    install_seconds = time.perf_counter() - t0
    assert install.returncode == 0, install.stderr[-3000:]
    # what binder/postBuild does
    subprocess.run(
        [str(env_dir / "bin" / "crilab"), "gen", "--check"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    done = subprocess.run(
        [str(python), "-c", RUNNER, str(ROOT / "notebooks")],
        capture_output=True,
        text=True,
        timeout=800,
        check=False,
        env={"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin", "HOME": str(Path.home())},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(report["times"]) == len(list((ROOT / "notebooks").glob("*.ipynb")))
    peak = report["runner_peak"] + report["kernel_peak"]
    record_property("binder_install_seconds", round(install_seconds, 1))
    record_property("binder_peak_bytes", peak)
    print(
        f"\nbinder: install {install_seconds:.0f} s; notebooks {report['times']}; peak "
        f"{peak / 2**20:.0f} MiB (runner {report['runner_peak'] / 2**20:.0f} MiB + largest "
        f"kernel {report['kernel_peak'] / 2**20:.0f} MiB)"
    )
    assert peak < BINDER_MEMORY / 2, "the course must fit comfortably in Binder's 2 GB"
    assert sys.version_info >= (3, 11)
