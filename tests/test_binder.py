"""Binder: the repo2docker configuration is valid, light, and pinned like pyproject.toml."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from .conftest import ROOT

BINDER = ROOT / "binder"


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", line.strip())
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def test_binder_pins_agree_with_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ours = _pins(project["dependencies"])
    binder = _pins((BINDER / "requirements.txt").read_text().splitlines())
    for name in (
        "grpcio",
        "grpcio-tools",
        "protobuf",
        "grpcio-reflection",
        "grpcio-health-checking",
    ):
        assert binder[name] == ours[name], f"{name}: binder {binder[name]}, pyproject {ours[name]}"
    assert (BINDER / "requirements.txt").read_text().splitlines()[-1].strip() == "."


def test_postbuild_is_light() -> None:
    script = (BINDER / "postBuild").read_text()
    commands = [c for c in script.splitlines() if c.strip() and not c.startswith(("#", "set "))]
    assert commands == ["crilab gen --check"], "postBuild must stay light: no compiling"
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"


@pytest.mark.timeout(180)
def test_repo2docker_reads_the_configuration(tmp_path: Path) -> None:
    r2d = shutil.which("jupyter-repo2docker", path=str(Path(sys.executable).parent))
    assert r2d, "jupyter-repo2docker is in the test extra"
    # a clean export of what git tracks, as Binder clones it
    repo = tmp_path / "repo"
    repo.mkdir()
    files = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, files):
        dest = repo / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, dest)
    # BinderHub builds for jovyan, uid 1000; without these repo2docker uses the caller's uid
    done = subprocess.run(
        [r2d, "--no-build", "--debug", "--user-id", "1000", "--user-name", "jovyan", str(repo)],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    dockerfile = done.stdout + done.stderr
    assert "python=3.11" in dockerfile or "python-3.11" in dockerfile
    copy_repo = re.search(r"^COPY --chown=(\d+):(\d+) src/ \$\{REPO_DIR\}/$", dockerfile, re.M)
    assert copy_repo, "repo2docker copies the whole repository (src/ is its build context)"
    assert copy_repo.groups() == ("1000", "1000"), "owned by the notebook user, as on Binder"
    install = dockerfile.index('pip install --no-cache-dir -r "binder/requirements.txt"')
    assert copy_repo.start() < install, "the repository is copied before `.` is installed"
    assert "./binder/postBuild" in dockerfile


@pytest.mark.timeout(240)
def test_the_package_ships_its_license_notice_protos_and_one_version(tmp_path: Path) -> None:
    """What ``pip install .`` (Binder's last requirement) builds: the wheel, as hatch makes it."""
    import importlib.metadata
    import zipfile

    import crilab

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"], (
        "the version is written once, in src/crilab/__init__.py"
    )
    assert importlib.metadata.version("crilab") == crilab.__version__
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = tmp_path.glob("crilab-*.whl")
    info = f"crilab-{crilab.__version__}.dist-info"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read(f"{info}/METADATA").decode()
        license_text = z.read(f"{info}/licenses/LICENSE").decode()
        notice = z.read(f"{info}/licenses/NOTICE").decode()
    assert f"\nVersion: {crilab.__version__}\n" in metadata
    assert "License-Expression: Apache-2.0" in metadata
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text
    assert "The Kubernetes Authors" in notice and "The gRPC Authors" in notice
    assert {"crilab/proto/api.proto", "crilab/proto/helloworld.proto"} <= names
    assert not any(n.endswith(("_pb2.py", "_pb2_grpc.py")) for n in names), "stubs are generated"
