"""Recording and fault injection, written once as a gRPC server interceptor.

Every RPC the fake runtime serves passes through ``Instrument``: it may be
delayed or failed on purpose (``inject_latency``, ``inject_error``), and it is
recorded (method, request, response or status, timing, peer) in a bounded
ring buffer. The servicer knows nothing of this; nor does the state.
"""

from __future__ import annotations

import collections
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

#: Requests and responses larger than this are not kept in the history (their size is):
#: the history holds ``history`` calls, so it stays bounded however big the messages are.
KEEP_RESPONSE_BYTES = 64 * 1024
#: All kept requests and responses together stay under this: older ones become size notes.
#: (10,000 kept 100-container List answers would otherwise hold ~700 MiB.)
KEEP_TOTAL_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class Malformed:
    """A request whose bytes are not the message its method takes (what the history keeps)."""

    message_type: str
    size: int
    error: str

    def __str__(self) -> str:
        return f"<malformed {self.message_type}: {self.size} bytes>"


@dataclass(slots=True)
class Call:
    """One recorded RPC.

    ``request`` and ``response`` hand out copies: the messages the history keeps are the
    ones that were served (a List answer is shared by every call that got it), so a caller
    that edits what it reads must not change what the runtime answers next.
    """

    method: str  # short name, e.g. "StartContainer"
    service: str  # e.g. "runtime.v1.RuntimeService"
    _request: Any = field(repr=False)
    _response: Any = field(repr=False)  # the reply (unary), the messages sent (streams), or None
    code: str  # "OK", "NOT_FOUND", ...
    details: str
    started: float  # wall-clock time.time()
    duration: float  # seconds
    peer: str
    injected: str = ""  # "error", "latency 0.05s", or ""

    @property
    def request(self) -> Any:
        """The request as received (a copy), or a note of its size when it was not kept."""
        return _copy(self._request)

    @property
    def response(self) -> Any:
        """The reply (a copy), a note of its size, the number of messages a stream sent,
        or ``None`` when the call failed."""
        return _copy(self._response)

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    def as_dict(self) -> dict[str, Any]:
        """A flat row for tables and plots (no pandas needed)."""
        return {
            "method": self.method,
            "service": self.service,
            "code": self.code,
            "details": self.details,
            "started": self.started,
            "duration_ms": self.duration * 1000,
            "peer": self.peer,
            "injected": self.injected,
        }


class Lognormal:
    """Latency drawn from a lognormal distribution given its p50 and p99 (seconds)."""

    def __init__(self, p50: float, p99: float, seed: int | None = None) -> None:
        if not 0 < p50 <= p99:
            raise ValueError("need 0 < p50 <= p99, e.g. Lognormal(p50=0.002, p99=0.02)")
        self.p50, self.p99 = p50, p99
        self._mu = math.log(p50)
        self._sigma = (math.log(p99) - self._mu) / 2.3263478740408408  # z of 0.99
        self._rng = random.Random(seed)

    def __call__(self) -> float:
        return self._rng.lognormvariate(self._mu, self._sigma)

    def __repr__(self) -> str:
        return f"Lognormal(p50={self.p50}, p99={self.p99})"


@dataclass
class _Fault:
    method: str  # short name or "*"
    times: int | None  # remaining; None = unlimited
    probability: float | None
    code: grpc.StatusCode | None = None
    message: str = ""
    delay: float | Callable[[], float] | None = None
    rng: random.Random = field(default_factory=random.Random)

    def applies(self, method: str) -> bool:
        if self.method not in ("*", method):
            return False
        if self.times is not None and self.times <= 0:
            return False
        return self.probability is None or self.rng.random() < self.probability

    def seconds(self) -> float:
        return self.delay() if callable(self.delay) else float(self.delay or 0)


def _status_code(code: grpc.StatusCode | str) -> grpc.StatusCode:
    if isinstance(code, grpc.StatusCode):
        return code
    try:
        return grpc.StatusCode[str(code).upper()]
    except KeyError:
        names = ", ".join(c.name for c in grpc.StatusCode)
        raise ValueError(f"unknown gRPC status code {code!r}; use one of {names}") from None


class Instrument(grpc.ServerInterceptor):
    """The one interceptor: inject faults, then record what happened."""

    def __init__(self, history: int = 10_000, methods: Iterable[str] = ()) -> None:
        self._calls: collections.deque[Call] = collections.deque(maxlen=history)
        self._kept: collections.deque[tuple[Call, int, int]] = collections.deque()
        self._kept_bytes = 0
        # the last answer sized and its size: a List answer reused across calls (see
        # the servicer's ``_Answers``) is sized once, not once per call
        self._sized: tuple[Any, int] = (None, 0)
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._known = set(methods)
        self._handlers: dict[str, grpc.RpcMethodHandler | None] = {}

    # -- control (from Python, while serving) -----------------------------------

    def _check_method(self, method: str | None) -> str:
        if method in (None, "*"):
            return "*"
        if self._known and method not in self._known:
            close = [m for m in sorted(self._known) if m.lower() == method.lower()]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"no RPC named {method!r}{hint}; use a short name such as 'StartContainer'"
            )
        return method

    def inject_error(
        self,
        method: str,
        code: grpc.StatusCode | str,
        message: str = "",
        times: int | None = 1,
        probability: float | None = None,
    ) -> None:
        """Fail the next ``times`` calls of ``method`` (``None``: until cleared)."""
        if probability is not None and not 0 <= probability <= 1:
            raise ValueError("probability must be between 0 and 1")
        status = _status_code(code)
        if status == grpc.StatusCode.OK:
            raise ValueError("an injected error needs a non-OK code, e.g. 'UNAVAILABLE'")
        fault = _Fault(
            self._check_method(method),
            times if probability is None else None if times == 1 else times,
            probability,
            code=status,
            message=message or f"injected {status.name} (crilab fault injection)",
        )
        with self._lock:
            self._faults.append(fault)

    def inject_latency(
        self,
        seconds: float | Callable[[], float],
        method: str | None = None,
        times: int | None = None,
    ) -> None:
        """Delay calls of ``method`` (all methods when ``None``) by a fixed or drawn time."""
        if not callable(seconds) and seconds < 0:
            raise ValueError("latency must be >= 0 seconds")
        fault = _Fault(self._check_method(method), times, None, delay=seconds)
        with self._lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_faults(self, method: str) -> tuple[float, _Fault | None]:
        delay, error = 0.0, None
        with self._lock:
            if not self._faults:
                return 0.0, None
            for fault in self._faults:
                if (fault.code is None or error is None) and fault.applies(method):
                    if fault.times is not None:
                        fault.times -= 1
                    if fault.code is None:
                        delay += fault.seconds()
                    else:
                        error = fault
            self._faults = [f for f in self._faults if f.times is None or f.times > 0]
        return delay, error

    # -- history ---------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def clear_calls(self) -> None:
        with self._lock:
            self._calls.clear()
            self._kept.clear()
            self._kept_bytes = 0

    def _record(self, call: Call, request_size: int = 0, response_size: int = 0) -> None:
        with self._lock:
            self._calls.append(call)
            if request_size or response_size:
                self._kept.append((call, request_size, response_size))
                self._kept_bytes += request_size + response_size
                while self._kept_bytes > KEEP_TOTAL_BYTES:
                    old, old_request, old_response = self._kept.popleft()
                    self._kept_bytes -= old_request + old_response
                    old._request = _size_note(old._request, old_request)
                    old._response = _size_note(old._response, old_response)

    # -- interception ----------------------------------------------------------

    def intercept_service(self, continuation, handler_call_details):
        full = handler_call_details.method
        try:
            return self._handlers[full]
        except KeyError:
            pass
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # an unknown method (UNIMPLEMENTED): never cached, any path can come
        wrapped = self._wrap(full, handler)
        self._handlers[full] = wrapped
        return wrapped

    def _wrap(self, full: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        service, _, method = full.lstrip("/").rpartition("/")
        if service.startswith("grpc."):  # reflection and health are not the runtime's calls
            return handler
        kinds = (
            ("unary_unary", grpc.unary_unary_rpc_method_handler, False),
            ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
            ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
            ("stream_stream", grpc.stream_stream_rpc_method_handler, True),
        )
        for attr, make, streams in kinds:
            behavior = getattr(handler, attr)
            if behavior is not None:
                wrapped = (self._streaming if streams else self._unary)(service, method, behavior)
                deserializer = handler.request_deserializer
                if attr.startswith("unary_") and deserializer is not None:
                    deserializer = _tolerant(deserializer)
                return make(
                    wrapped,
                    request_deserializer=deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler

    def _unary(self, service: str, method: str, behavior: Callable[..., Any]):
        def call(request, context):
            started, t0 = time.time(), time.perf_counter()
            delay, error = self._take_faults(method)
            response, failed = None, True
            try:
                self._apply(delay, error, context, request)
                response = behavior(request, context)
                failed = False
                return response
            finally:
                self._finish(
                    service,
                    method,
                    request,
                    response,
                    context,
                    started,
                    t0,
                    _note(delay, error),
                    failed,
                )

        return call

    def _streaming(self, service: str, method: str, behavior: Callable[..., Any]):
        def call(request, context):
            started, t0 = time.time(), time.perf_counter()
            delay, error = self._take_faults(method)
            sent, failed = 0, True
            try:
                self._apply(delay, error, context, request)
                for message in behavior(request, context):
                    sent += 1
                    yield message
                failed = False
            finally:
                self._finish(
                    service,
                    method,
                    request,
                    sent,
                    context,
                    started,
                    t0,
                    _note(delay, error),
                    failed,
                )

        return call

    @staticmethod
    def _apply(delay: float, error: _Fault | None, context, request: Any = None) -> None:
        if isinstance(request, Malformed):
            # grpc itself would answer INTERNAL ("Exception deserializing request!"): but
            # bytes that do not decode are the caller's mistake, not a server bug.
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request is not a valid {request.message_type} message "
                f"({request.size} bytes; protobuf could not decode it: {request.error}). "
                f"Send a serialized {request.message_type.rpartition('.')[2]}, e.g. "
                "through the generated stub",
            )
        if delay:
            time.sleep(delay)  # outside every lock
        if error is not None:
            assert error.code is not None
            context.abort(error.code, error.message)

    def _finish(self, service, method, request, response, context, started, t0, injected, failed):
        duration = time.perf_counter() - t0
        code = context.code()
        if isinstance(code, grpc.StatusCode):
            name = code.name
        elif (
            not failed
            and not isinstance(response, int)
            and duration < _QUICK_SECONDS
            and context.time_remaining() > 0
        ):
            # A quick unary call that returned within its deadline: its client is still
            # there (skips the is_active round trip). A slow one may not be: ask below.
            name = "OK"
        elif not context.is_active():  # a stream the client abandoned, or its deadline passed
            remaining = context.time_remaining()
            name = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
        else:
            name = "UNKNOWN" if failed else "OK"
        details = context.details() or ""
        if isinstance(details, bytes):  # grpcio's server context keeps them encoded
            details = details.decode("utf-8", errors="replace")
        request, request_size = self._keepable(request, remember=False)
        response, response_size = self._keepable(response, remember=True)
        self._record(
            Call(
                method,
                service,
                request,
                response,
                name,
                details,
                started,
                duration,
                context.peer(),
                injected,
            ),
            request_size,
            response_size,
        )

    def _keepable(self, message: Any, *, remember: bool) -> tuple[Any, int]:
        """The message and its size, or a short note of its size when it is too big to keep."""
        if not hasattr(message, "ByteSize"):
            return message, 0
        last, size = self._sized
        if message is not last:
            size = message.ByteSize()  # for a big message this costs an encode
            if remember:
                self._sized = (message, size)
        if size > KEEP_RESPONSE_BYTES:
            return f"<{type(message).__name__}: {size} bytes, not kept>", 0
        return message, size


_QUICK_SECONDS = 0.005
"""A returned unary call quicker than this, with time left before its deadline, is
recorded OK without asking grpc whether the client is still waiting."""


def _copy(message: Any) -> Any:
    if hasattr(message, "CopyFrom"):
        copy = type(message)()
        copy.CopyFrom(message)
        return copy
    return message


def _size_note(message: Any, size: int) -> Any:
    """What the history keeps of an old message once the byte budget is spent."""
    if hasattr(message, "ByteSize"):
        return f"<{type(message).__name__}: {size} bytes, no longer kept>"
    return message


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """A request deserializer that returns ``Malformed`` instead of raising."""
    owner = getattr(deserialize, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    message_type = getattr(descriptor, "full_name", None) or "request"

    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:
            return Malformed(message_type, len(data), f"{type(exc).__name__}: {exc}")

    return decode


def _note(delay: float, error: _Fault | None) -> str:
    parts = [f"latency {delay:.3f}s"] if delay else []
    if error is not None:
        parts.append("error")
    return ", ".join(parts)


def format_calls(calls: Sequence[Call]) -> str:
    return "\n".join(f"{c.method} {c.code} {c.duration * 1000:.2f}ms" for c in calls)
