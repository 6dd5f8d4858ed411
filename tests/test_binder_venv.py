"""Binder's pinned requirements, installed into a fresh virtual environment, give a working kit.

The same ``binder/requirements.txt`` repo2docker installs goes into a new venv, with a new
home and an empty stub cache; ``binder/postBuild`` fills the cache; then every notebook runs
there, headless, in a kernel that must be the venv's own Python. The memory of that run is
measured against Binder's 2 GB: each kernel's peak, and an idle Jupyter server of the venv
(what Binder runs beside the kernels). The figures are printed at the end of the pytest run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
import venv
from pathlib import Path

import pytest

from crilab.stubs import proto_names

from .conftest import ROOT, report_figure

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

MIB = 2**20
BINDER_MEMORY = 2 * 1024**3

# Appended to every notebook: which Python ran it, and the kernel's peak RSS (VmHWM).
PROBE_CELL = r"""
import json, sys
from pathlib import Path
import crilab
_hwm = [l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:")]
print("CRILAB-PROBE " + json.dumps({"prefix": sys.prefix, "crilab": crilab.__file__,
                                   "peak_kib": int(_hwm[0].split()[1])}))
"""

RUNNER = r"""
import json, resource, sys, time
from pathlib import Path
import nbformat
from nbclient import NotebookClient

probe = sys.argv[2]
report = {"notebooks": {}}
for path in sorted(Path(sys.argv[1]).glob("*.ipynb")):
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(probe))
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    line = [l for l in text.splitlines() if l.startswith("CRILAB-PROBE ")][-1]
    report["notebooks"][path.stem] = {
        "seconds": round(time.perf_counter() - t0, 2),
        **json.loads(line.removeprefix("CRILAB-PROBE ")),
    }
report["runner_peak_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(report))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def idle_server_rss_kib(env_dir: Path, env: dict[str, str], notebooks: Path) -> int:
    """RSS of the venv's JupyterLab server, started on ``notebooks`` and left idle."""
    port, token = _free_port(), "binder-venv-test"
    cmd = [
        str(env_dir / "bin" / "jupyter"),
        "lab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={notebooks}",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = Path(env["HOME"]) / "lab.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2
                )
                break
            except OSError:
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "JupyterLab did not start in 120 s"
                time.sleep(0.5)
        time.sleep(2)  # let it settle: idle is what is measured
        return _rss_kib(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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

    # Binder's user: a new home, an empty stub cache, nothing of the developer's
    home, cache = tmp_path / "home", tmp_path / "stub-cache"
    home.mkdir()
    env = {
        "PATH": f"{env_dir / 'bin'}:/usr/bin:/bin",
        "HOME": str(home),
        "CRILAB_CACHE_DIR": str(cache),
    }
    notebooks = tmp_path / "notebooks"  # a copy: nothing is written into the repository
    notebooks.mkdir()
    for path in (ROOT / "notebooks").glob("*.ipynb"):
        (notebooks / path.name).write_bytes(path.read_bytes())

    post_build = subprocess.run(
        ["bash", str(ROOT / "binder" / "postBuild")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert post_build.returncode == 0, post_build.stderr
    filled = sorted(p.name.split("-")[0] for p in cache.iterdir())
    assert filled == proto_names(), "postBuild fills the (empty) stub cache"

    done = subprocess.run(
        [str(python), "-c", RUNNER, str(notebooks), PROBE_CELL],
        capture_output=True,
        text=True,
        timeout=800,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    runs = report["notebooks"]
    assert sorted(runs) == sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    where = env_dir.resolve()
    for name, run in runs.items():
        assert Path(run["prefix"]).resolve() == where, f"{name} ran in {run['prefix']}"
        assert Path(run["crilab"]).resolve().is_relative_to(where), f"{name}: {run['crilab']}"
    assert not [p for p in cache.iterdir() if p.name.startswith(".")], "no half-made stubs"

    server = idle_server_rss_kib(env_dir, env, notebooks) * 1024
    kernels = {name: run["peak_kib"] * 1024 for name, run in runs.items()}
    largest = max(kernels.values())
    runner = report["runner_peak_kib"] * 1024
    one_open = server + largest
    all_open = server + sum(kernels.values())
    report_figure(
        record_property,
        "binder_install_seconds",
        round(install_seconds, 1),
        f"binder: fresh venv install of binder/requirements.txt {install_seconds:.0f} s",
    )
    report_figure(
        record_property,
        "binder_kernel_peak_bytes",
        kernels,
        "binder: kernel peak RSS per notebook "
        + ", ".join(f"{n} {b / MIB:.0f}" for n, b in sorted(kernels.items()))
        + " MiB; seconds "
        + ", ".join(f"{n} {r['seconds']:.1f}" for n, r in sorted(runs.items())),
    )
    report_figure(
        record_property,
        "binder_peak_bytes",
        one_open,
        f"binder: idle JupyterLab server {server / MIB:.0f} MiB + largest kernel "
        f"{largest / MIB:.0f} MiB = {one_open / MIB:.0f} MiB; with all {len(kernels)} "
        f"kernels left open {all_open / MIB:.0f} MiB (Binder allows {BINDER_MEMORY / MIB:.0f}); "
        f"headless runner (nbclient) {runner / MIB:.0f} MiB",
    )
    assert one_open < BINDER_MEMORY / 2, "one notebook at a time must fit easily in Binder's 2 GB"
    assert all_open < BINDER_MEMORY, "a learner who leaves every notebook open must still fit"
