"""Server lifecycle: bind, serve on a background thread, stop, clean up.

Shared by the helloworld server and the fake CRI runtime so that both obey the
same rules: a private socket by default (0700 directory, 0600 socket), never a
fixed port, port reuse off, a stopped server replaced rather than restarted,
and every server stopped (socket removed) when the interpreter or kernel exits.
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread
import contextlib
import ipaddress
import os
import secrets
import shutil
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from .endpoints import (
    MAX_SOCKET_PATH,
    Endpoint,
    EndpointError,
    parse,
    private_socket,
    reclaim_stale_socket,
    remove_socket,
    socket_identity,
)

#: The kubelet accepts CRI messages up to 16 MiB; so do we, both ways.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

SERVER_OPTIONS: tuple[tuple[str, Any], ...] = (
    # grpc enables SO_REUSEPORT by default: two servers could then share one TCP
    # port and split its calls silently. Off, so a taken port is an error.
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)

_live: weakref.WeakSet[GrpcServer] = weakref.WeakSet()
_live_lock = threading.Lock()


def _stop_all_at_exit() -> None:
    with _live_lock:
        servers = list(_live)
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop(grace=0)


atexit.register(_stop_all_at_exit)
# Python joins the thread pools' workers (concurrent.futures registers that with
# threading's own exit hooks) before it runs atexit; a stream left open, such as a
# panel's GetContainerEvents, would keep a worker busy forever. Threading's exit hooks
# run newest first, so registered after the pool's, ours stops every server first.
concurrent.futures.thread  # noqa: B018 - imported for its exit hook, before ours
threading._register_atexit(_stop_all_at_exit)


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _outside_crilab() -> int:
    """The ``stacklevel`` of the first caller outside crilab (a warning points at its line)."""
    frame = sys._getframe(1)  # the function that will call warnings.warn
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level


def _is_loopback(host: str) -> bool:
    """Whether ``host`` reaches this machine only (``0.0.0.0`` and ``::`` reach every interface)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may well resolve to a public address


def warn_if_reachable(bound: Endpoint, what: str, risk: str) -> None:
    """Warn, pointing at the caller's line, when ``bound`` is a TCP address off loopback.

    ``what`` names the listener ("this server"), ``risk`` what a stranger could do.
    """
    if bound.is_unix or _is_loopback(bound.host):
        return
    warnings.warn(
        f"{bound.uri} is reachable from the network, and {what} has no authentication and "
        f"no TLS: anyone who can reach the port can {risk}. Listen on tcp://127.0.0.1:0 or "
        "a unix socket unless other machines must connect.",
        UserWarning,
        stacklevel=_outside_crilab(),
    )


class GrpcServer:
    """A grpc server bound to one endpoint, serving on background threads.

    ``register`` adds the servicers (``add_XServicer_to_server``). ``listen`` is
    an endpoint string; ``None`` means a private unix socket.
    """

    def __init__(
        self,
        register: Callable[[grpc.Server], None],
        listen: str | None = None,
        *,
        max_workers: int = 32,
        interceptors: Sequence[grpc.ServerInterceptor] = (),
        options: Iterable[tuple[str, Any]] = (),
        socket_name: str = "crilab.sock",
    ) -> None:
        self._private_dir: Path | None = None
        self._identity: tuple[int, int] | None = None  # of the socket we bound
        self._stopped = threading.Event()
        self._on_stop: list[Callable[[], None]] = []
        self._executor = futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="crilab-grpc"
        )
        try:
            if listen is None:
                self._private_dir, target = private_socket(socket_name)
            else:
                target = parse(listen)
            self._server = grpc.server(
                self._executor,
                interceptors=list(interceptors),
                options=[*SERVER_OPTIONS, *options],
            )
            register(self._server)
            self.endpoint: Endpoint = self._bind(target)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._remove_private_dir()
            raise
        self._server.start()
        with _live_lock:
            _live.add(self)

    def _bind(self, target: Endpoint) -> Endpoint:
        if target.is_unix:
            self._bind_unix(target)
            return target
        try:
            port = self._server.add_insecure_port(target.grpc_target)
        except RuntimeError as exc:
            port = 0
            detail = f": {exc}"
        else:
            detail = ""
        if not port:
            raise EndpointError(
                f"cannot listen on {target.uri}{detail}; the port is taken or the host is not "
                "an address of this machine. Use port 0 for a free port."
            )
        bound = Endpoint("tcp", host=target.host, port=port)
        warn_if_reachable(
            bound,
            "this server",
            "call it (for the fake runtime: create and run containers, read their logs)",
        )
        return bound

    def _bind_unix(self, target: Endpoint) -> None:
        """Bind a unix socket at a fresh name beside ``target``, then link it into place.

        grpc removes whatever socket sits at the path it bound, both before binding and
        when it stops: so it is given a name of its own, and the socket reaches
        ``target`` through ``link``, which fails rather than replace a socket that
        appeared since the stale check. Only this server's socket is ever removed.
        """
        reclaim_stale_socket(target.path)  # also refuses a directory we cannot use
        parent = os.path.dirname(target.path)
        staging = os.path.join(parent, f".crilab-{secrets.token_hex(4)}")
        if len(os.fsencode(staging)) > MAX_SOCKET_PATH:
            staging = target.path  # no room for a second name: bind in place
        try:
            self._server.add_insecure_port(f"unix:{staging}")
        except RuntimeError as exc:
            raise EndpointError(
                f"cannot listen on {target.uri}: {exc}. Check that its directory exists and "
                "that this user may create files in it, or leave listen unset for a private "
                "socket."
            ) from None
        os.chmod(staging, 0o600)  # before the socket has its public name
        if staging != target.path:
            try:
                os.link(staging, target.path)
            except FileExistsError:
                os.unlink(staging)
                raise EndpointError(
                    f"{target.path} appeared while this server was starting (another process "
                    "created it); crilab will not replace it. Choose another path, or leave "
                    "listen unset for a private one."
                ) from None
            except OSError:  # a filesystem without hard links: rename (atomic, may replace)
                os.rename(staging, target.path)
            else:
                os.unlink(staging)
        self._identity = socket_identity(target.path)

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the server has stopped (also at interpreter exit)."""
        self._on_stop.append(callback)

    @property
    def running(self) -> bool:
        return not self._stopped.is_set()

    def stop(self, grace: float | None = 0.5) -> None:
        """Stop serving, end the worker threads, remove the socket. Safe to call twice.

        The socket is removed only if it is still the one this server bound: another
        server may have taken the path over since (after someone removed ours).
        """
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._server.stop(grace).wait(timeout=5 if grace is None else grace + 5)
        self._end_workers()
        if self.endpoint.is_unix:
            remove_socket(self.endpoint.path, self._identity)
        self._remove_private_dir()
        with _live_lock:
            _live.discard(self)
        for callback in self._on_stop:
            callback()

    def _end_workers(self, within: float = 2.0) -> None:
        """Shut the pool down and wait (bounded) for its threads: none outlives the server."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + within
        me = threading.current_thread()
        for thread in list(getattr(self._executor, "_threads", ())):
            if thread is not me:
                thread.join(max(0.0, deadline - time.monotonic()))

    def _remove_private_dir(self) -> None:
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops (for ``crilab serve``)."""
        return self._server.wait_for_termination(timeout)

    def __enter__(self) -> GrpcServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "serving" if self.running else "stopped"
        return f"<{type(self).__name__} {state} on {self.endpoint.uri}>"
