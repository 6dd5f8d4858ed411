"""The real crictl drives `crilab serve`: every common command, checked for what it prints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import find_crictl, require

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[str, Path, str]]:
    crictl = find_crictl()
    require(crictl, "crictl not found: set $CRICTL, put ../shared beside the repo, or install it")
    assert crictl is not None
    work = tmp_path_factory.mktemp("crictl")
    sock = work / "rt.sock"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "crilab",
            "serve",
            "--listen",
            f"unix://{sock}",
            "--preload",
            "busybox",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    endpoint = proc.stdout.readline().strip()
    assert endpoint == f"unix://{sock}", proc.stderr.read() if proc.poll() is not None else ""
    yield crictl, work, endpoint
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0, "crilab serve exits cleanly on SIGTERM"
    assert not sock.exists(), "crilab serve removes its socket"


def crictl(served, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    binary, work, endpoint = served
    env = dict(os.environ)
    done = subprocess.run(
        [
            binary,
            "--runtime-endpoint",
            endpoint,
            "--image-endpoint",
            endpoint,
            "--timeout",
            "20s",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        timeout=60,
        check=False,
    )
    if ok:
        assert done.returncode == 0, f"crictl {' '.join(args)} failed: {done.stderr}"
    return done


def test_version_and_info(served) -> None:
    out = crictl(served, "version").stdout
    assert "RuntimeName:  crilab-fake" in out
    assert "RuntimeApiVersion:  v1" in out
    info = json.loads(crictl(served, "info").stdout)
    conditions = {c["type"]: c["status"] for c in info["status"]["conditions"]}
    assert conditions == {"RuntimeReady": True, "NetworkReady": True}


def test_images(served) -> None:
    assert "up to date" in crictl(served, "pull", "alpine:3.20").stdout
    listing = crictl(served, "images").stdout
    assert "docker.io/library/alpine" in listing and "3.20" in listing
    assert "docker.io/library/busybox" in listing
    inspected = json.loads(crictl(served, "inspecti", "alpine:3.20").stdout)
    assert "docker.io/library/alpine:3.20" in inspected["status"]["repoTags"]
    missing = crictl(served, "pull", "example.invalid/nope:1", ok=False)
    assert missing.returncode != 0 and "not found" in missing.stderr.lower()
    assert "Deleted: docker.io/library/alpine:3.20" in crictl(served, "rmi", "alpine:3.20").stdout
    assert "alpine" not in crictl(served, "images").stdout
    fs = json.loads(crictl(served, "imagefsinfo").stdout)
    assert fs["status"]["imageFilesystems"][0]["usedBytes"]["value"] != "0"


def test_pod_and_container_lifecycle(served) -> None:
    _, work, _ = served
    (work / "pod.json").write_text(
        json.dumps(
            {
                "metadata": {"name": "web", "namespace": "default", "uid": "uid-1", "attempt": 0},
                "log_directory": str(work / "logs"),
                "linux": {},
            }
        )
    )
    (work / "ctr.json").write_text(
        json.dumps(
            {
                "metadata": {"name": "app"},
                "image": {"image": "busybox"},
                "command": ["sh", "-c", "echo hello from crilab; sleep 3600"],
                "log_path": "app/0.log",
                "linux": {},
            }
        )
    )
    pod = crictl(served, "runp", "pod.json").stdout.strip()
    assert len(pod) == 64
    pods = crictl(served, "pods").stdout
    assert pod[:13] in pods and "Ready" in pods and "web" in pods

    ctr = crictl(served, "create", pod[:13], "ctr.json", "pod.json").stdout.strip()
    assert len(ctr) == 64
    assert "Created" in crictl(served, "ps", "-a").stdout
    assert crictl(served, "start", ctr[:13]).stdout.strip() == ctr[:13]
    ps = crictl(served, "ps").stdout
    assert ctr[:13] in ps and "Running" in ps and "app" in ps

    inspected = json.loads(crictl(served, "inspect", ctr[:13]).stdout)
    assert inspected["status"]["state"] == "CONTAINER_RUNNING"
    assert inspected["status"]["logPath"] == str(work / "logs" / "app" / "0.log")

    assert crictl(served, "exec", "-s", ctr[:13], "echo", "hi").stdout.split("\n")[0] == "hi"
    failing = crictl(served, "exec", "-s", ctr[:13], "sh", "-c", "echo err >&2; exit 3", ok=False)
    assert failing.returncode != 0 and "exited with 3" in failing.stderr

    deadline = time.monotonic() + 5
    while "hello from crilab" not in crictl(served, "logs", ctr[:13]).stdout:
        assert time.monotonic() < deadline, "the container's output never reached its log"
        time.sleep(0.05)

    assert ctr[:13] in crictl(served, "stop", ctr[:13]).stdout
    exited = json.loads(crictl(served, "inspect", ctr[:13]).stdout)["status"]
    assert (exited["state"], exited["exitCode"], exited["reason"]) == (
        "CONTAINER_EXITED",
        137,
        "Error",
    )
    assert "Exited" in crictl(served, "ps", "-a").stdout
    assert ctr[:13] in crictl(served, "rm", ctr[:13]).stdout
    assert ctr[:13] not in crictl(served, "ps", "-a").stdout

    assert f"Stopped sandbox {pod[:13]}" in crictl(served, "stopp", pod[:13]).stdout
    assert "NotReady" in crictl(served, "pods").stdout
    assert f"Removed sandbox {pod[:13]}" in crictl(served, "rmp", pod[:13]).stdout
    assert pod[:13] not in crictl(served, "pods").stdout


def test_mistakes_come_back_as_crictl_errors(served) -> None:
    wrong = crictl(served, "inspect", "0123456789abc", ok=False)
    assert wrong.returncode != 0 and "not found" in wrong.stderr.lower()
    assert crictl(served, "version").returncode == 0  # the server keeps serving


def test_the_readme_crictl_block_runs_as_written(tmp_path: Path) -> None:
    """The README's paste-me block, run by bash with the real crictl against `crilab serve`
    (started in its own process by ``crilab.spawn_runtime``), exactly as a reader would."""
    import crilab

    binary = find_crictl()
    require(binary, "crictl not found: set $CRICTL, put ../shared beside the repo, or install it")
    assert binary is not None
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = [b.split("\n", 1)[1] for b in readme.split("```sh")[1:]]
    [block] = [b.split("```", 1)[0] for b in blocks if "cat > pod.json" in b]
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "crictl").symlink_to(os.path.abspath(binary))
    with crilab.spawn_runtime() as rt:
        env = {
            **os.environ,
            "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
            "CONTAINER_RUNTIME_ENDPOINT": rt.endpoint,
        }
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 0, f"the README block failed:\n{done.stdout}\n{done.stderr}"
    out = done.stdout
    assert "RuntimeName:  crilab-fake" in out  # crictl version
    assert "hello from crilab" in out  # crictl logs
    assert "\nhi\n" in f"\n{out}"  # crictl exec -s
    assert "Deleted: docker.io/library/alpine:latest" in out  # crictl rmi, the last line
