"""Endpoints: the ``unix:///path`` and ``tcp://host:port`` strings CRI tools speak.

crictl and the kubelet (on Linux) accept unix sockets only; crilab's own client
and servers also accept ``tcp://`` so a learner can compare transports.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: sockaddr_un.sun_path is 108 bytes including the final NUL.
MAX_SOCKET_PATH = 107

__all__ = [
    "MAX_SOCKET_PATH",
    "Endpoint",
    "EndpointError",
    "check_can_bind",
    "parse",
    "private_socket",
    "private_socket_dir",
    "reclaim_stale_socket",
    "remove_socket",
    "socket_identity",
]


class EndpointError(ValueError):
    """An endpoint string or socket path that cannot be used, with what to do instead."""


@dataclass(frozen=True)
class Endpoint:
    """A parsed endpoint: either a unix socket path or a TCP host and port."""

    scheme: str  # "unix" or "tcp"
    path: str = ""
    host: str = ""
    port: int = 0

    @property
    def is_unix(self) -> bool:
        return self.scheme == "unix"

    @property
    def uri(self) -> str:
        """The form crictl and ``CONTAINER_RUNTIME_ENDPOINT`` use."""
        if self.is_unix:
            return f"unix://{self.path}"
        return f"tcp://{_join_host(self.host)}:{self.port}"

    @property
    def grpc_target(self) -> str:
        """The form ``grpc.insecure_channel`` / ``add_insecure_port`` take."""
        if self.is_unix:
            return f"unix:{self.path}"
        return f"{_join_host(self.host)}:{self.port}"

    def __str__(self) -> str:
        return self.uri


def crictl_command(endpoint: str | Endpoint, tcp_hint: str) -> str:
    """A crictl command line pointed at ``endpoint``; crictl (like the kubelet) accepts unix
    sockets only, so for TCP a comment saying ``tcp_hint`` instead."""
    target = endpoint if isinstance(endpoint, Endpoint) else parse(endpoint)
    if not target.is_unix:
        return f"# crictl accepts unix sockets only; {tcp_hint}"
    return f"crictl --runtime-endpoint {target.uri} --image-endpoint {target.uri}"


def _join_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def check_socket_path(path: str) -> str:
    """Refuse a unix socket path the kernel cannot bind (too long or not absolute)."""
    if not os.path.isabs(path):
        raise EndpointError(
            f"unix socket path {path!r} is relative; use an absolute path such as "
            "unix:///tmp/crilab.sock"
        )
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH:
        raise EndpointError(
            f"unix socket path is {size} bytes, but Linux allows at most {MAX_SOCKET_PATH}: "
            f"{path!r}. Choose a shorter path (for example unix:///tmp/crilab.sock) or "
            "leave listen unset for a private short one."
        )
    return path


def parse(endpoint: str) -> Endpoint:
    """Parse ``unix:///abs``, ``unix:/abs``, ``/abs`` or ``tcp://host:port``.

    >>> parse("unix:///run/containerd/containerd.sock").path
    '/run/containerd/containerd.sock'
    >>> parse("tcp://127.0.0.1:0").port
    0
    """
    if not isinstance(endpoint, str) or not endpoint.strip():
        raise EndpointError(
            "empty endpoint; give one such as unix:///run/containerd/containerd.sock "
            "or tcp://127.0.0.1:50051"
        )
    text = endpoint.strip()
    if text.startswith("unix://"):
        return Endpoint("unix", path=check_socket_path(text[len("unix://") :]))
    if text.startswith("unix:"):
        return Endpoint("unix", path=check_socket_path(text[len("unix:") :]))
    if text.startswith("/"):
        return Endpoint("unix", path=check_socket_path(text))
    if text.startswith("tcp://"):
        rest = text[len("tcp://") :]
        host, sep, port = rest.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise EndpointError(
                f"cannot read host and port from {endpoint!r}; write tcp://HOST:PORT, "
                "for example tcp://127.0.0.1:50051 (port 0 picks a free port)"
            )
        return Endpoint("tcp", host=host, port=int(port))
    scheme = text.split("://", 1)[0] if "://" in text else text
    raise EndpointError(
        f"unsupported endpoint {endpoint!r} ({scheme!r}): use unix:///path/to.sock (what "
        "crictl and the kubelet speak) or tcp://host:port (crilab's own client only)"
    )


def _runtime_base() -> Path | None:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK):
        base = Path(xdg) / "crilab"
        base.mkdir(mode=0o700, exist_ok=True)
        if base.stat().st_uid == os.getuid():
            os.chmod(base, 0o700)
            return base
    return None


def private_socket_dir() -> Path:
    """A fresh 0700 directory for one server's socket.

    Under ``$XDG_RUNTIME_DIR/crilab/`` when that is set (per-user, cleaned at
    logout), else under the system temp dir. A fresh directory per server means
    two kernels of one user never share a path.
    """
    base = _runtime_base()
    path = Path(
        tempfile.mkdtemp(prefix="rt-", dir=base) if base else tempfile.mkdtemp(prefix="crilab-")
    )
    os.chmod(path, 0o700)
    return path


def private_socket(name: str) -> tuple[Path, Endpoint]:
    """A fresh private directory and the endpoint of socket ``name`` inside it.

    When the directory's path leaves no room for the socket (a long ``TMPDIR``),
    the directory is removed again and the error says which variable to shorten:
    the caller asked for nothing, so "choose a shorter path" would not help.
    """
    directory = private_socket_dir()
    path = str(directory / name)
    size = len(os.fsencode(path))
    if size <= MAX_SOCKET_PATH:
        return directory, Endpoint("unix", path=path)
    with contextlib.suppress(OSError):
        directory.rmdir()
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    where = "XDG_RUNTIME_DIR" if xdg and path.startswith(xdg) else "TMPDIR"
    raise EndpointError(
        f"the private socket would be {path!r}, {size} bytes, but Linux allows at most "
        f"{MAX_SOCKET_PATH}: the temp directory {str(directory.parent)!r} is too long. "
        f"Set {where} to a short directory (for example /tmp) before starting, or give "
        "listen='unix:///tmp/crilab.sock' (any short absolute path)."
    )


def socket_identity(path: str) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of the socket at ``path``, or ``None`` if there is none.

    Kept after binding, so that only the socket this process made is ever removed:
    another server may have taken the path over since.
    """
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISSOCK(info.st_mode):
        return None
    return info.st_dev, info.st_ino


def remove_socket(path: str, identity: tuple[int, int] | None) -> bool:
    """Unlink ``path`` if it is still the socket ``identity`` names; True if removed."""
    if identity is None or socket_identity(path) != identity:
        return False  # gone already, or someone else's now: not ours to remove
    try:
        os.unlink(path)
    except OSError:
        return False
    return True


def _errno_name(err: OSError) -> str:
    code = err.errno
    return errno.errorcode.get(code, str(code)) if code is not None else type(err).__name__


def _probe(path: str) -> OSError | None:
    """Connect to ``path``: ``None`` if something accepted, else the error."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(path)
        except OSError as exc:
            return exc
        return None


#: connect() errors that prove nobody listens: the socket file is a crashed run's leftover.
_STALE = (errno.ECONNREFUSED, errno.ENOENT)


def check_can_bind(path: str) -> None:
    """Refuse, with what to do, a socket path whose directory this user cannot use.

    Checked before binding: a refused ``bind`` reaches Python only as grpc's
    "Failed to bind to address", which says neither why nor what to do.
    """
    parent = os.path.dirname(path) or "/"
    try:
        is_dir = os.path.isdir(parent)
        os.lstat(path)
    except FileNotFoundError:
        pass
    except PermissionError:
        raise EndpointError(
            f"cannot use unix://{path}: this user (uid {os.getuid()}) may not look inside "
            f"{parent} (permission denied). Choose a directory of your own, such as a "
            "new one under /tmp, or leave listen unset for a private socket."
        ) from None
    if not is_dir:
        raise EndpointError(f"directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EndpointError(
            f"cannot create a socket in {parent}: this user (uid {os.getuid()}) may not "
            "write there (permission denied). Choose a directory you can write to, such "
            "as a new one under /tmp, or leave listen unset for a private socket."
        )


def reclaim_stale_socket(path: str) -> None:
    """Remove a socket left by a crashed run, and only that.

    A path that is not a socket is never touched. Only a connect refused
    (``ECONNREFUSED``) proves a socket stale: one that answers, one whose
    listener is too busy to accept (``EAGAIN``), or one this user may not
    connect to (``EACCES``: maybe another user's live runtime) is left alone.
    """
    check_can_bind(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise EndpointError(f"{path} exists and is not a socket; crilab will not replace it")
    failure = _probe(path)
    if failure is None:
        raise EndpointError(
            f"another process is already serving on unix://{path}; stop it, or choose "
            "another path (leave listen unset for a private one)"
        )
    if failure.errno not in _STALE:
        name = _errno_name(failure)
        if failure.errno in (errno.EACCES, errno.EPERM):
            why = (
                f"this user (uid {os.getuid()}) may not connect to it ({name}: the socket "
                f"belongs to uid {info.st_uid} and its mode is {stat.S_IMODE(info.st_mode):o})"
            )
        elif failure.errno == errno.EAGAIN or isinstance(failure, TimeoutError):
            why = f"a process listens on it but is too busy to accept a connection ({name})"
        else:
            why = f"connecting to it failed with {name} ({failure.strerror or failure})"
        raise EndpointError(
            f"unix://{path} may belong to a live server: {why}. crilab only replaces a "
            "socket nobody listens on (connect refused), so it leaves this one alone. "
            "Choose another path, or leave listen unset for a private one."
        )
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise EndpointError(
            f"unix://{path} is a stale socket (nobody listens on it), but this user (uid "
            f"{os.getuid()}) cannot remove it ({_errno_name(exc)}: it belongs to uid "
            f"{info.st_uid}). Remove it as that user, or choose another path (leave listen "
            "unset for a private one)."
        ) from None
