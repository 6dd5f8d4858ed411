"""Endpoints: the ``unix:///path`` and ``tcp://host:port`` strings CRI tools speak.

crictl and the kubelet (on Linux) accept unix sockets only; crilab's own client
and servers also accept ``tcp://`` so a learner can compare transports.
"""

from __future__ import annotations

import contextlib
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
    "parse",
    "private_socket_dir",
    "reclaim_stale_socket",
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


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(path)
        except OSError:
            return False
        return True


def reclaim_stale_socket(path: str) -> None:
    """Remove a socket left by a crashed run, and only that.

    A path that is not a socket is never touched; a socket that answers belongs
    to a live process (maybe a real runtime) and is never taken over.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise EndpointError(f"{path} exists and is not a socket; crilab will not replace it")
    if _answers(path):
        raise EndpointError(
            f"another process is already serving on unix://{path}; stop it, or choose "
            "another path (leave listen unset for a private one)"
        )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
