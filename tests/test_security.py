"""Where the runtime listens, and what it will never touch.

A private socket (0600 in a 0700 directory), TCP on loopback unless asked
otherwise (and a warning when asked), a stale socket from a crashed run
reclaimed, but a live socket (even a busy one, or one this user may not
connect to), a file that is not a socket, or a path the kernel cannot bind
never removed, replaced or taken over; and a stopped server removes its own
socket only, and leaves no thread behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from crilab import FakeRuntime, helloworld, serving
from crilab.builders import pod_config
from crilab.endpoints import MAX_SOCKET_PATH, EndpointError
from crilab.stubs import api_pb2 as pb
from crilab.stubs import api_pb2_grpc

pytestmark = pytest.mark.timeout(60)

#: The system temp dir, before the fixture below points tempfile at pytest's own (which
#: is private to this user: another user's process could not even reach into it).
SYSTEM_TMP = tempfile.gettempdir()
ROOT = os.geteuid() == 0
NOBODY = 65534


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


def test_a_busy_live_socket_is_not_taken_for_a_stale_one(short_dir: Path) -> None:
    """A listener too busy to accept (its backlog full: EAGAIN) is alive: left alone."""
    path = short_dir / "busy.sock"
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(path))
    live.listen(0)
    waiting = []
    try:
        for _ in range(4):  # fill the backlog: the next connect gets EAGAIN
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                client.connect(str(path))
            waiting.append(client)
        before = _identity(path)
        with pytest.raises(EndpointError) as err:
            FakeRuntime(listen=f"unix://{path}")
        message = str(err.value)
        assert str(path) in message and "EAGAIN" in message and "busy" in message
        assert "leaves this one alone" in message
        assert _identity(path) == before
    finally:
        for client in waiting:
            client.close()
        live.close()


class OtherUser:
    """Runs code in a fresh interpreter as another user: ``nobody`` when the tests run as
    root (root may connect to and look into anything), else as this user, with the paths
    under test made inaccessible to their owner instead (mode 000, 555).

    The interpreter starts as this user, imports crilab, and only then becomes nobody
    (before any grpc object exists): nobody may not read this user's Python install.
    """

    def __init__(self, shared: Path) -> None:
        self.shared = shared
        self.tmp = shared / "tmp"
        self.tmp.mkdir()
        os.chmod(self.tmp, 0o1777)

    def start_runtimes(self, paths: list[Path]) -> dict[str, str]:
        """Try ``FakeRuntime(listen=unix://PATH)`` for each path: what each one did."""
        code = (
            "import json, os, tempfile, crilab, crilab.endpoints, crilab.runtime.server\n"
            "if os.geteuid() == 0:\n"
            f"    os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})\n"
            "out = {}\n"
            f"for path in {[str(p) for p in paths]!r}:\n"
            "    try:\n"
            "        crilab.FakeRuntime(listen='unix://' + path).stop()\n"
            "        out[path] = 'serving'\n"
            "    except crilab.endpoints.EndpointError as err:\n"
            "        out[path] = 'EndpointError: ' + str(err)\n"
            "    except BaseException as err:\n"
            "        out[path] = f'{type(err).__name__}: {err}'\n"
            "print(json.dumps(out))\n"
        )
        env = {**os.environ, "TMPDIR": str(self.tmp)}
        env.pop("XDG_RUNTIME_DIR", None)
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        return json.loads(done.stdout)


@pytest.fixture
def other_user() -> Iterator[OtherUser]:
    shared = Path(tempfile.mkdtemp(prefix="crilab-sec-", dir=SYSTEM_TMP))
    os.chmod(shared, 0o755)
    try:
        yield OtherUser(shared)
    finally:
        for where, dirs, _ in os.walk(shared):
            for name in dirs:
                os.chmod(os.path.join(where, name), 0o700)  # so it can be removed
        shutil.rmtree(shared, ignore_errors=True)


def _live_socket(path: Path, mode: int) -> socket.socket:
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(path))
    os.chmod(path, mode)
    live.listen(8)
    return live


def test_a_socket_this_user_may_not_connect_to_is_never_taken_over(
    other_user: OtherUser,
) -> None:
    """connect() refused with EACCES says nothing about whether the socket is live: it may
    be another user's runtime. Left alone, in an open directory and in a sticky one."""
    open_dir = other_user.shared / "open"
    sticky = other_user.shared / "sticky"
    for directory, mode in ((open_dir, 0o777), (sticky, 0o1777)):
        directory.mkdir()
        os.chmod(directory, mode)
    paths = [open_dir / "theirs.sock", sticky / "theirs.sock"]
    # 0600 and root's: nobody may not connect; mode 000: nor may a non-root owner
    listeners = [_live_socket(path, 0o600 if ROOT else 0o000) for path in paths]
    try:
        before = [_identity(path) for path in paths]
        got = other_user.start_runtimes(paths)
        for path in paths:
            message = got[str(path)]
            assert message.startswith("EndpointError: "), message
            assert str(path) in message and "EACCES" in message
            assert "leaves this one alone" in message and "leave listen unset" in message
        assert [_identity(path) for path in paths] == before  # never removed
        if ROOT:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(2)
                probe.connect(str(paths[0]))  # still the live listener's socket
    finally:
        for live in listeners:
            live.close()


def test_a_directory_this_user_may_not_use_is_refused_with_advice(
    other_user: OtherUser,
) -> None:
    """A directory this user may not look into, or may not write to: an EndpointError that
    says why and what to do, never a bare PermissionError or grpc's "Failed to bind"."""
    closed = other_user.shared / "closed"  # like another user's home: 0700 (000) and not ours
    closed.mkdir()
    readonly = other_user.shared / "readonly"
    readonly.mkdir()
    os.chmod(closed, 0o700 if ROOT else 0o000)
    os.chmod(readonly, 0o555)
    got = other_user.start_runtimes([closed / "rt.sock", readonly / "rt.sock"])
    looked = got[str(closed / "rt.sock")]
    assert looked.startswith("EndpointError: "), looked
    assert "may not look inside" in looked and str(closed) in looked
    wrote = got[str(readonly / "rt.sock")]
    assert wrote.startswith("EndpointError: "), wrote
    assert "may not write there" in wrote and str(readonly) in wrote
    for message in (looked, wrote):
        assert "permission denied" in message and "leave listen unset" in message
        assert "Failed to bind" not in message
    assert list(readonly.iterdir()) == []


def test_a_stale_socket_another_user_left_in_a_sticky_directory(
    other_user: OtherUser,
) -> None:
    """Stale (nobody listens), but another user's, in a sticky directory such as /tmp:
    this user cannot remove it, and is told so instead of getting a traceback."""
    if not ROOT:
        pytest.skip("needs a second user: run as root to try it as nobody")
    sticky = other_user.shared / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    path = sticky / "left.sock"
    crashed = _live_socket(path, 0o777)
    crashed.close()  # the file stays, nobody listens: connect is refused
    before = _identity(path)
    message = other_user.start_runtimes([path])[str(path)]
    assert message.startswith("EndpointError: "), message
    assert "stale socket" in message and "cannot remove it" in message
    assert "uid 0" in message and "choose another path" in message
    assert _identity(path) == before


def test_a_long_temp_dir_is_named_and_nothing_is_left(monkeypatch, tmp_path: Path) -> None:
    """listen unset, but TMPDIR too long for a socket path: the error names TMPDIR (not
    "leave listen unset": it was), and the private directory made for it is gone."""
    long = tmp_path / ("L" * 100)
    long.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    for start in (FakeRuntime, helloworld.serve):
        with pytest.raises(EndpointError) as err:
            start()
        message = str(err.value)
        assert "TMPDIR" in message and str(MAX_SOCKET_PATH) in message
        assert "leave listen unset" not in message
        assert list(long.iterdir()) == []  # no crilab-XXXX directory left behind


def test_stop_removes_only_its_own_socket(short_dir: Path) -> None:
    """Someone removed the runtime's socket and another server now listens at the path:
    stopping the runtime leaves that server's socket alone (grpc's own clean-up too)."""
    path = short_dir / "shared.sock"
    rt = FakeRuntime(listen=f"unix://{path}")
    assert _version(rt.endpoint) == "v1"
    os.unlink(path)
    other = _live_socket(path, 0o600)
    try:
        theirs = _identity(path)
        rt.stop()
        assert _identity(path) == theirs
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(2)
            probe.connect(str(path))
    finally:
        other.close()
    assert sorted(p.name for p in short_dir.iterdir()) == ["shared.sock"]  # nothing else


def test_a_socket_that_appears_while_starting_is_not_replaced(monkeypatch, short_dir: Path) -> None:
    """Between the stale check and the bind another process creates the path: the
    runtime refuses, the newcomer's socket stays, and no half-made socket is left."""
    path = short_dir / "race.sock"
    newcomer: list[socket.socket] = []
    checked = serving.reclaim_stale_socket

    def check_then_lose_the_race(where: str) -> None:
        checked(where)
        newcomer.append(_live_socket(Path(where), 0o600))

    monkeypatch.setattr(serving, "reclaim_stale_socket", check_then_lose_the_race)
    try:
        with pytest.raises(EndpointError, match="appeared while this server was starting"):
            FakeRuntime(listen=f"unix://{path}")
        assert newcomer and stat.S_ISSOCK(os.lstat(path).st_mode)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(2)
            probe.connect(str(path))
        assert [p.name for p in short_dir.iterdir()] == ["race.sock"]
    finally:
        for live in newcomer:
            live.close()


def test_stopped_servers_leave_no_threads() -> None:
    before = set(threading.enumerate())
    for _ in range(5):
        with FakeRuntime() as rt:
            for _ in range(8):
                assert _version(rt.endpoint) == "v1"
        with helloworld.serve() as server:
            assert helloworld.say_hello(server.endpoint.uri, "Ada")
    left = [t.name for t in set(threading.enumerate()) - before if t.name.startswith("crilab")]
    assert left == []


@pytest.fixture(autouse=True)
def _no_runtime_left(request) -> Iterator[None]:
    """Every runtime a test started is stopped (its socket gone) by the end of the test."""
    before = set(serving._live)
    yield
    assert set(serving._live) <= before
