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
import shutil
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from .endpoints import Endpoint, EndpointError, parse, private_socket_dir, reclaim_stale_socket

#: The kubelet accepts CRI messages up to 16 MiB; so do we, both ways.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: What grpc lets through to a handler: above the 16 MiB limit, so that the fake runtime
#: sees an oversize request and refuses it itself (RESOURCE_EXHAUSTED with advice, recorded
#: in the history; see ``runtime/instrument.py``). grpc's own refusal names no limit's
#: reason, and the call would never reach the history. Past this, grpc refuses.
MAX_RECEIVE_BYTES = 64 * 1024 * 1024

SERVER_OPTIONS: tuple[tuple[str, Any], ...] = (
    # grpc enables SO_REUSEPORT by default: two servers could then share one TCP
    # port and split its calls silently. Off, so a taken port is an error.
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
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


def _is_loopback(host: str) -> bool:
    """Whether ``host`` reaches this machine only (``0.0.0.0`` and ``::`` reach every interface)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may well resolve to a public address


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
        self._stopped = threading.Event()
        self._on_stop: list[Callable[[], None]] = []
        if listen is None:
            self._private_dir = private_socket_dir()
            target = parse(f"unix://{self._private_dir / socket_name}")
        else:
            target = parse(listen)
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="crilab-grpc"),
            interceptors=list(interceptors),
            options=[*SERVER_OPTIONS, *options],
        )
        register(self._server)
        try:
            self.endpoint: Endpoint = self._bind(target)
        except BaseException:
            self._remove_private_dir()
            raise
        self._server.start()
        with _live_lock:
            _live.add(self)

    def _bind(self, target: Endpoint) -> Endpoint:
        if target.is_unix:
            parent = Path(target.path).parent
            if not parent.is_dir():
                raise EndpointError(f"directory {parent} does not exist; create it first")
            reclaim_stale_socket(target.path)
            try:
                self._server.add_insecure_port(target.grpc_target)
            except RuntimeError as exc:
                raise EndpointError(f"cannot listen on {target.uri}: {exc}") from None
            os.chmod(target.path, 0o600)
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
        if not _is_loopback(target.host):
            warnings.warn(
                f"{bound.uri} is reachable from the network, and this server has no "
                "authentication and no TLS: anyone who can reach the port can call it (for "
                "the fake runtime: create and run containers, read their logs). Listen on "
                "tcp://127.0.0.1:0 or a unix socket unless other machines must connect.",
                UserWarning,
                stacklevel=4,  # _bind, GrpcServer(), FakeRuntime(): point at the caller's line
            )
        return bound

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the server has stopped (also at interpreter exit)."""
        self._on_stop.append(callback)

    @property
    def running(self) -> bool:
        return not self._stopped.is_set()

    def stop(self, grace: float | None = 0.5) -> None:
        """Stop serving and remove the socket. Safe to call twice."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._server.stop(grace).wait(timeout=5 if grace is None else grace + 5)
        if self.endpoint.is_unix:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.endpoint.path)
        self._remove_private_dir()
        with _live_lock:
            _live.discard(self)
        for callback in self._on_stop:
            callback()

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
