"""crilab's control service (``proto/control.proto``): steer a running fake runtime.

``rt.inject_error(...)`` needs the ``FakeRuntime`` object; ``crilab serve`` runs in
another process. So every fake runtime also serves ``crilab.control.v1.Control`` on its
own socket, and ``RemoteControl`` calls it::

    ctl = RemoteControl("unix:///tmp/crilab/crilab.sock")   # what `crilab serve` printed
    ctl.inject_error("StartContainer", "UNAVAILABLE", times=2)
    ctl.inject_latency(0.05, method="ListContainers")
    [c.method for c in ctl.calls()]
    ctl.clear_faults(); ctl.reset()

The same checks as in-process apply (a wrong method name, ``times=0``...): the server
answers INVALID_ARGUMENT with the instrument's message, and ``RemoteControl`` raises it as
the ``ValueError`` a local call would raise. The control calls are not the runtime's:
they are never recorded and never faulted (see ``instrument._NOT_RECORDED``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import grpc

from ..client import CHANNEL_OPTIONS, ENDPOINT_ENV, RuntimeUnavailable
from ..endpoints import parse
from ..stubs import control_pb2, control_pb2_grpc
from .instrument import UNSET, Instrument, Lognormal, check_seconds, check_times

__all__ = ["CONTROL_SERVICE", "ControlServicer", "RemoteCall", "RemoteControl"]

CONTROL_SERVICE = "crilab.control.v1.Control"
#: A listed call's status message is cut to this many characters.
MAX_DETAILS = 1024
#: ListCalls answers stay under this (far below the 16 MiB message limit): the oldest
#: calls past it are counted in ``left_out`` instead.
MAX_ANSWER_BYTES = 4 * 1024 * 1024


# -- the server side -----------------------------------------------------------------------


@contextlib.contextmanager
def _invalid_argument(context: grpc.ServicerContext) -> Iterator[None]:
    """The instrument's ValueError or TypeError (which teach) as INVALID_ARGUMENT."""
    try:
        yield
    except (ValueError, TypeError) as exc:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))


class ControlServicer(control_pb2_grpc.ControlServicer):
    """Turns control calls into the instrument's own methods (and the runtime's reset)."""

    def __init__(self, instrument: Instrument, reset: Callable[[], None]) -> None:
        self._instrument = instrument
        self._reset = reset

    def InjectError(self, request, context):
        if request.until_cleared and request.HasField("times"):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"give times ({request.times}) or until_cleared, not both",
            )
        if not request.code:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "code is missing: give a gRPC status code name such as 'UNAVAILABLE'",
            )
        times: Any = UNSET
        if request.until_cleared:
            times = None
        elif request.HasField("times"):
            times = request.times
        with _invalid_argument(context):
            self._instrument.inject_error(
                request.method or "*",
                request.code,
                request.message,
                times,
                request.probability if request.HasField("probability") else None,
                request.seed if request.HasField("seed") else None,
            )
        return control_pb2.InjectErrorResponse()

    def InjectLatency(self, request, context):
        which = request.WhichOneof("delay")
        if which is None:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the delay is missing: give seconds (e.g. 0.05) or a lognormal (p50 and p99)",
            )
        with _invalid_argument(context):
            if which == "seconds":
                seconds: Any = request.seconds
            else:
                draw = request.lognormal
                seconds = Lognormal(
                    draw.p50_seconds,
                    draw.p99_seconds,
                    seed=draw.seed if draw.HasField("seed") else None,
                )
            self._instrument.inject_latency(
                seconds,
                request.method or None,
                request.times if request.HasField("times") else None,
                ignore_deadline=request.ignore_deadline,
            )
        return control_pb2.InjectLatencyResponse()

    def ClearFaults(self, request, context):
        self._instrument.clear_faults()
        return control_pb2.ClearFaultsResponse()

    def Reset(self, request, context):
        self._reset()
        return control_pb2.ResetResponse()

    def ListCalls(self, request, context):
        calls = self._instrument.calls
        if request.method:
            with _invalid_argument(context):
                self._instrument._check_method(request.method)
            calls = [c for c in calls if c.method == request.method]
        left_out = 0
        if request.limit and len(calls) > request.limit:
            left_out = len(calls) - request.limit
            calls = calls[-request.limit :]
        listed: list[Any] = []
        size = 0
        for index in range(len(calls) - 1, -1, -1):  # newest first, while they fit
            call = calls[index]
            record = control_pb2.Call(
                method=call.method,
                service=call.service,
                code=call.code,
                details=call.details[:MAX_DETAILS],
                started=call.started,
                duration=call.duration,
                peer=call.peer,
                injected=call.injected,
            )
            size += record.ByteSize() + 4  # with its field tag and length
            if size > MAX_ANSWER_BYTES:
                left_out += index + 1
                break
            listed.append(record)
        listed.reverse()
        return control_pb2.ListCallsResponse(
            calls=listed, left_out=left_out, waiting=self._instrument.waiting
        )


# -- the client side -----------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteCall:
    """One recorded call as the control service lists it (no request or response bodies)."""

    method: str
    service: str
    code: str
    details: str
    started: float
    duration: float
    peer: str
    injected: str

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RemoteControl:
    """Steer the fake runtime at ``endpoint`` (``crilab serve``, or a ``FakeRuntime``).

    ``endpoint``: ``unix:///path.sock`` or ``tcp://host:port``; ``None`` reads
    ``$CONTAINER_RUNTIME_ENDPOINT`` as crictl does. The methods mirror ``FakeRuntime``'s.
    """

    def __init__(self, endpoint: str | None = None, *, timeout: float = 10.0) -> None:
        given = endpoint or os.environ.get(ENDPOINT_ENV, "")
        if not given:
            raise RuntimeUnavailable(
                "no endpoint: give the one `crilab serve` printed, e.g. "
                f"RemoteControl('unix:///tmp/crilab.sock'), or set {ENDPOINT_ENV}"
            )
        self.endpoint = parse(given)
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            self.endpoint.grpc_target, options=list(CHANNEL_OPTIONS)
        )
        self._stub = control_pb2_grpc.ControlStub(self._channel)

    def _call(self, name: str, request: Any) -> Any:
        try:
            return getattr(self._stub, name)(request, timeout=self.timeout)
        except grpc.RpcError as err:
            code, details = err.code(), err.details() or ""
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise ValueError(details) from None
            if code == grpc.StatusCode.UNIMPLEMENTED:
                raise RuntimeUnavailable(
                    f"{self.endpoint.uri} serves no crilab control service: it is not a crilab "
                    "fake runtime (a real containerd or CRI-O has none), or an older crilab",
                    self.endpoint.uri,
                ) from None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise RuntimeUnavailable(
                    f"no crilab runtime answers at {self.endpoint.uri} ({code.name}: "
                    f"{details}). Start one with `crilab serve` and use the endpoint it prints",
                    self.endpoint.uri,
                ) from None
            raise

    def inject_error(
        self,
        method: str,
        code: grpc.StatusCode | str,
        message: str = "",
        times: int | None = UNSET,
        probability: float | None = None,
        seed: int | None = None,
    ) -> None:
        """As ``FakeRuntime.inject_error``: ``times`` unset is once (or, with a
        probability, until cleared); ``None`` is until cleared."""
        request = control_pb2.InjectErrorRequest(
            method=method,
            code=code.name if isinstance(code, grpc.StatusCode) else str(code),
            message=message,
        )
        if times is None:
            request.until_cleared = True
        elif times is not UNSET:
            request.times = check_times(times)
        if probability is not None:
            if isinstance(probability, bool) or not isinstance(probability, int | float):
                raise ValueError(
                    f"probability must be a number between 0 and 1, not {probability!r}"
                )
            request.probability = probability
        if seed is not None:
            request.seed = _whole(seed, "seed")
        self._call("InjectError", request)

    def inject_latency(
        self,
        seconds: float | Lognormal,
        method: str | None = None,
        times: int | None = None,
        *,
        ignore_deadline: bool = False,
    ) -> None:
        """As ``FakeRuntime.inject_latency``; a draw must be a ``Lognormal`` (a Python
        function cannot be sent to another process)."""
        request = control_pb2.InjectLatencyRequest(
            method=method or "", ignore_deadline=bool(ignore_deadline)
        )
        if isinstance(seconds, Lognormal):
            request.lognormal.p50_seconds = seconds.p50
            request.lognormal.p99_seconds = seconds.p99
            if seconds.seed is not None:
                request.lognormal.seed = _whole(seconds.seed, "Lognormal's seed")
        elif callable(seconds):
            raise TypeError(
                f"{seconds!r} cannot be sent to another process: a remote runtime takes a "
                "number of seconds or a crilab.Lognormal(p50=..., p99=..., seed=...)"
            )
        else:
            request.seconds = check_seconds(seconds)
        if times is not None:
            request.times = check_times(times)
        self._call("InjectLatency", request)

    def clear_faults(self) -> None:
        self._call("ClearFaults", control_pb2.ClearFaultsRequest())

    def reset(self) -> None:
        """Back to a fresh runtime: no pods, containers, calls or faults."""
        self._call("Reset", control_pb2.ResetRequest())

    def calls(self, method: str | None = None, limit: int = 0) -> list[RemoteCall]:
        """The recorded CRI calls, oldest first: of ``method`` only, the newest ``limit``."""
        answer = self._call(
            "ListCalls", control_pb2.ListCallsRequest(method=method or "", limit=limit)
        )
        return [
            RemoteCall(
                c.method, c.service, c.code, c.details, c.started, c.duration, c.peer, c.injected
            )
            for c in answer.calls
        ]

    def calls_to(self, method: str) -> list[RemoteCall]:
        return self.calls(method)

    def waiting(self) -> int:
        """How many calls are waiting out an injected latency right now."""
        return self._call("ListCalls", control_pb2.ListCallsRequest(limit=1)).waiting

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RemoteControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RemoteControl of {self.endpoint.uri}>"


def _whole(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be a whole number to be sent, not {value!r}")
    return value
