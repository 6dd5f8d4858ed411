"""Where the runtime listens, and what it will never touch.

A private socket (0600 in a 0700 directory), TCP on loopback unless asked
otherwise (and a warning when asked), a stale socket from a crashed run
reclaimed, but a live socket, a file that is not a socket, or a path the
kernel cannot bind never removed, replaced or taken over.
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from crilab import FakeRuntime, serving
from crilab.builders import pod_config
from crilab.endpoints import MAX_SOCKET_PATH, EndpointError
from crilab.stubs import api_pb2 as pb
from crilab.stubs import api_pb2_grpc

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module", autouse=True)
def _temp_files_stay_in_pytest_tmp(tmp_path_factory) -> Iterator[None]:
    """The runtime's own files (socket, state root) and the builders' default log
    directory go below pytest's tmp, never into the system temp dir."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("tmp")))
        yield


@pytest.fixture
def short_dir(tmp_path_factory) -> Path:
    """A directory with a short path: a unix socket path has at most 107 bytes."""
    path = tmp_path_factory.mktemp("sec")
    assert len(str(path)) < 80
    return path


def _version(endpoint: str) -> str:
    target = endpoint.replace("unix://", "unix:", 1).removeprefix("tcp://")
    with grpc.insecure_channel(target) as channel:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        return stub.Version(pb.VersionRequest(), timeout=5).runtime_api_version


def _mode(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _identity(path: str | Path) -> tuple[int, int, int]:
    info = os.lstat(path)
    return info.st_ino, info.st_mode, info.st_mtime_ns


# -- a private socket --------------------------------------------------------------------


def _check_private(rt: FakeRuntime) -> str:
    path = rt.endpoint.removeprefix("unix://")
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert _mode(path) == 0o600
    assert _mode(os.path.dirname(path)) == 0o700
    assert _version(rt.endpoint) == "v1"
    return path


def test_the_default_socket_is_0600_in_a_0700_directory(monkeypatch) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    old = os.umask(0)  # even with the most permissive umask
    try:
        rt = FakeRuntime()
    finally:
        os.umask(old)
    with rt:
        path = _check_private(rt)
    assert not os.path.exists(path) and not os.path.exists(os.path.dirname(path))


def test_under_xdg_runtime_dir_too(monkeypatch, short_dir: Path) -> None:
    xdg = short_dir / "xdg"
    xdg.mkdir(mode=0o700)
    (xdg / "crilab").mkdir(mode=0o755)  # left too open by someone: tightened
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    with FakeRuntime() as rt:
        path = _check_private(rt)
        assert path.startswith(f"{xdg}/crilab/")
        assert _mode(xdg / "crilab") == 0o700
    assert not os.path.exists(path)


def test_a_given_socket_path_is_0600_too(short_dir: Path) -> None:
    path = short_dir / "given.sock"
    with FakeRuntime(listen=f"unix://{path}") as rt:
        assert _mode(path) == 0o600
        assert _version(rt.endpoint) == "v1"
    assert not path.exists()


# -- TCP: loopback, unless asked ------------------------------------------------------------


@pytest.mark.parametrize("listen", ["tcp://127.0.0.1:0", "tcp://localhost:0"])
def test_loopback_tcp_listens_without_a_warning(listen: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        rt = FakeRuntime(listen=listen)
    with rt:
        assert _version(rt.endpoint) == "v1"


@pytest.mark.parametrize("listen", ["tcp://0.0.0.0:0", "tcp://[::]:0"])
def test_every_interface_is_allowed_but_warned_about(listen: str) -> None:
    """Bound and stopped at once: no traffic ever goes to a non-loopback address."""
    with pytest.warns(UserWarning, match="reachable from the network") as caught:
        try:
            rt = FakeRuntime(listen=listen)
        except EndpointError as err:  # no IPv6 on this machine
            pytest.skip(f"cannot bind {listen}: {err}")
    rt.stop()
    message = str(caught[0].message)
    assert "no authentication" in message and "127.0.0.1" in message
    assert caught[0].filename == __file__  # it points at the line that asked for it


def test_no_listen_means_a_unix_socket_never_a_port() -> None:
    with FakeRuntime() as rt:
        assert rt.endpoint.startswith("unix:///")


# -- existing paths ---------------------------------------------------------------------------


def test_a_stale_socket_from_a_crashed_run_is_reclaimed(short_dir: Path) -> None:
    path = short_dir / "stale.sock"
    crashed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    crashed.bind(str(path))
    crashed.close()  # as a killed process leaves it: the file stays, nobody listens
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    with FakeRuntime(listen=f"unix://{path}") as rt:
        assert _version(rt.endpoint) == "v1"
        assert _mode(path) == 0o600
    assert not path.exists()


def test_a_socket_another_runtime_serves_is_never_taken_over(short_dir: Path) -> None:
    path = short_dir / "live.sock"
    with FakeRuntime(listen=f"unix://{path}", seed="first") as first:
        before = _identity(path)
        with pytest.raises(EndpointError, match="another process is already serving") as err:
            FakeRuntime(listen=f"unix://{path}")
        assert str(path) in str(err.value)
        assert _identity(path) == before  # not removed, not replaced
        assert _version(first.endpoint) == "v1"  # and the first one still answers
        config = pod_config("still-mine", log_directory=str(short_dir / "logs"))
        pid = first.state.run_pod_sandbox(config)
        assert first.state.pod_sandbox_status(pid).status.metadata.name == "still-mine"


def test_a_socket_any_live_process_listens_on_is_never_touched(short_dir: Path) -> None:
    path = short_dir / "other.sock"
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(path))
    other.listen(8)
    try:
        before = _identity(path)
        with pytest.raises(EndpointError, match="already serving"):
            FakeRuntime(listen=f"unix://{path}")
        assert _identity(path) == before
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(2)
            probe.connect(str(path))  # still the other process's socket
    finally:
        other.close()


@pytest.mark.parametrize("kind", ["file", "directory", "symlink to a file", "fifo"])
def test_a_path_that_is_not_a_socket_is_never_touched(short_dir: Path, kind: str) -> None:
    path = short_dir / "not-a-socket"
    target = short_dir / "target.txt"
    if kind == "file":
        path.write_text("precious\n")
    elif kind == "directory":
        path.mkdir()
        (path / "inside").write_text("precious\n")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        target.write_text("precious\n")
        path.symlink_to(target)
    before = _identity(path)
    with pytest.raises(EndpointError, match="not a socket"):
        FakeRuntime(listen=f"unix://{path}")
    assert _identity(path) == before
    if kind == "file":
        assert path.read_text() == "precious\n"
    elif kind == "directory":
        assert (path / "inside").read_text() == "precious\n"
    elif kind == "symlink to a file":
        assert path.is_symlink() and target.read_text() == "precious\n"


def test_a_symlink_to_a_live_socket_is_refused_and_left_alone(short_dir: Path) -> None:
    path = short_dir / "link.sock"
    with FakeRuntime(listen=f"unix://{short_dir / 'real.sock'}") as real:
        path.symlink_to(short_dir / "real.sock")
        with pytest.raises(EndpointError, match="not a socket"):
            FakeRuntime(listen=f"unix://{path}")
        assert path.is_symlink()
        assert _version(real.endpoint) == "v1"


def test_a_path_too_long_for_the_kernel_is_refused_with_the_reason(short_dir: Path) -> None:
    path = short_dir / ("d" * 60) / ("s" * 60 + ".sock")
    path.parent.mkdir()
    assert len(str(path).encode()) > MAX_SOCKET_PATH
    with pytest.raises(EndpointError) as err:
        FakeRuntime(listen=f"unix://{path}")
    message = str(err.value)
    assert "107" in message and "bytes" in message
    assert "shorter path" in message or "leave listen unset" in message
    assert not path.exists() and list(path.parent.iterdir()) == []


def test_a_missing_directory_is_not_created(short_dir: Path) -> None:
    path = short_dir / "nowhere" / "rt.sock"
    with pytest.raises(EndpointError, match="does not exist"):
        FakeRuntime(listen=f"unix://{path}")
    assert not path.parent.exists()


@pytest.fixture(autouse=True)
def _no_runtime_left(request) -> Iterator[None]:
    """Every runtime a test started is stopped (its socket gone) by the end of the test."""
    before = set(serving._live)
    yield
    assert set(serving._live) <= before
