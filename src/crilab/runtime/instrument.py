"""Recording and fault injection, written once as a gRPC server interceptor.

Every RPC the fake runtime serves passes through ``Instrument``: it may be
delayed or failed on purpose (``inject_latency``, ``inject_error``), and it is
recorded (method, request, response or status, timing, peer) in a bounded
ring buffer. The servicer knows nothing of this; nor does the state.

An injected delay is a wait, not a sleep: it ends early when the call's deadline
passes, when the client cancels, when ``clear_faults()`` runs (the call then goes on
as if never delayed) and when the runtime stops, so a delay never holds a worker
thread longer than the client waits for it.
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

from ..serving import MAX_MESSAGE_BYTES

#: Requests and responses larger than this are not kept in the history (their size is):
#: the history holds ``history`` calls, so it stays bounded however big the messages are.
KEEP_RESPONSE_BYTES = 64 * 1024
#: All kept requests and responses together stay under this: older ones become size notes.
#: (10,000 kept 100-container List answers would otherwise hold ~700 MiB.)
KEEP_TOTAL_BYTES = 32 * 1024 * 1024


class Refused:
    """A request refused before it was decoded (what the history keeps instead of it)."""

    __slots__ = ()


@dataclass(frozen=True)
class Malformed(Refused):
    """A request whose bytes are not the message its method takes (what the history keeps)."""

    message_type: str
    size: int
    error: str

    def __str__(self) -> str:
        return f"<malformed {self.message_type}: {self.size} bytes>"


@dataclass(frozen=True)
class Oversize(Refused):
    """A request larger than the CRI message limit, refused undecoded."""

    message_type: str
    size: int

    def __str__(self) -> str:
        return f"<{self.message_type}: {self.size} bytes, over the limit, not decoded>"


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
        if not 0 < p50 <= p99 < math.inf:
            raise ValueError("need 0 < p50 <= p99 (finite), e.g. Lognormal(p50=0.002, p99=0.02)")
        self.p50, self.p99, self.seed = p50, p99, seed
        self._mu = math.log(p50)
        self._sigma = (math.log(p99) - self._mu) / 2.3263478740408408  # z of 0.99
        self._rng = random.Random(seed)

    def __call__(self) -> float:
        return self._rng.lognormvariate(self._mu, self._sigma)

    def __repr__(self) -> str:
        return f"Lognormal(p50={self.p50}, p99={self.p99})"


class _Unset:
    """The type of ``UNSET``: "not given", which differs from every value one can pass."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSET"


#: ``times`` not given (``inject_error``): once, or until cleared when a probability is given.
UNSET: Any = _Unset()


@dataclass
class _Fault:
    method: str  # short name or "*"
    times: int | None  # remaining; None = unlimited
    probability: float | None
    code: grpc.StatusCode | None = None
    message: str = ""
    delay: float | Callable[[], float] | None = None
    rng: random.Random = field(default_factory=random.Random)
    ignore_deadline: bool = False  # a latency that runs on after the caller has gone

    def applies(self, method: str) -> bool:
        if self.method not in ("*", method):
            return False
        if self.times is not None and self.times <= 0:
            return False
        return self.probability is None or self.rng.random() < self.probability


class _Plan:
    """The faults one call drew: its delays (fixed or drawn), its error, and its wait.

    Made only for a call that some fault applies to: the no-fault path allocates nothing.
    """

    __slots__ = ("delay", "error", "ignore_deadline", "note", "reason", "sources", "wake")

    def __init__(self, sources: list[Any], error: _Fault | None) -> None:
        self.sources = sources  # fixed seconds or draws, one per latency fault
        self.error = error
        self.ignore_deadline = False
        self.delay = 0.0
        self.note = ""  # what the history's ``injected`` says
        self.wake: threading.Event | None = None  # set to end the wait early
        self.reason: str | None = None  # why the wait ended early: see Instrument._sleep


class _DrawError(Exception):
    """A latency draw that raised or gave no usable number of seconds."""


def check_times(times: Any) -> int | None:
    if times is None:
        return None
    if isinstance(times, bool) or not isinstance(times, int):
        raise TypeError(
            f"times must be a whole number of calls or None (until clear_faults()), not {times!r}"
        )
    if times <= 0:
        raise ValueError(
            f"times={times} would inject nothing: times counts the calls the fault applies "
            "to (times=1 for the next call, times=None until clear_faults()); to remove "
            "faults call clear_faults()"
        )
    return times


def check_seconds(seconds: Any) -> float | Callable[[], float]:
    if callable(seconds):
        return seconds
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(
            f"latency is a number of seconds (e.g. 0.05) or a function that returns one "
            f"(e.g. Lognormal(p50=0.002, p99=0.02)), not {type(seconds).__name__} {seconds!r}"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(
            f"latency must be a finite number of seconds >= 0, not {seconds!r}; to make "
            "calls wait until their deadline, inject a latency longer than the deadline"
        )
    return float(seconds)


def _draw(source: float | Callable[[], float]) -> float:
    """Seconds of one latency source: a fixed value, or a draw clamped to >= 0."""
    if not callable(source):
        return source
    try:
        value = source()
    except Exception as exc:
        raise _DrawError(
            f"the injected latency draw {source!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _DrawError(
            f"the injected latency draw {source!r} returned {value!r}, not a number of seconds"
        )
    if not math.isfinite(value):
        raise _DrawError(
            f"the injected latency draw {source!r} returned {value!r}, not a finite number "
            "of seconds"
        )
    return max(float(value), 0.0)  # a negative draw (e.g. a normal's tail) is no delay


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
        self._calls: collections.deque[Call] = collections.deque(maxlen=check_history(history))
        self._kept: collections.deque[tuple[Call, int, int]] = collections.deque()
        self._kept_bytes = 0
        # answers sized lately, by id (each held, so an id is never reused while here): a
        # List answer reused across calls (the servicer's ``_Answers``; the kubelet
        # alternates ListPodSandbox and ListContainers) is sized once, not once per call
        self._sized: dict[int, tuple[Any, int]] = {}
        self._faults: list[_Fault] = []
        self._sleeping: set[_Plan] = set()  # calls waiting out an injected delay
        self._stopped = False
        self._lock = threading.Lock()
        self._known = set(methods)
        self._handlers: dict[str, grpc.RpcMethodHandler | None] = {}

    # -- control (from Python, while serving) -----------------------------------

    def _check_method(self, method: str | None) -> str:
        if method in (None, "*"):
            return "*"
        if not isinstance(method, str):
            raise TypeError(f"method is a short RPC name such as 'StartContainer', not {method!r}")
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
        times: int | None = UNSET,
        probability: float | None = None,
        seed: int | str | None = None,
    ) -> None:
        """Fail calls of ``method`` ("*" for every method) with ``code`` and ``message``.

        ``times`` counts the calls that fail; ``probability`` fails each call by chance:

        - neither given: the next call fails (as ``times=1``);
        - ``times=N``: the next N calls fail; ``times=None``: every call, until cleared;
        - ``probability=p``: each call fails with chance p, until ``clear_faults()``;
        - ``probability=p, times=N``: each call fails with chance p until N calls failed.

        ``seed`` makes the chance repeatable (the same calls fail on every run).
        """
        if probability is not None and (
            isinstance(probability, bool)
            or not isinstance(probability, int | float)
            or not 0 <= probability <= 1
        ):
            raise ValueError(
                f"probability must be a number between 0 and 1 (e.g. 0.1 fails one call in "
                f"ten), not {probability!r}"
            )
        if times is UNSET:
            times = 1 if probability is None else None
        times = check_times(times)
        status = _status_code(code)
        if status == grpc.StatusCode.OK:
            raise ValueError("an injected error needs a non-OK code, e.g. 'UNAVAILABLE'")
        fault = _Fault(
            self._check_method(method),
            times,
            probability,
            code=status,
            message=message or f"injected {status.name} (crilab fault injection)",
            rng=random.Random(seed),
        )
        with self._lock:
            self._faults.append(fault)

    def inject_latency(
        self,
        seconds: float | Callable[[], float],
        method: str | None = None,
        times: int | None = None,
        *,
        ignore_deadline: bool = False,
    ) -> None:
        """Delay calls of ``method`` (all methods when ``None``) by a fixed or drawn time.

        ``seconds`` is a number >= 0 or a function drawing one per call, such as
        ``Lognormal(p50=0.002, p99=0.02)`` (a negative draw is no delay). ``times``:
        the next N calls, or ``None`` for every call until ``clear_faults()``.

        A delayed call ends early when its deadline passes or its client cancels, as a
        server that watches its context does (containerd passes it down). With
        ``ignore_deadline=True`` the delay runs in full and the call then goes on, for a
        caller that has long gone: a server that never checks (it still ends on
        ``clear_faults()`` and ``stop()``).
        """
        fault = _Fault(
            self._check_method(method),
            check_times(times),
            None,
            delay=check_seconds(seconds),
            ignore_deadline=bool(ignore_deadline),
        )
        with self._lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        """Remove every fault; calls waiting out an injected delay go on at once, unfailed."""
        with self._lock:
            self._faults = []
            for plan in self._sleeping:
                _wake(plan, "cleared")

    @property
    def waiting(self) -> int:
        """How many calls are waiting out an injected latency right now."""
        with self._lock:
            return len(self._sleeping)

    def stop(self) -> None:
        """End every injected wait (the runtime is stopping); later delays do not wait."""
        with self._lock:
            self._stopped = True
            for plan in self._sleeping:
                _wake(plan, "stopped")

    def _take_faults(self, method: str) -> _Plan | None:
        sources: list[Any] = []
        error = None
        ignore_deadline = False
        with self._lock:
            for fault in self._faults:
                if (fault.code is None or error is None) and fault.applies(method):
                    if fault.times is not None:
                        fault.times -= 1
                    if fault.code is None:
                        sources.append(fault.delay)
                        ignore_deadline = ignore_deadline or fault.ignore_deadline
                    else:
                        error = fault
            if not sources and error is None:
                return None
            self._faults = [f for f in self._faults if f.times is None or f.times > 0]
            plan = _Plan(sources, error)
            plan.ignore_deadline = ignore_deadline
            if sources:  # the wait is registered now, so a clear_faults() from here on ends it
                plan.wake = threading.Event()
                if self._stopped:
                    _wake(plan, "stopped")
                else:
                    self._sleeping.add(plan)
        return plan

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
                # calls the ring buffer has already dropped: their messages go with them
                while len(self._kept) > (self._calls.maxlen or 0):
                    _, old_request, old_response = self._kept.popleft()
                    self._kept_bytes -= old_request + old_response
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
        if service.startswith(_NOT_RECORDED):  # reflection, health and crilab's control
            return handler  # are not the runtime's calls: no record, no injected fault
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
            # read without the lock: a fault injected during this line applies from the next call
            plan = self._take_faults(method) if self._faults else None
            response, failed = None, True
            try:
                if plan is not None or isinstance(request, Refused):
                    self._apply(plan, context, request)
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
                    "" if plan is None else plan.note,
                    failed,
                )

        return call

    def _streaming(self, service: str, method: str, behavior: Callable[..., Any]):
        def call(request, context):
            started, t0 = time.time(), time.perf_counter()
            plan = self._take_faults(method) if self._faults else None
            sent, failed = 0, True
            try:
                if plan is not None or isinstance(request, Refused):
                    self._apply(plan, context, request)
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
                    "" if plan is None else plan.note,
                    failed,
                )

        return call

    def _apply(self, plan: _Plan | None, context, request: Any) -> None:
        """Refuse an undecoded request, then wait out the delays, then fail on purpose."""
        if isinstance(request, Refused):
            if plan is not None:
                self._unregister(plan)
            _refuse(request, context)
        if plan is None:
            return
        if plan.sources:
            try:
                plan.delay = sum(_draw(source) for source in plan.sources)
            except _DrawError as exc:
                self._unregister(plan)
                plan.note = "latency draw failed"
                context.abort(
                    grpc.StatusCode.INTERNAL,
                    f"{exc}. crilab fault injection: inject_latency takes seconds >= 0 or a "
                    "function returning them; clear_faults() removes this one",
                )
            plan.note = f"latency {plan.delay:.3f}s"
            if plan.delay > 0:
                self._sleep(plan, context)
            else:
                self._unregister(plan)
        if plan.error is not None:
            if plan.reason == "cleared":
                return  # the error was cleared while the call waited: it goes on unfailed
            plan.note = f"{plan.note}, error" if plan.note else "error"
            assert plan.error.code is not None
            context.abort(plan.error.code, plan.error.message)

    def _unregister(self, plan: _Plan) -> None:
        with self._lock:
            self._sleeping.discard(plan)

    def _sleep(self, plan: _Plan, context) -> None:
        """Wait out ``plan.delay``, but no longer than the client waits for the answer
        (unless the latency ignores the deadline)."""
        assert plan.wake is not None
        delay = plan.delay
        remaining = context.time_remaining()  # the time to the deadline, or a huge number
        t0 = time.perf_counter()
        if plan.ignore_deadline:
            cap = delay
            plan.wake.wait(delay)  # only clear_faults() and stop() end it early
        else:
            cap = delay if remaining is None or remaining >= delay else remaining
            # grpc runs the callback when the call ends: a cancel, a passed deadline, a stop
            if context.add_callback(lambda: self._ended(plan)):
                plan.wake.wait(cap)
            else:
                self._ended(plan)  # the call ended before the wait began
        waited = time.perf_counter() - t0
        self._unregister(plan)
        reason = plan.reason
        if reason is None and cap >= delay:
            return  # waited the whole delay: the call goes on
        if reason == "cleared":
            plan.note = f"{plan.note} (cleared after {waited:.3f}s)"
            return
        if reason == "stopped":
            plan.note = f"{plan.note} (runtime stopped after {waited:.3f}s)"
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"the fake runtime stopped while this call waited out an injected latency "
                f"of {delay:.3f}s (after {waited:.3f}s)",
            )
        left = context.time_remaining()
        if reason is None or (left is not None and left <= 0):
            plan.note = f"{plan.note} (deadline passed after {waited:.3f}s)"
            context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the call's deadline passed while it waited out an injected latency of "
                f"{delay:.3f}s (after {waited:.3f}s)",
            )
        plan.note = f"{plan.note} (cancelled after {waited:.3f}s)"
        context.abort(
            grpc.StatusCode.CANCELLED,
            f"the client cancelled the call while it waited out an injected latency of "
            f"{delay:.3f}s (after {waited:.3f}s)",
        )

    def _ended(self, plan: _Plan) -> None:
        with self._lock:
            _wake(plan, "ended")

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
        known = self._sized.get(id(message))
        if known is not None and known[0] is message:
            size = known[1]
        else:
            size = message.ByteSize()  # for a big message this costs an encode
            if remember and size > 1024:  # a small one is sized again quicker than looked up
                if len(self._sized) >= _SIZED_LIMIT:
                    self._sized = {}
                self._sized[id(message)] = (message, size)
        if size > KEEP_RESPONSE_BYTES:
            return f"<{type(message).__name__}: {size} bytes, not kept>", 0
        return message, size


_SIZED_LIMIT = 32
"""Answers whose size the instrument remembers (twice the servicer's reused List answers)."""

_NOT_RECORDED = ("grpc.", "crilab.")
"""Services (by name prefix) that are served untouched: not recorded, never faulted."""

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


def _wake(plan: _Plan, reason: str) -> None:
    """End ``plan``'s wait for ``reason`` (the first reason wins). Call with the lock held."""
    if plan.reason is None:
        plan.reason = reason
    assert plan.wake is not None
    plan.wake.set()


def _refuse(request: Refused, context) -> None:
    if isinstance(request, Oversize):
        # grpc itself would answer "Received message larger than max (N vs. M)" and never
        # run the handler: the call would not be recorded, nor would the sender learn why.
        context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the {request.message_type} request is {request.size} bytes, over the "
            f"{MAX_MESSAGE_BYTES} byte (16 MiB) gRPC message limit that the kubelet and this "
            "runtime use: a real runtime refuses it too. Send less in one message: keep "
            "large data (files, scripts, long annotations or labels, big environment "
            "values) out of the CRI config and mount it into the container instead",
        )
    assert isinstance(request, Malformed)
    # grpc itself would answer INTERNAL ("Exception deserializing request!"): but
    # bytes that do not decode are the caller's mistake, not a server bug.
    context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"the request is not a valid {request.message_type} message "
        f"({request.size} bytes; protobuf could not decode it: {request.error}). "
        f"Send a serialized {request.message_type.rpartition('.')[2]}, e.g. "
        "through the generated stub",
    )


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """A request deserializer that returns a ``Refused`` note instead of raising: ``Oversize``
    past the 16 MiB limit (undecoded), ``Malformed`` for bytes that do not decode."""
    owner = getattr(deserialize, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    message_type = getattr(descriptor, "full_name", None) or "request"

    def decode(data: bytes) -> Any:
        if len(data) > MAX_MESSAGE_BYTES:
            return Oversize(message_type, len(data))
        try:
            return deserialize(data)
        except Exception as exc:
            return Malformed(message_type, len(data), f"{type(exc).__name__}: {exc}")

    return decode


def check_history(history: Any) -> int:
    """``history`` as a bound on the recorded calls, or a ValueError that says what to pass."""
    if isinstance(history, bool) or not isinstance(history, int) or history <= 0:
        raise ValueError(
            f"history is how many calls to keep, a whole number > 0 (e.g. history=10_000), "
            f"not {history!r}: the history is a ring buffer, bounded so that a long-running "
            "runtime does not grow without limit"
        )
    return history


def format_calls(calls: Sequence[Call]) -> str:
    return "\n".join(f"{c.method} {c.code} {c.duration * 1000:.2f}ms" for c in calls)
