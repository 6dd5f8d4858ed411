"""spawn_runtime(): crilab serve in a real separate process, on a real socket."""

from __future__ import annotations

import gc
import os
import stat
import time
from pathlib import Path

import pytest

import crilab
from crilab import FakeRuntime
from crilab.endpoints import EndpointError
from crilab.spawned import SpawnedRuntime, SpawnError, spawn_runtime

from .conftest import run_python

pytestmark = pytest.mark.timeout(180)

BUSYBOX = "localhost/crilab/busybox:local"
#: Generous for a start on a loaded machine: a bound against hangs, not a speed test.
START = 60.0


def alive(pid: int) -> bool:
    """A process that runs (a zombie waiting for its parent does not)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] != "Z"


def eventually(check, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "did not happen in time"
        time.sleep(0.05)


def socket_of(srv: SpawnedRuntime) -> str:
    return srv.endpoint.removeprefix("unix://")


def test_it_serves_from_another_process_and_stop_leaves_nothing() -> None:
    srv = crilab.spawn_runtime(images=[BUSYBOX], timeout=START)
    path = socket_of(srv)
    try:
        assert isinstance(srv, SpawnedRuntime) and srv.running
        assert srv.pid != os.getpid() and alive(srv.pid)
        cmdline = Path(f"/proc/{srv.pid}/cmdline").read_bytes().split(b"\0")
        assert b"crilab.spawned" in cmdline and b"serve" not in cmdline[:2]
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # the server's own rules hold
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        assert f"pid {srv.pid} serving on {srv.endpoint}" in repr(srv)
        with crilab.connect(srv.endpoint) as client:
            assert client.version().runtime_name == "crilab-fake"
            assert client.image_status(BUSYBOX) is not None  # --preload reached the child
            pod = client.run_pod_sandbox(crilab.builders.pod_config("web"))
            assert [p.id for p in client.list_pod_sandbox()] == [pod]
        assert srv.crictl_command() == (
            f"crictl --runtime-endpoint {srv.endpoint} --image-endpoint {srv.endpoint}"
        )
    finally:
        srv.stop()
    assert not srv.running and srv.returncode == 0  # SIGTERM: a clean stop
    assert not alive(srv.pid)
    assert not os.path.exists(path) and not os.path.exists(os.path.dirname(path))
    assert "stopped (exit code 0)" in repr(srv)
    srv.stop()  # twice is fine


def test_tcp_and_the_context_manager() -> None:
    with spawn_runtime(listen="tcp://127.0.0.1:0", timeout=START) as srv:
        assert srv.endpoint.startswith("tcp://127.0.0.1:") and not srv.endpoint.endswith(":0")
        with crilab.connect(srv.endpoint) as client:
            assert client.version().runtime_api_version == "v1"
        assert srv.crictl_command().startswith("#")  # crictl speaks unix sockets only
        pid = srv.pid
    assert not alive(pid) and srv.returncode == 0


def test_rebinding_the_variable_stops_the_previous_one() -> None:
    srv = spawn_runtime(timeout=START)
    first_pid, first_path = srv.pid, socket_of(srv)
    srv = spawn_runtime(timeout=START)  # a re-run cell: the old object loses its last name
    gc.collect()
    try:
        assert not alive(first_pid) and not os.path.exists(first_path)
        assert alive(srv.pid)
    finally:
        srv.stop()


def test_it_stops_when_the_interpreter_exits() -> None:
    done = run_python(
        "import crilab; srv = crilab.spawn_runtime(timeout=60); print(srv.pid, srv.endpoint)"
    )
    assert done.returncode == 0, done.stderr
    pid, endpoint = done.stdout.split()
    eventually(lambda: not alive(int(pid)))
    assert not os.path.exists(endpoint.removeprefix("unix://"))


def test_a_parent_killed_outright_does_not_leave_it_running() -> None:
    done = run_python(
        "import os, signal, crilab\n"
        "srv = crilab.spawn_runtime(timeout=60)\n"
        "print(srv.pid, srv.endpoint, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)  # no atexit, no finalizer\n"
    )
    assert done.returncode == -9
    pid, endpoint = done.stdout.split()
    eventually(lambda: not alive(int(pid)))  # its watchdog saw the parent go
    eventually(lambda: not os.path.exists(endpoint.removeprefix("unix://")))


def test_a_bad_endpoint_is_refused_before_any_process() -> None:
    with pytest.raises(EndpointError, match="unsupported endpoint"):
        spawn_runtime(listen="http://127.0.0.1:80")


def test_a_server_that_cannot_start_says_why_and_leaves_nothing() -> None:
    with FakeRuntime() as taken:
        before = set(os.listdir("/proc"))
        with pytest.raises(SpawnError) as info:
            spawn_runtime(listen=taken.endpoint, timeout=START)
        message = str(info.value)
        assert "exited with code 2" in message and "already serving" in message
        assert "E1" not in message  # its own words, not grpc's log lines
        assert taken.running  # the other server was not disturbed
        with crilab.connect(taken.endpoint) as client:
            assert client.version().runtime_name == "crilab-fake"
    spawned = [
        pid
        for pid in set(os.listdir("/proc")) - before
        if pid.isdigit() and b"crilab.spawned" in _cmdline(pid)
    ]
    assert spawned == []


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_spawn_runtime_is_public() -> None:
    assert crilab.spawn_runtime is spawn_runtime
    assert "spawn_runtime" in dir(crilab)
