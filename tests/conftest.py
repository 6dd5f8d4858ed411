"""Shared fixtures: everything talks to real servers over real sockets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

#: Figures the tests measured (memory, install time): printed at the end of the run, where
#: an instructor reading ``make test`` output finds them (docs/instructors.md quotes them).
FIGURES: list[str] = []


def report_figure(record_property, name: str, value: object, line: str) -> None:
    """Keep a measured figure: as a JUnit property and in the run's closing summary."""
    record_property(name, value)
    FIGURES.append(line)


def pytest_terminal_summary(terminalreporter) -> None:
    if FIGURES:
        terminalreporter.write_sep("-", "measured figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


def run_python(
    code: str, *, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (a new process, as a kernel restart gives)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def eventually(check: Callable[[], object], within: float = 10.0) -> bool:
    """Whether ``check()`` turns true within ``within`` seconds (polled; assert on it)."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def find_crictl() -> str | None:
    """``$CRICTL``, else ``../shared/bin/crictl``, else ``crictl`` on PATH."""
    if os.environ.get("CRICTL"):
        return os.environ["CRICTL"]
    shared = ROOT.parent / "shared" / "bin" / "crictl"
    if shared.is_file():
        return str(shared)
    return shutil.which("crictl")


def require(found: object, why: str) -> None:
    """Skip when a third-party program is missing, but fail under CI, which always has it."""
    if found:
        return
    if IN_CI:
        pytest.fail(f"{why} (CI=true: CI always provides it, so this is a failure)")
    pytest.skip(why)


@pytest.fixture
def crictl() -> str:
    path = find_crictl()
    require(path, "crictl not found: set $CRICTL, put ../shared beside the repo, or install crictl")
    assert path is not None
    return path


CONTAINERD_REF = ROOT.parent / "shared" / "containerd" / "containerd-ref"


@pytest.fixture(scope="session")
def containerd(tmp_path_factory):
    """A real containerd 1.6 (../shared/containerd/containerd-ref): its endpoint, then stopped.

    Host-network pods only, local images only, never a pull.
    """
    require(
        shutil.which("containerd") and CONTAINERD_REF.is_file() and os.geteuid() == 0,
        "needs root, ../shared/containerd/containerd-ref and Debian's containerd "
        "(apt-get install containerd runc busybox-static containernetworking-plugins)",
    )
    base = tmp_path_factory.mktemp("containerd")
    started = subprocess.run(
        [str(CONTAINERD_REF), "start", str(base)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert started.returncode == 0, started.stderr
    yield started.stdout.strip().splitlines()[-1]
    subprocess.run(
        [str(CONTAINERD_REF), "stop", str(base)], capture_output=True, timeout=120, check=False
    )
