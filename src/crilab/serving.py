"""Server lifecycle: bind, serve on a background thread, stop, clean up.

Shared by the helloworld server and the fake CRI runtime so that both obey the
same rules: a private socket by default (0700 directory, 0600 socket), never a
fixed port, port reuse off, a stopped server replaced rather than restarted,
and every server stopped (socket removed) when the interpreter or kernel exits.

grpc serves each call on one thread of a fixed pool, for as long as the call
lasts: an open stream or a blocking wait holds its thread. So the calls that
can last (streams, and methods marked with ``long_call``) may take at most
three quarters of the pool; past that they are refused with RESOURCE_EXHAUSTED
and advice, and the rest of the pool always serves the short calls (Version,
health checks). grpc's own ``maximum_concurrent_rpcs`` bounds the queue, so a
call is refused at once rather than left waiting for a thread until its deadline.
"""

from __future__ import annotations

import atexit
import collections
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
from typing import Any, TypeVar

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
#: What grpc lets through to the fake runtime's handlers (``FakeRuntime`` passes it; every
#: other server keeps 16 MiB): above the limit, so that the runtime sees an oversize
#: request and refuses it itself (RESOURCE_EXHAUSTED with advice, recorded in the history;
#: see ``runtime/instrument.py``). grpc's own refusal names no reason, and the call would
#: never reach the history. Past this, grpc refuses.
MAX_RECEIVE_BYTES = 64 * 1024 * 1024

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
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR + os.sep):
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


# -- long calls ----------------------------------------------------------------------

_LONG = "__crilab_long_call__"
_F = TypeVar("_F", bound=Callable[..., Any])


def long_call(advice: str) -> Callable[[_F], _F]:
    """Mark an RPC method that may hold its worker thread for long (it waits, or streams).

    Streaming methods count as long without the mark; ``advice`` tells a learner how to
    end such calls, and is quoted when there are too many.
    """

    def mark(method: _F) -> _F:
        setattr(method, _LONG, advice)
        return method

    return mark


def long_call_limit(max_workers: int) -> int:
    """Long calls allowed at once: a quarter of the workers (at least one) stay for short ones."""
    return max(1, max_workers - max(1, max_workers // 4))


_STREAM_ADVICE = "end the streams you no longer read (cancel the call, or close its channel)"


class _WorkerGate(grpc.ServerInterceptor):
    """Admits long calls while fewer than ``limit`` run; refuses the next with advice.

    Innermost of the interceptors, so it sees the servicer's own handlers (and their
    ``long_call`` marks), and an outer interceptor records the refusal like any status.
    Short calls pass untouched: their handler is the servicer's own, cached per method.
    """

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self.limit = long_call_limit(max_workers)
        self._open: collections.Counter[str] = collections.Counter()
        self._running = 0
        self._advice: dict[str, str] = {}
        self._lock = threading.Lock()
        self._handlers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    @property
    def running(self) -> int:
        """How many long calls hold a worker now."""
        with self._lock:
            return self._running

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        full = handler_call_details.method
        kept = self._handlers.get(full)
        if kept is not None and kept[0] is handler:
            return kept[1]
        gated = self._gated(full, handler)
        self._handlers[full] = (handler, gated)
        return gated

    def _gated(self, full: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        method = full.rpartition("/")[2] or full
        streams = handler.request_streaming or handler.response_streaming
        behavior = (
            handler.unary_unary
            or handler.unary_stream
            or handler.stream_unary
            or handler.stream_stream
        )
        advice = getattr(behavior, _LONG, None)
        if advice is None and not streams:
            return handler  # a short call: nothing added to its path
        self._advice[method] = advice or _STREAM_ADVICE
        kinds = (
            ("unary_unary", grpc.unary_unary_rpc_method_handler),
            ("unary_stream", grpc.unary_stream_rpc_method_handler),
            ("stream_unary", grpc.stream_unary_rpc_method_handler),
            ("stream_stream", grpc.stream_stream_rpc_method_handler),
        )
        for attr, make in kinds:
            inner = getattr(handler, attr)
            if inner is not None:
                wrap = self._streaming if handler.response_streaming else self._unary
                return make(
                    wrap(method, inner),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler

    def _unary(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        def call(request, context):
            self._admit(method, context)
            try:
                return behavior(request, context)
            finally:
                self._release(method)

        return call

    def _streaming(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        def call(request, context):
            self._admit(method, context)
            try:
                yield from behavior(request, context)
            finally:
                self._release(method)

        return call

    def _admit(self, method: str, context: grpc.ServicerContext) -> None:
        with self._lock:
            if self._running < self.limit:
                self._running += 1
                self._open[method] += 1
                return
            open_now = {name: n for name, n in self._open.items() if n}
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._refusal(method, open_now))

    def _release(self, method: str) -> None:
        with self._lock:
            self._running -= 1
            self._open[method] -= 1

    def _refusal(self, method: str, open_now: dict[str, int]) -> str:
        ranked = sorted(open_now.items(), key=lambda item: -item[1])
        listed = ", ".join(f"{n} {name}" for name, n in ranked)
        advice = "; ".join(dict.fromkeys(self._advice.get(name, "") for name, _ in ranked[:3]))
        reserve = self.max_workers - self.limit
        return (
            f"{method} refused: {sum(open_now.values())} long calls are open on this server "
            f"({listed}), its limit. Each holds one of its {self.max_workers} worker threads "
            f"until it ends, and {reserve} threads stay free for short calls such as Version. "
            f"Close some first: {advice}. (A server that must hold more gets more threads: "
            "max_workers=...)"
        )


class GrpcServer:
    """A grpc server bound to one endpoint, serving on background threads.

    ``register`` adds the servicers (``add_XServicer_to_server``). ``listen`` is
    an endpoint string; ``None`` means a private unix socket. ``max_workers``
    threads serve the calls; at most ``long_call_limit(max_workers)`` of them
    serve long calls (streams and ``long_call`` methods) at once.
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
        self.gate = _WorkerGate(max_workers)
        try:
            if listen is None:
                self._private_dir, target = private_socket(socket_name)
            else:
                target = parse(listen)
            self._server = grpc.server(
                self._executor,
                interceptors=[*interceptors, self.gate],
                # one value per option, ``options`` winning: never a duplicate key for grpc
                options=list({**dict(SERVER_OPTIONS), **dict(options)}.items()),
                # calls past this are refused at once (RESOURCE_EXHAUSTED) instead of
                # waiting, unseen, for a thread: the queue is at most one pool deep
                maximum_concurrent_rpcs=2 * max_workers,
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
