"""``spawn_runtime()``: the fake CRI runtime in a separate process, to compare with in-process.

``crilab.FakeRuntime()`` serves from threads of this process, sharing its interpreter (and GIL)
with the client. ``spawn_runtime()`` runs the same server, ``crilab serve``, in a new Python
process, started with exec (never a fork of this kernel: grpc and fork() do not mix)::

    srv = crilab.spawn_runtime(images=["busybox"])
    client = crilab.connect(srv.endpoint)     # the calls now cross a process boundary
    srv.stop()                                # or: with crilab.spawn_runtime() as srv: ...

It stops, and its socket goes, on ``.stop()``, at the end of a ``with`` block, when the last
reference to it goes (re-running ``srv = crilab.spawn_runtime()`` stops the previous one), and
when the interpreter exits. A reference kept elsewhere keeps it running until then: IPython
keeps a cell's displayed result in ``Out[...]``, so end such a cell with ``;`` or call
``.stop()``. If this process is killed outright, the server notices within a second and stops
itself. Its own session keeps a kernel interrupt (SIGINT to the kernel's group) from stopping it.
Each one is a whole Python process (about 50 MB of memory): on a shared host, stop it when the
comparison is done.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from .endpoints import EndpointError, crictl_command, parse, reclaim_stale_socket

__all__ = ["SpawnError", "SpawnedRuntime", "spawn_runtime"]

#: The spawning process's pid, for the child's watchdog (a fresh process reads it once).
_PARENT_ENV = "CRILAB_SPAWNED_PARENT"


class SpawnError(RuntimeError):
    """``crilab serve`` could not start; the message carries what it said."""


class SpawnedRuntime:
    """A ``crilab serve`` process: ``.endpoint``, ``.pid``, ``.stop()``; a context manager."""

    def __init__(
        self, process: subprocess.Popen[bytes], endpoint: str, *, private: bool, files: list[Any]
    ) -> None:
        self._process = process
        self.endpoint = endpoint
        self.argv: list[str] = list(process.args)  # type: ignore[arg-type]
        target = parse(endpoint)
        socket_path = target.path if target.is_unix else ""
        # Called once: by stop(), when this object goes, or at interpreter exit.
        self._finalizer = weakref.finalize(
            self, _terminate, process, socket_path, private, files, 5.0
        )

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status once stopped (0: it stopped cleanly on SIGTERM), else None."""
        return self._process.poll()

    def crictl_command(self) -> str:
        """A crictl command line pointed at this runtime (unix sockets only)."""
        return crictl_command(self.endpoint, "spawn with listen=None for crictl")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; the socket is removed. Idempotent."""
        pending = self._finalizer.detach()
        if pending is not None:
            _, func, args, _ = pending
            func(*args[:-1], timeout)

    def __enter__(self) -> SpawnedRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        code = self.returncode
        state = "serving" if code is None else f"stopped (exit code {code})"
        return f"<SpawnedRuntime pid {self.pid} {state} on {self.endpoint}>"


def spawn_runtime(
    images: Iterable[str] = (), listen: str | None = None, timeout: float = 10.0
) -> SpawnedRuntime:
    """Start ``crilab serve`` in a new process; return once its ``Version`` answers.

    ``images``: references present from the start (``--preload``). ``listen``: as for
    ``FakeRuntime`` (``None``: a private unix socket; ``"tcp://127.0.0.1:0"``: a free
    port). ``timeout`` bounds the whole start. Raises ``EndpointError`` for an endpoint
    that cannot be read, ``SpawnError`` if the server exits first (its message says why),
    ``TimeoutError`` if it does not answer in time; no process is left behind.
    """
    if listen is not None:
        parse(listen)  # a malformed endpoint is the caller's mistake: say so here, at once
    argv = [sys.executable, "-m", "crilab.spawned", "--quiet"]
    if listen is not None:
        argv += ["--listen", listen]
    for ref in images:
        argv += ["--preload", ref]
    env = dict(os.environ)
    env[_PARENT_ENV] = str(os.getpid())
    package_root = str(Path(__file__).resolve().parent.parent)  # so the child finds crilab
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    # Not a pipe that nobody reads; the file lives as long as the process (_terminate closes it).
    stderr = tempfile.TemporaryFile()  # noqa: SIM115
    deadline = time.monotonic() + timeout
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            start_new_session=True,  # a kernel interrupt (SIGINT to its group) is not for it
        )
    except BaseException:
        stderr.close()
        raise
    assert process.stdout is not None
    files: list[Any] = [process.stdout, stderr]
    endpoint = ""
    try:
        endpoint = _read_endpoint(process, stderr, deadline, timeout)
        _wait_for_version(endpoint, deadline)
    except BaseException:
        socket_path = ""
        with contextlib.suppress(EndpointError):
            target = parse(endpoint) if endpoint else None
            socket_path = target.path if target and target.is_unix else ""
        _terminate(process, socket_path, listen is None, files, 5.0)
        raise
    return SpawnedRuntime(process, endpoint, private=listen is None, files=files)


def _read_endpoint(
    process: subprocess.Popen[bytes], stderr: IO[bytes], deadline: float, timeout: float
) -> str:
    """The first stdout line of ``crilab serve``: the endpoint, printed once it listens."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(
                f"crilab serve printed no endpoint within {timeout:g}s"
                f"{_said(stderr)} (a slow machine? pass a larger timeout=)"
            )
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:  # end of file: the process exited before serving
            code = process.wait()
            raise SpawnError(f"crilab serve exited with code {code} before serving{_said(stderr)}")
        data += chunk
    return data.split(b"\n", 1)[0].decode().strip()


def _said(stderr: IO[bytes]) -> str:
    """What the child wrote to stderr: its own ``crilab serve:`` lines, if any (not grpc's)."""
    stderr.seek(0)
    lines = stderr.read().decode(errors="replace").strip().splitlines()
    own = [line for line in lines if line.startswith("crilab serve:")]
    text = "\n".join(own or lines[-20:])
    return f": {text}" if text else ""


def _wait_for_version(endpoint: str, deadline: float) -> None:
    from .client import connect

    connect(endpoint, timeout=max(deadline - time.monotonic(), 0.5)).close()


def _terminate(
    process: subprocess.Popen[bytes],
    socket_path: str,
    private: bool,
    files: list[Any],
    grace: float,
) -> None:
    """Stop the process (SIGTERM, then SIGKILL) and leave nothing of it behind."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()  # crilab serve stops and removes its socket
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if socket_path and process.returncode != 0:  # killed or crashed: its socket may be left
        with contextlib.suppress(EndpointError, OSError):
            reclaim_stale_socket(socket_path)  # only a socket no one answers on
        if private:  # the child's private directory, now empty
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(socket_path))
    for handle in files:
        with contextlib.suppress(OSError):
            handle.close()


# -- the child -----------------------------------------------------------------------


def _watch_parent(parent: int) -> None:
    """Stop this server (as SIGTERM would) once the process that spawned it is gone."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)


def _child(argv: list[str]) -> int:
    parent = int(os.environ.pop(_PARENT_ENV, "0") or 0)
    if parent:
        threading.Thread(
            target=_watch_parent, args=(parent,), daemon=True, name="crilab-watch-parent"
        ).start()
    from .cli import main

    return main(["serve", *argv])


if __name__ == "__main__":
    raise SystemExit(_child(sys.argv[1:]))
