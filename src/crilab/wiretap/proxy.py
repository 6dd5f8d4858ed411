"""The byte forwarder: a transparent proxy between a gRPC client and a server.

``wiretap(rt.endpoint)`` listens on a private unix socket of its own and, for
every connection a client makes to it, opens one to the upstream endpoint and
copies bytes both ways, untouched: one thread per direction. Each chunk it
reads is queued for decoding (by reference: ``bytes`` never change) *before*
it is forwarded, so by the time the client sees an answer the tap holds it.

Decoding is deferred: it runs when someone reads ``Tap.frames`` / ``Tap.calls``
(on the reader's thread), or on a background thread once the traffic pauses
or the backlog grows. Forwarding never waits for it, and a decoding error is
recorded, never raised into the forwarding path.

The backlog is bounded (``MAX_BACKLOG_BYTES``): when decoding falls that far
behind the traffic, the direction whose bytes would pass the bound is no longer
decoded (HPACK cannot resume after a gap), with a note saying so; its bytes are
forwarded as ever. A new connection is decoded again.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import itertools
import os
import shutil
import socket
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from ..endpoints import (
    Endpoint,
    EndpointError,
    crictl_command,
    parse,
    private_socket,
    reclaim_stale_socket,
    remove_socket,
    socket_identity,
)
from ..serving import warn_if_reachable
from .decode import CLIENT_TO_SERVER, SERVER_TO_CLIENT, CallRecord, Capture, FrameRecord

__all__ = ["Tap", "wiretap"]

_CHUNK = 256 * 1024
#: Decode in the background once traffic has paused this long...
IDLE_SECONDS = 0.05
#: ...or once this many bytes wait.
BACKLOG_BYTES = 4 * 1024 * 1024
#: Bytes waiting for the decoder at most: past it, a direction stops being decoded.
MAX_BACKLOG_BYTES = 64 * 1024 * 1024
#: The decoder gives back what it has decoded of the backlog's bytes this often.
_ACCOUNT_BYTES = 1024 * 1024
_CONNECT_TIMEOUT = 5.0

_live: weakref.WeakSet[Tap] = weakref.WeakSet()
_live_lock = threading.Lock()


def _stop_all_at_exit() -> None:
    with _live_lock:
        taps = list(_live)
    for tap in taps:
        with contextlib.suppress(Exception):
            tap.stop()


atexit.register(_stop_all_at_exit)


def _connect(target: Endpoint) -> socket.socket:
    if target.is_unix:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: Any = target.path
    else:
        family = socket.AF_INET6 if ":" in target.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        address = (target.host, target.port)
    try:
        sock.settimeout(_CONNECT_TIMEOUT)
        sock.connect(address)
        sock.settimeout(None)
        if not target.is_unix:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


class _Connection:
    """One client connection and its upstream twin; closed when both pumps end."""

    def __init__(self, ident: int, client: socket.socket) -> None:
        self.ident = ident
        self.client = client
        self.upstream: socket.socket | None = None
        self._running = 2
        self._lock = threading.Lock()

    def shutdown(self) -> None:
        """Wake both pumps (their recv returns); they close the sockets themselves."""
        for sock in (self.client, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def pump_done(self) -> bool:
        with self._lock:
            self._running -= 1
            last = self._running == 0
        if last:
            for sock in (self.client, self.upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
        return last


class Tap:
    """A running wiretap: a proxy endpoint plus what it has captured.

    Point any gRPC client (crilab.connect, crictl, the helloworld client) at
    ``tap.endpoint`` instead of the server's endpoint; calls work the same,
    and ``tap.frames`` / ``tap.calls`` show what went over the wire.
    """

    def __init__(
        self, upstream_endpoint: str, *, listen: str | None = None, capacity: int = 10_000
    ) -> None:
        self.upstream: Endpoint = parse(upstream_endpoint)
        self.capture = Capture(capacity)
        self._stopped = threading.Event()
        self._private_dir: Path | None = None
        self._identity: tuple[int, int] | None = None  # of the socket we bound
        self._connections: dict[int, _Connection] = {}
        self._conn_lock = threading.Lock()
        self._ids = itertools.count(1)
        # decoder hand-off: chunks not yet decoded, in arrival order
        self._backlog: collections.deque[tuple[int, str, Any, float]] = collections.deque()
        self._backlog_lock = threading.Lock()
        self._backlog_bytes = 0  # submitted and not yet decoded
        self._undecoded: set[tuple[int, str]] = set()  # directions past the backlog bound
        self._submitted = 0  # chunks handed over
        self._decoded = 0  # chunks decoded (under _decode_lock)
        self._last_submit = 0.0
        self._decode_lock = threading.RLock()
        self._wake = threading.Event()
        try:
            if listen is None:
                self._private_dir, target = private_socket("tap.sock")
            else:
                target = parse(listen)
            self._listener, self._endpoint = self._bind(target)
        except BaseException:
            self._remove_private_dir()
            raise
        self._decoder = threading.Thread(
            target=self._decode_loop, name="crilab-wiretap-decode", daemon=True
        )
        self._decoder.start()
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="crilab-wiretap-accept", daemon=True
        )
        self._acceptor.start()
        with _live_lock:
            _live.add(self)

    # -- listening -------------------------------------------------------------

    def _bind(self, target: Endpoint) -> tuple[socket.socket, Endpoint]:
        if target.is_unix:
            reclaim_stale_socket(target.path)  # also refuses a directory we cannot use
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(target.path)  # fails, never replaces, if the path exists
                self._identity = socket_identity(target.path)
                os.chmod(target.path, 0o600)
                sock.listen(64)
            except OSError as exc:
                sock.close()
                remove_socket(target.path, self._identity)
                raise EndpointError(f"cannot listen on {target.uri}: {exc}") from None
            return sock, target
        family = socket.AF_INET6 if ":" in target.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.bind((target.host, target.port))
            sock.listen(64)
        except OSError as exc:
            sock.close()
            raise EndpointError(
                f"cannot listen on {target.uri}: {exc}. Use port 0 for a free port."
            ) from None
        bound = Endpoint("tcp", host=target.host, port=sock.getsockname()[1])
        warn_if_reachable(
            bound,
            "this wiretap",
            f"call the server behind it ({self.upstream.uri}) through it",
        )
        return sock, bound

    @property
    def endpoint(self) -> str:
        """Where clients connect instead of the upstream: ``unix:///...`` (or ``tcp://``)."""
        return self._endpoint.uri

    @property
    def running(self) -> bool:
        return not self._stopped.is_set()

    def crictl_command(self) -> str:
        """A crictl command line pointed at the tap (unix sockets only)."""
        return crictl_command(self._endpoint, "start the tap with listen=None")

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                if self._stopped.is_set():
                    break
                time.sleep(0.01)  # e.g. EMFILE: do not spin
                continue
            if self._stopped.is_set():
                client.close()
                break
            conn = _Connection(next(self._ids), client)
            with self._conn_lock:
                self._connections[conn.ident] = conn
            threading.Thread(
                target=self._serve,
                args=(conn,),
                name=f"crilab-wiretap-{conn.ident}-c2s",
                daemon=True,
            ).start()
        with contextlib.suppress(OSError):
            self._listener.close()

    def _serve(self, conn: _Connection) -> None:
        """Dial the upstream, then pump client→server here and server→client on a new thread."""
        try:
            conn.upstream = _connect(self.upstream)
        except OSError as exc:
            # The client sees its connection closed (UNAVAILABLE); the capture says why.
            self._submit(
                conn.ident,
                "note",
                f"could not reach the upstream {self.upstream.uri}: {exc}",
                time.time(),
            )
            conn.client.close()
            self._forget(conn)
            return
        if self._stopped.is_set():
            conn.shutdown()
        threading.Thread(
            target=self._pump,
            args=(conn, conn.upstream, conn.client, SERVER_TO_CLIENT),
            name=f"crilab-wiretap-{conn.ident}-s2c",
            daemon=True,
        ).start()
        self._pump(conn, conn.client, conn.upstream, CLIENT_TO_SERVER)

    def _pump(
        self, conn: _Connection, src: socket.socket, dst: socket.socket, direction: str
    ) -> None:
        failed = False
        try:
            while True:
                data = src.recv(_CHUNK)
                if not data:
                    break
                # Queue first, then forward: the client never sees bytes the tap has not.
                self._submit(conn.ident, direction, data, time.time())
                dst.sendall(data)
        except OSError:
            failed = True
        finally:
            if failed:
                conn.shutdown()  # one side broke: end the other direction too
            else:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)  # pass the half-close on
            if conn.pump_done():
                self._submit(conn.ident, "closed", b"", time.time())
                self._forget(conn)

    def _forget(self, conn: _Connection) -> None:
        with self._conn_lock:
            self._connections.pop(conn.ident, None)

    # -- decoding (on its own thread) --------------------------------------------

    def _submit(self, ident: int, what: str, data: Any, when: float) -> None:
        """Hand a chunk over for decoding: a deque append, nothing more, on the hot path.

        Past ``MAX_BACKLOG_BYTES`` waiting, this chunk's direction is given up: a note
        goes in its place, and its later chunks are not queued (they are still sent).
        """
        size = len(data) if isinstance(data, bytes) else 0
        with self._backlog_lock:
            if size:
                key = (ident, what)
                if key in self._undecoded:
                    return
                if self._backlog_bytes + size > MAX_BACKLOG_BYTES:
                    self._undecoded.add(key)
                    what, data, size = "gap", (what, self._gap_note(what)), 0
            elif what == "closed":
                self._undecoded.discard((ident, CLIENT_TO_SERVER))
                self._undecoded.discard((ident, SERVER_TO_CLIENT))
            if not self._backlog:
                self._wake.set()  # start the decoder's idle timer
            self._backlog.append((ident, what, data, when))
            self._backlog_bytes += size
            self._submitted += 1
            self._last_submit = time.monotonic()
            if self._backlog_bytes >= BACKLOG_BYTES:
                self._wake.set()

    def _gap_note(self, direction: str) -> str:
        return (
            f"the tap stopped decoding {direction} of this connection: decoding fell "
            f"{self._backlog_bytes} bytes behind the traffic (its bound is "
            f"{MAX_BACKLOG_BYTES}). Its bytes are still forwarded, untouched, but no longer "
            "shown: HPACK header compression cannot resume after a gap. A new connection "
            "is decoded again."
        )

    def _decode_backlog(self, target: int | None = None, deadline: float | None = None) -> bool:
        """Decode queued chunks in order, on the calling thread, up to ``target`` (or all).

        False if ``deadline`` (``time.monotonic()``) came first: what is left waits,
        in order, for the next decoder.
        """
        with self._decode_lock:  # taken before the batch, so batches are decoded in order
            while target is None or self._decoded < target:
                with self._backlog_lock:
                    batch, self._backlog = self._backlog, collections.deque()
                if not batch:
                    return True
                done_bytes = 0
                try:
                    while batch:
                        if deadline is not None and time.monotonic() >= deadline:
                            with self._backlog_lock:
                                self._backlog.extendleft(reversed(batch))
                            return False
                        ident, what, data, when = batch.popleft()
                        self._decode_one(ident, what, data, when)
                        self._decoded += 1
                        if isinstance(data, bytes):
                            done_bytes += len(data)
                            if done_bytes >= _ACCOUNT_BYTES:
                                with self._backlog_lock:
                                    self._backlog_bytes -= done_bytes
                                done_bytes = 0
                finally:
                    with self._backlog_lock:
                        self._backlog_bytes -= done_bytes
                if target is None:
                    return True
            return True

    def _decode_one(self, ident: int, what: str, data: Any, when: float) -> None:
        try:
            if what == "closed":
                self.capture.closed(ident)
            elif what == "note":
                self.capture.note(ident, "tap", data, when)
            elif what == "gap":
                direction, text = data
                self.capture.gap(ident, direction, text, when)
            else:
                self.capture.feed(ident, what, data, when)
        except Exception as exc:  # the decoder must outlive any bad input
            with contextlib.suppress(Exception):
                self.capture.note(ident, what, f"decoder error {type(exc).__name__}: {exc}", when)

    def _decode_loop(self) -> None:
        """Decode in the background when traffic pauses, or when the backlog grows large.

        Decoding is pure Python (HPACK, protobuf to dict): run during a burst of
        calls, it would hold the GIL the forwarding threads need and add
        milliseconds to the tail latency of the very calls being watched.
        """
        while not self._stopped.is_set():
            self._wake.wait()
            if self._stopped.is_set():
                return
            with self._backlog_lock:
                if not self._backlog:
                    self._wake.clear()
                    continue
                quiet = time.monotonic() - self._last_submit
                due = self._backlog_bytes >= BACKLOG_BYTES or quiet >= IDLE_SECONDS
            if not due:
                self._stopped.wait(IDLE_SECONDS - quiet)
                continue
            self._decode_backlog()

    def sync(self, timeout: float = 5.0) -> bool:
        """Decode everything forwarded so far (on this thread); False if that timed out.

        Only the bytes that passed before the call count, so a busy stream
        (an event stream, a benchmark) cannot keep this going; and ``timeout``
        bounds the decoding too, not only the wait for the decoder.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._backlog_lock:
            target = self._submitted
        if not self._decode_lock.acquire(timeout=max(0.0, timeout)):
            return False
        try:
            return self._decode_backlog(target, deadline)
        finally:
            self._decode_lock.release()

    # -- the capture -------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self.capture.capacity

    @property
    def frames(self) -> list[FrameRecord]:
        """The captured frames, oldest first (at most ``capacity``)."""
        self.sync()
        return self.capture.frames

    @property
    def calls(self) -> list[CallRecord]:
        """The captured calls, one per HTTP/2 stream, oldest first."""
        self.sync()
        return self.capture.calls

    @property
    def connections(self) -> int:
        """How many client connections are open through the tap now."""
        with self._conn_lock:
            return len(self._connections)

    def clear(self) -> None:
        """Forget the captured frames and calls (connections stay open)."""
        self.sync()
        self.capture.clear()

    def to_json(self, indent: int | None = None) -> str:
        """The capture as JSON: ``{"endpoint", "upstream", "frames": [...], "calls": [...]}``."""
        from .render import to_json

        return to_json(self, indent=indent)

    def transcript_html(self, limit: int = 300, max_chars: int = 4000) -> str:
        """A readable HTML transcript of the last ``limit`` frames (everything escaped)."""
        from .render import transcript_html

        return transcript_html(self, limit=limit, max_chars=max_chars)

    def _repr_html_(self) -> str:
        return self.transcript_html(limit=100, max_chars=2000)

    def sequence_diagram(self, **kwargs: Any) -> Any:
        """``crilab.wiretap.sequence_diagram(tap)``: a matplotlib Figure of the calls."""
        from .sequence import sequence_diagram

        return sequence_diagram(self, **kwargs)

    # -- lifecycle ---------------------------------------------------------------

    def stop(self) -> None:
        """Close the listener and every connection, remove the socket. Safe to call twice."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
        self._acceptor.join(timeout=2)
        if self._acceptor.is_alive():  # elsewhere: wake it with a connection
            with contextlib.suppress(OSError):
                _connect(self._endpoint).close()
            self._acceptor.join(timeout=2)
        with self._conn_lock:
            connections = list(self._connections.values())
        for conn in connections:
            conn.shutdown()
        deadline = time.monotonic() + 2
        while self.connections and time.monotonic() < deadline:
            time.sleep(0.005)  # the pumps close their sockets and report the close
        if self._endpoint.is_unix:  # only our own: another may have taken the path since
            remove_socket(self._endpoint.path, self._identity)
        self._remove_private_dir()
        self._wake.set()  # the decoder thread ends; what is left is decoded on the next read
        self._decoder.join(timeout=2)
        with _live_lock:
            _live.discard(self)

    def _remove_private_dir(self) -> None:
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)

    def __enter__(self) -> Tap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "tapping" if self.running else "stopped"
        return (
            f"<crilab.wiretap.Tap {state} {self.endpoint} → {self.upstream.uri}: "
            f"{len(self.frames)} frames>"
        )


def wiretap(upstream_endpoint: str, *, listen: str | None = None, capacity: int = 10_000) -> Tap:
    """Start a transparent proxy in front of ``upstream_endpoint`` and record what passes.

    ``upstream_endpoint``: the server, ``unix:///...`` or ``tcp://host:port``.
    ``listen``: ``None`` for a private unix socket (0600 in a 0700 directory),
    or ``unix:///path.sock`` / ``tcp://127.0.0.1:0``. ``capacity`` bounds the
    capture (frames; the oldest are dropped first)::

        rt = crilab.FakeRuntime()
        with wiretap(rt.endpoint) as tap:
            crilab.connect(tap.endpoint).version()
            tap                                  # the transcript, in a notebook
    """
    return Tap(upstream_endpoint, listen=listen, capacity=capacity)
