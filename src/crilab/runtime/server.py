"""``FakeRuntime``: the fake CRI runtime serving on a real gRPC channel.

    rt = crilab.FakeRuntime()                 # serves at once, private unix socket
    rt.endpoint                               # 'unix:///.../crilab.sock'
    rt.state                                  # the RuntimeState, for direct calls
    rt.calls, rt.inject_error(...), rt.reset(), rt.stop()

Next to the CRI services it serves crilab's control service (``control.py``), so that
another process can do the same: ``RemoteControl(rt.endpoint).inject_error(...)``.

The same state, servicers and interceptor run in-process (this class, on a
background thread) and as ``crilab serve`` (``serve.py``): one backend, two
ways to reach it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..endpoints import crictl_command
from ..serving import MAX_RECEIVE_BYTES, GrpcServer
from ..stubs import api_pb2, api_pb2_grpc, control_pb2_grpc
from .control import CONTROL_SERVICE, ControlServicer, RemoteControl
from .instrument import UNSET, Call, Instrument, Lognormal
from .servicer import ImageServicer, RuntimeServicer
from .state import RuntimeState

__all__ = ["Call", "FakeRuntime", "Lognormal", "RemoteControl"]

RUNTIME_SERVICE = "runtime.v1.RuntimeService"
IMAGE_SERVICE = "runtime.v1.ImageService"


def _method_names() -> list[str]:
    names = []
    for service in api_pb2.DESCRIPTOR.services_by_name.values():
        names.extend(m.name for m in service.methods)
    return names


class FakeRuntime:
    """A fake CRI runtime (RuntimeService + ImageService) on a background thread.

    ``listen``: ``None`` for a private unix socket, ``"unix:///path.sock"``, or
    ``"tcp://127.0.0.1:0"`` (port 0 picks a free port). ``images``: references
    present from the start, e.g. ``["busybox"]``. ``seed`` makes IDs
    deterministic. ``history`` bounds the recorded calls (a whole number > 0).
    """

    def __init__(
        self,
        listen: str | None = None,
        *,
        images: Iterable[str] = (),
        seed: str | int | None = None,
        history: int = 10_000,
        max_workers: int = 32,
    ) -> None:
        # first: it checks ``history`` before anything is started that would need stopping
        self.instrument = Instrument(history=history, methods=_method_names())
        self.state = RuntimeState(images=images, seed=seed)
        self.health = health.HealthServicer()
        try:
            self._server = GrpcServer(
                self._register,
                listen,
                max_workers=max_workers,
                interceptors=[self.instrument],
                options=[("grpc.max_receive_message_length", MAX_RECEIVE_BYTES)],
            )
        except BaseException:
            self.state.close()
            raise
        self._server.on_stop(self._closing)

    def _register(self, server: grpc.Server) -> None:
        api_pb2_grpc.add_RuntimeServiceServicer_to_server(RuntimeServicer(self.state), server)
        api_pb2_grpc.add_ImageServiceServicer_to_server(ImageServicer(self.state), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        for name in ("", RUNTIME_SERVICE, IMAGE_SERVICE):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        control_pb2_grpc.add_ControlServicer_to_server(
            ControlServicer(self.instrument, self.reset), server
        )
        reflection.enable_server_reflection(
            (
                RUNTIME_SERVICE,
                IMAGE_SERVICE,
                CONTROL_SERVICE,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ),
            server,
        )

    def _closing(self) -> None:
        self.instrument.stop()  # also when the interpreter exits without rt.stop()
        self.health.enter_graceful_shutdown()
        self.state.close()

    # -- lifecycle -------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """Where to connect: ``unix:///...`` (crictl too) or ``tcp://127.0.0.1:PORT``."""
        return self._server.endpoint.uri

    @property
    def running(self) -> bool:
        return self._server.running

    def crictl_command(self) -> str:
        """A crictl command line pointed at this runtime (unix sockets only)."""
        return crictl_command(self._server.endpoint, "start with FakeRuntime() for crictl")

    def stop(self, grace: float | None = 0.5) -> None:
        """Stop serving, remove the socket, end the timers. A new FakeRuntime can follow.

        Calls waiting out an injected latency end at once (UNAVAILABLE), so none holds a
        worker thread past the stop."""
        if self._server.running:
            self.instrument.stop()
        self._server.stop(grace)

    def wait(self, timeout: float | None = None) -> bool:
        return self._server.wait(timeout)

    def reset(self) -> None:
        """Back to a fresh runtime: no pods, containers, calls or faults; preloads again."""
        self.state.reset()
        self.instrument.clear_calls()
        self.instrument.clear_faults()

    def __enter__(self) -> FakeRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "serving" if self.running else "stopped"
        return (
            f"<FakeRuntime {state} on {self.endpoint}: {len(self.state.pods)} pods, "
            f"{len(self.state.containers)} containers, {len(self.state.images)} images>"
        )

    # -- the instrument (fake-only) ---------------------------------------------

    @property
    def calls(self) -> list[Call]:
        """A copy of the recorded calls, oldest first (bounded by ``history``)."""
        return self.instrument.calls

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def calls_table(self) -> list[dict[str, object]]:
        return [c.as_dict() for c in self.calls]

    def clear_calls(self) -> None:
        self.instrument.clear_calls()

    def assert_calls(self, expected: Sequence[str], *, exact: bool = False) -> None:
        """Check the recorded methods contain ``expected`` in this order (all of them if exact)."""
        seen = [c.method for c in self.calls]
        if exact:
            ok = seen == list(expected)
        else:
            it = iter(seen)
            ok = all(any(m == s for s in it) for m in expected)
        if not ok:
            raise AssertionError(
                f"expected calls {'exactly ' if exact else ''}{list(expected)} in this order, "
                f"but the runtime saw {seen}"
            )

    def inject_error(
        self,
        method: str,
        code: grpc.StatusCode | str,
        message: str = "",
        times: int | None = UNSET,
        probability: float | None = None,
        seed: int | str | None = None,
    ) -> None:
        """Make calls of ``method`` ("*" for all) fail with ``code``.

        Neither ``times`` nor ``probability``: the next call fails. ``times=N``: the next
        N calls; ``times=None``: every call until ``clear_faults()``. ``probability=p``:
        each call fails with chance p until cleared, or until ``times`` calls failed when
        both are given. ``seed`` makes the chance repeatable.
        """
        self.instrument.inject_error(method, code, message, times, probability, seed)

    def inject_latency(
        self,
        seconds: float | Callable[[], float],
        method: str | None = None,
        times: int | None = None,
        *,
        ignore_deadline: bool = False,
    ) -> None:
        """Delay calls by ``seconds`` or a draw such as ``Lognormal(p50=0.002, p99=0.02)``.

        A delayed call ends when its deadline passes or its client cancels; with
        ``ignore_deadline=True`` the runtime works on for a caller that has gone."""
        self.instrument.inject_latency(seconds, method, times, ignore_deadline=ignore_deadline)

    def clear_faults(self) -> None:
        """Remove every fault; calls still waiting out an injected latency go on at once."""
        self.instrument.clear_faults()
